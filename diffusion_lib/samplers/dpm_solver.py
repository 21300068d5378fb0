"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2), a second-order multistep solver of the probability-flow ODE in
data (x0) prediction form."""

from __future__ import annotations

import math

import torch

from .common import SamplerRun, check_schedule, initial_noise
from .timesteps import SPACINGS, logsnr_timesteps, make_timesteps


def _lambda(alpha_bar: float) -> float:
    """Half log-SNR λ = log(α/σ) with α = √ᾱ, σ = √(1 − ᾱ); −∞ at ᾱ = 0."""
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar)) if alpha_bar > 0 else -math.inf


@torch.no_grad()
def dpm_solver_sample(model, schedule, x_T=None, *, shape=None, generator=None, y=None, prediction_type="epsilon",
                      clip_x0=False, return_trajectory=False, progress=False, num_steps=20, spacing="logsnr",
                      device=None, dtype=None):
    """DPM-Solver++(2M) with `num_steps` model calls.

    With α = √ᾱ, σ = √(1 − ᾱ), λ = log(α/σ) and h_i = λ_{t_{i+1}} − λ_{t_i}, each step is
        x_{i+1} = (σ_{i+1}/σ_i) · x_i − α_{i+1} (e^{−h_i} − 1) · D_i,
    with D_0 = x̂0_0 (first order, DPM-Solver++(1) = DDIM) and, after that (Algorithm 2),
        D_i = (1 + 1/(2 r_i)) x̂0_i − 1/(2 r_i) x̂0_{i−1},  r_i = h_{i−1}/h_i.
    The final step goes to clean data (σ = 0) and is first order, i.e. returns x̂0 at the last
    timestep (lower-order final step, §3.3). Deterministic: `generator` is used only for x_T.

    Args (besides those of ddpm_sample):
        num_steps: number of model calls, 1..T.
        spacing: "logsnr" (default: uniform in log-SNR from t = T−1 to 0, Lu et al. 2022's choice
            for few-step pixel-space sampling) or one of "leading", "trailing", "linspace".
    Returns:
        x0, or (x0, Trajectory).
    """
    check_schedule(schedule)
    if spacing == "logsnr":
        timesteps = logsnr_timesteps(schedule, num_steps)
    elif spacing in SPACINGS:
        timesteps = make_timesteps(schedule.num_timesteps, num_steps, spacing)
    else:
        raise ValueError(f"spacing must be 'logsnr' or one of {SPACINGS}, got {spacing!r}")
    x = initial_noise(x_T, shape, generator, device, dtype)
    run = SamplerRun(model, schedule, x, timesteps, y=y, prediction_type=prediction_type, clip_x0=clip_x0,
                     return_trajectory=return_trajectory, progress=progress, desc="DPM-Solver++(2M)")
    ab = run.alpha_bar
    S = len(ab)
    lam = [_lambda(a) for a in ab]
    coefs = []  # (σ_{i+1}/σ_i, weight of x̂0_i, weight of x̂0_{i−1})
    for i in range(S - 1):
        sigma_ratio = math.sqrt((1 - ab[i + 1]) / (1 - ab[i]))
        phi = 1.0 - math.exp(lam[i] - lam[i + 1])  # −(e^{−h} − 1)
        c = math.sqrt(ab[i + 1]) * phi
        if i == 0:
            coefs.append((sigma_ratio, c, 0.0))
        else:
            half_inv_r = 0.5 * (lam[i + 1] - lam[i]) / (lam[i] - lam[i - 1])  # 1/(2r); 0 after an infinite h
            coefs.append((sigma_ratio, c * (1 + half_inv_r), -c * half_inv_r))
    x0_prev = None
    for i in run.steps():
        x0, _ = run.predict(x, i, need_eps=False)
        if i == S - 1:
            x = x0  # first-order step to σ = 0: x = x̂0
        else:
            sigma_ratio, c_cur, c_prev = coefs[i]
            x_next = torch.add(x * sigma_ratio, x0, alpha=c_cur)
            if c_prev != 0.0:
                x_next.add_(x0_prev, alpha=c_prev)
            x = x_next
        x0_prev = x0
    return run.result(x)
