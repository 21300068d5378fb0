"""Which timesteps a sampler visits.

Every function returns a strictly decreasing torch.long tensor of `num_steps` indices in
[0, T−1]. A sampler steps from timesteps[i] to timesteps[i + 1] and from the last entry to clean
data (ᾱ = 1), so the previous timestep always comes from this array, never from t − T // steps
(the source of the off-by-one bugs in diffusers #2585, #9261, #11347).
"""

from __future__ import annotations

import numpy as np
import torch

SPACINGS = ("leading", "trailing", "linspace")


def _check_num_steps(num_timesteps: int, num_steps) -> int:
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an int in [1, num_timesteps={num_timesteps}], got {num_steps!r}")
    return num_steps


def make_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> torch.Tensor:
    """Timesteps for a sampler with `num_steps` model calls (Lin et al. 2023, Table 2, name the spacings).

    - "leading":  (S−1)·k, ..., k, 0 with k = T // S (DDIM's original choice; for T = 1000, S = 50:
      980, 960, ..., 0, so it never starts from the noisiest step 999).
    - "trailing": round(T − i·T/S) − 1 for i = 0..S−1 (999, 979, ..., 19 for T = 1000, S = 50).
    - "linspace": round(linspace(T − 1, 0, S)) (999, ..., 0).
    Integer arithmetic throughout, so no float rounding changes the length.
    """
    S = _check_num_steps(num_timesteps, num_steps)
    T = num_timesteps
    i = np.arange(S, dtype=np.int64)
    if spacing == "leading":
        t = (S - 1 - i) * (T // S)
    elif spacing == "trailing":
        t = (2 * T * (S - i) + S) // (2 * S) - 1  # round-half-up of T(S−i)/S, minus 1
    elif spacing == "linspace":
        t = (2 * (T - 1) * (S - 1 - i) + (S - 1)) // (2 * (S - 1)) if S > 1 else np.array([T - 1])
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return torch.as_tensor(t, dtype=torch.long)


def logsnr_timesteps(schedule, num_steps: int) -> torch.Tensor:
    """`num_steps` timesteps from T−1 to 0, uniform in log-SNR λ = log(ᾱ/(1−ᾱ)), the placement
    recommended for DPM-Solver (Lu et al. 2022, §3.3 and Appendix D), rounded to integers.

    For a zero-terminal-SNR schedule (λ_{T−1} = −∞) the grid runs from λ_{T−2}; step 0 is still T−1.
    Rounding can merge neighbours where λ changes fast (near t = 0); those are pushed apart so the
    result stays strictly decreasing.
    """
    T = schedule.num_timesteps
    S = _check_num_steps(T, num_steps)
    log_snr = schedule.log_snr.numpy()  # decreasing in t
    finite = np.isfinite(log_snr)
    lo, hi = log_snr[finite][-1], log_snr[0]
    lam = np.linspace(lo, hi, S)  # noisy → clean
    idx = np.flatnonzero(finite)
    # continuous t at each λ: interpolate t(λ) on the increasing reversed arrays
    t = np.interp(lam, log_snr[idx][::-1], idx[::-1].astype(np.float64))
    t = np.floor(t + 0.5).astype(np.int64)
    t[0] = T - 1
    for k in range(1, S):  # at most T−1−k, strictly below the previous entry
        t[k] = min(t[k], t[k - 1] - 1)
    t[-1] = max(t[-1], 0)
    for k in range(S - 2, -1, -1):  # at least S−1−k, strictly above the next entry
        t[k] = max(t[k], t[k + 1] + 1)
    return torch.as_tensor(t, dtype=torch.long)
