"""Ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2)."""

from __future__ import annotations

import math

import torch

from .common import SamplerRun, check_schedule, initial_noise
from .timesteps import make_timesteps

VARIANCES = ("fixed_small", "fixed_large")


@torch.no_grad()
def ddpm_sample(model, schedule, x_T=None, *, shape=None, generator=None, y=None, prediction_type="epsilon",
                clip_x0=False, return_trajectory=False, progress=False, variance="fixed_small",
                device=None, dtype=None):
    """Sample with all T steps of the reverse chain p(x_{t−1} | x_t).

    Each step draws x_{t−1} ~ N(μ̃_t(x_t, x̂0), σ_t² I), where μ̃_t is the posterior mean of
    q(x_{t−1} | x_t, x0) (eq. 7) at the model's x̂0, which for ε-prediction equals eq. 11,
    μ = (x_t − β_t/√(1−ᾱ_t) ε̂)/√α_t; σ_t² = β̃_t ("fixed_small", the posterior variance) or β_t
    ("fixed_large"), the two choices of §3.2. The last step (t = 0) adds no noise.

    Args:
        model: callable model(x_t, t, y=None) -> prediction (t: long tensor (N,)).
        schedule: a NoiseSchedule.
        x_T: initial noise, or None to draw it with `shape` (and `device`, `dtype`) from `generator`.
        y: optional labels passed to the model.
        prediction_type: what the model outputs: "epsilon", "sample" (x0) or "v_prediction".
        clip_x0: clamp the predicted x0 to [−1, 1] at every step.
        return_trajectory: also return a Trajectory of x_t and predicted x0 per step.
        progress: show a tqdm progress bar.
        variance: "fixed_small" (β̃_t) or "fixed_large" (β_t).
    Returns:
        x0, or (x0, Trajectory).
    """
    check_schedule(schedule)
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    T = schedule.num_timesteps
    x = initial_noise(x_T, shape, generator, device, dtype)
    run = SamplerRun(model, schedule, x, make_timesteps(T, T, "leading"), y=y, prediction_type=prediction_type,
                     clip_x0=clip_x0, return_trajectory=return_trajectory, progress=progress, desc="DDPM")
    var = (schedule.posterior_variance if variance == "fixed_small" else schedule.betas).tolist()
    c_x0, c_xt = schedule.posterior_mean_coef_x0.tolist(), schedule.posterior_mean_coef_xt.tolist()
    coefs = [(c_x0[t], c_xt[t], math.sqrt(var[t]) if t > 0 else 0.0) for t in run.t_list]
    for i in run.steps():
        x0, _ = run.predict(x, i, need_eps=False)
        c_x0, c_xt, std = coefs[i]
        x = run.add_noise(torch.add(x0 * c_x0, x, alpha=c_xt), std, generator)
    return run.result(x)
