"""The diffusion objective: the loss of a batch, and one plain optimisation step.

Ho et al. 2020, Algorithm 1, generalised to three parameterisations:

    x0 ~ data,  t ~ Uniform{0, …, T−1},  ε ~ N(0, I)
    x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε                        (eq. 4)
    loss = ‖ target(x0, ε, t) − model(x_t, t, y) ‖²          (eq. 14, the "simple" loss)

where the target is ε ("epsilon"), x0 ("sample") or v = √ᾱ_t ε − √(1 − ᾱ_t) x0 ("v_prediction",
Salimans & Ho 2022). Optionally each sample's loss is weighted by min-SNR-γ (Hang et al. 2023), and
labels are dropped to the null class for classifier-free guidance (Ho & Salimans 2022).

Flow matching (Lipman et al. 2023; Liu et al. 2023) keeps the network and the loop and changes the
path and the target: x_t = (1 − t)·x0 + t·ε with t ∈ [0, 1], target ε − x0 (:func:`flow_matching_loss`).

:func:`diffusion_loss` and :func:`train_step` are the parts a notebook uses directly; the Trainer
(:mod:`diffusion_lib.training`) adds what long runs need around the same loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .schedules import FlowPath


def min_snr_weight(schedule, t: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023, eq. 8 and its ε / v forms).

    Every objective is rescaled so that it equals min(SNR_t, γ) · ‖x0 − x̂0‖²: low-noise steps
    (huge SNR) no longer dominate the gradient. Weights: ε-target min(SNR, γ)/SNR, x0-target
    min(SNR, γ), v-target min(SNR, γ)/(SNR + 1).
    """
    snr = schedule.snr.to(device=t.device, dtype=torch.float32)[t]
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "sample":
        return clipped
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}")


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, u: torch.Tensor) -> torch.Tensor:
    """Replace each label by the null class where ``u < p_uncond`` (u ~ Uniform[0, 1), one per sample).

    Training on both conditional and unconditional inputs lets one network give both predictions
    that classifier-free guidance combines (Ho & Salimans 2022, Algorithm 1).
    """
    return torch.where(u < p_uncond, torch.full_like(y, null_label), y)


def _drop_labels_at_rate(model, y: torch.Tensor | None, p_uncond: float, null_label: int | None,
                         generator: torch.Generator | None) -> torch.Tensor | None:
    """y with each label dropped to ``null_label`` (default ``model.null_label``) with probability p_uncond."""
    if p_uncond <= 0 or y is None:
        return y
    null_label = getattr(model, "null_label", None) if null_label is None else null_label
    if null_label is None:
        raise ValueError("p_uncond > 0 needs a null_label (a class-conditional model has one)")
    return drop_labels(y, p_uncond, null_label, torch.rand(y.shape[0], generator=generator, device=y.device))


def diffusion_loss(model: Callable, schedule, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                   prediction_type: str = "epsilon", min_snr_gamma: float | None = None,
                   p_uncond: float = 0.0, null_label: int | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising loss of a batch x0 (N, C, H, W) in [-1, 1] with optional labels y (N,).

    t and noise are drawn with ``generator`` unless given. With ``p_uncond > 0`` labels are dropped
    to ``null_label`` (default ``model.null_label``) at that rate. Returns the mean loss (a scalar).
    """
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    y = _drop_labels_at_rate(model, y, p_uncond, null_label, generator)

    x_t = schedule.q_sample(x0, t, noise)
    target = schedule.training_target(x0, noise, t, prediction_type)
    prediction = model(x_t, t, y)
    # Mean over pixels per sample, in float32 even under autocast.
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(schedule, t, min_snr_gamma, prediction_type)
    return per_sample.mean()


FLOW_TIME_SAMPLINGS = ("uniform", "logit_normal")


def flow_times(n: int, time_sampling: str = "uniform", *, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
    """n training times t ∈ [0, 1]: uniform (Lipman et al. 2023), or logit-normal t = sigmoid(z),
    z ~ N(0, 1), which spends more samples on the middle times (Esser et al. 2024, SD3, eq. 19)."""
    if time_sampling == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if time_sampling == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    raise ValueError(f"time_sampling must be one of {FLOW_TIME_SAMPLINGS}, got {time_sampling!r}")


def flow_matching_loss(model: Callable, path, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                       time_sampling: str = "uniform", p_uncond: float = 0.0, null_label: int | None = None,
                       t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The conditional flow matching loss of a batch x0 (Lipman et al. 2023, eq. 9 and 23):

        t ~ p(t),  ε ~ N(0, I),  x_t = (1 − t)·x0 + t·ε,  loss = ‖(ε − x0) − u_θ(x_t, t, y)‖²

    (their time runs the other way: t here is 1 − t there). Its minimiser is the marginal velocity
    u(x_t, t) = E[ε − x0 | x_t] (their Theorem 2; :class:`~diffusion_lib.models.analytic.FlowVelocity`
    computes it for Gaussian and mixture data). ``path`` is a :class:`~diffusion_lib.schedules.FlowPath`;
    the network sees the time as ``path.model_time(t)`` = t·(T − 1); t (N,) in [0, 1] and noise are
    drawn with ``generator`` unless given; labels are dropped as in :func:`diffusion_loss`.
    """
    if not isinstance(path, FlowPath):
        raise TypeError(f"path must be a FlowPath (x_t = (1 − t)·x0 + t·ε), got {type(path).__name__}; a "
                        f"NoiseSchedule trains with diffusion_loss")
    n = x0.shape[0]
    if t is None:
        t = flow_times(n, time_sampling, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    y = _drop_labels_at_rate(model, y, p_uncond, null_label, generator)
    x_t = path.q_sample(x0, t, noise)
    prediction = model(x_t, path.model_time(t), y)
    target = path.velocity_target(x0, noise)
    return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1).mean()


def train_step(model: torch.nn.Module, schedule, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
               y: torch.Tensor | None = None, **loss_kwargs) -> float:
    """One plain optimisation step on a batch: loss, backward, update. Returns the loss value."""
    model.train()
    loss = diffusion_loss(model, schedule, x0, y, **loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()
