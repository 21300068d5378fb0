"""DDIM sampling and inversion (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models")."""

from __future__ import annotations

import math

import torch

from .common import SamplerRun, check_schedule, initial_noise
from .timesteps import make_timesteps


def _check_eta(eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


@torch.no_grad()
def ddim_sample(model, schedule, x_T=None, *, shape=None, generator=None, y=None, prediction_type="epsilon",
                clip_x0=False, return_trajectory=False, progress=False, num_steps=50, eta=0.0,
                spacing="leading", device=None, dtype=None):
    """DDIM with `num_steps` model calls, from timesteps[i] to timesteps[i+1] and finally to ᾱ = 1.

    Generalised step (eq. 12), with ᾱ_t, ᾱ_prev taken at the two timesteps of the array:
        x_prev = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z,
        σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)        (eq. 16).
    η = 0 is the deterministic DDIM; η = 1 over all T steps is DDPM with β̃ (fixed_small). Note η,
    not η², multiplies the standard deviation, and a strided step needs 1 − ᾱ_t/ᾱ_prev, not β_t.
    The final step (to ᾱ = 1) returns x̂0 at the last timestep.

    Args (besides those of ddpm_sample):
        num_steps: number of model calls, 1..T.
        eta: η >= 0.
        spacing: "leading", "trailing" or "linspace" (see make_timesteps).
    Returns:
        x0, or (x0, Trajectory).
    """
    check_schedule(schedule)
    eta = _check_eta(eta)
    timesteps = make_timesteps(schedule.num_timesteps, num_steps, spacing)
    x = initial_noise(x_T, shape, generator, device, dtype)
    run = SamplerRun(model, schedule, x, timesteps, y=y, prediction_type=prediction_type, clip_x0=clip_x0,
                     return_trajectory=return_trajectory, progress=progress, desc="DDIM")
    ab = run.alpha_bar + [1.0]
    coefs = []
    for i in range(len(run.t_list)):
        ab_t, ab_prev = ab[i], ab[i + 1]
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
        coefs.append((math.sqrt(ab_prev), math.sqrt(max(1 - ab_prev - sigma**2, 0.0)), sigma))
    for i in run.steps():
        x0, eps = run.predict(x, i)
        c_x0, c_eps, sigma = coefs[i]
        x = run.add_noise(torch.add(x0 * c_x0, eps, alpha=c_eps), sigma, generator)
    return run.result(x)


@torch.no_grad()
def ddim_invert(model, schedule, x0, *, num_steps=50, spacing="leading", num_iterations=3, y=None,
                prediction_type="epsilon", return_trajectory=False, progress=False):
    """Deterministic DDIM inversion x0 → x_T: the inverse of ddim_sample with η = 0 and the same steps.

    The deterministic DDIM step from x_t to x_prev (eq. 12 with σ = 0) is
        x_prev = √ᾱ_prev · x̂0(x_t) + √(1 − ᾱ_prev) · ε̂(x_t),
    and inverting it means solving for x_t, on which the model's prediction depends:
      - num_iterations = 0: the usual one-step approximation (Song et al. 2021, §4.3; Dhariwal &
        Nichol 2021, App. F): hold ε̂ at its value at the previous point, ε̂(x_prev, t), and solve,
        x_t = √ᾱ_t · (x_prev − √(1 − ᾱ_prev) ε̂)/√ᾱ_prev + √(1 − ᾱ_t) · ε̂. Its round-trip error is
        O(1/num_steps), not a bug in the code (diffusers #4654, #5703 report it as one).
      - num_iterations = k: k fixed-point iterations that converge to the exact inverse. Writing
        √ᾱ = cos φ, √(1 − ᾱ) = sin φ and Δ = φ_t − φ_prev, the step is x_prev = cos Δ · x_t − sin Δ · v̂(x_t)
        with v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂0 (Salimans & Ho 2022, §4), so each iteration sets
        x_t ← (x_prev + sin Δ · v̂(x_t, t)) / cos Δ. Holding v̂ rather than ε̂ keeps the iteration
        contracting (factor ~ tan Δ · ‖∂v̂/∂x‖) even where ᾱ_prev → 0, where holding ε̂ stalls.
        Each iteration costs one model call per step.

    Returns:
        x_T at timesteps[0] (the noisiest step of the array), or (x_T, Trajectory) whose entries run
        from the least to the most noisy step.
    """
    check_schedule(schedule)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"num_iterations must be an int >= 0, got {num_iterations!r}")
    if not isinstance(x0, torch.Tensor) or not x0.dtype.is_floating_point or x0.ndim < 1:
        raise TypeError("x0 must be a floating-point tensor of shape (N, ...)")
    timesteps = make_timesteps(schedule.num_timesteps, num_steps, spacing).flip(0)  # clean → noisy
    run = SamplerRun(model, schedule, x0, timesteps, y=y, prediction_type=prediction_type, clip_x0=False,
                     return_trajectory=return_trajectory, progress=progress, desc="DDIM inversion")
    ab = [1.0] + run.alpha_bar
    x_prev = x0
    for i in run.steps():
        a_p, b_p = math.sqrt(ab[i]), math.sqrt(1 - ab[i])
        a_t, b_t = math.sqrt(ab[i + 1]), math.sqrt(1 - ab[i + 1])
        cos_d, sin_d = a_p * a_t + b_p * b_t, b_t * a_p - a_t * b_p
        x0_pred, eps = run.predict(x_prev, i, record=False)
        # one-step approximation: x_t = (a_t/a_p) x_prev + (b_t − a_t b_p/a_p) ε̂(x_prev, t)
        x = torch.add(x_prev * (a_t / a_p), eps, alpha=b_t - a_t * b_p / a_p)
        for _ in range(num_iterations):
            x0_pred, eps = run.predict(x, i, record=False)
            v = torch.mul(eps, a_t).sub_(x0_pred, alpha=b_t)
            x = torch.add(x_prev, v, alpha=sin_d).mul_(1.0 / cos_d)
        if run.trajectory is not None:
            run.trajectory.x_t.append(x)
            run.trajectory.x0_pred.append(x0_pred)
        x_prev = x
    return run.result(x_prev)
