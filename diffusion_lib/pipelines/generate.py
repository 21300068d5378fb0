"""Generation: the one batched loop that samples (guided or not) and decodes, and the sampler options by name.

Every place that draws many samples goes through :func:`sample_in_batches`: the command line's
``sample`` and ``evaluate``, the trainer's sample grids, the guidance sweep and the benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..samplers import FLOW_SAMPLERS, SAMPLERS, classifier_free_guidance, sample


def sampler_options(sampler: str, *, steps: int | None = None, eta: float = 0.0, prediction_type: str = "epsilon",
                    clip_x0: bool = False) -> dict:
    """The keyword arguments of ``samplers.sample(..., sampler)``: DDPM runs all T steps, DDIM takes
    ``num_steps`` and η, DPM-Solver ``num_steps``; the flow samplers take ``num_steps`` only (their
    model predicts the velocity, and they neither add noise nor clip)."""
    if sampler in FLOW_SAMPLERS:
        return {"num_steps": steps}
    options = {"prediction_type": prediction_type, "clip_x0": clip_x0}
    if sampler == "ddim":
        options.update(num_steps=steps, eta=eta)
    elif sampler == "dpm_solver":
        options.update(num_steps=steps)
    return options


@torch.no_grad()
def sample_in_batches(model, schedule, sampler: str, *, shape: Sequence[int], n: int, batch_size: int,
                      generator: torch.Generator, labels: torch.Tensor | None = None, decode: Callable | None = None,
                      device=None, progress: bool = False, **options) -> torch.Tensor:
    """``n`` samples of ``shape`` (C, H, W) from ``model`` (already guided, where guidance is wanted),
    ``batch_size`` at a time, all drawn from ``generator``; labels ``(n,)`` for conditional models;
    ``decode`` (latents -> images) applied to each batch. Returns them on the CPU, not clamped."""
    out = []
    with tqdm(total=n, unit="img", disable=not progress, desc=f"sampling ({sampler})") as bar:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            y = None if labels is None else labels[start:start + b].to(generator.device)
            x = sample(model, schedule, sampler, shape=(b, *shape), generator=generator, y=y, device=device, **options)
            out.append((decode(x) if decode is not None else x).cpu())
            bar.update(b)
    return torch.cat(out)


def check_sampler(info: dict, sampler: str) -> None:
    """Refuse a sampler that does not fit the checkpoint's objective (``info["objective"]`` of ``load_model``):
    a flow-matching model predicts a velocity on a FlowPath, a diffusion model ε, x0 or v on a NoiseSchedule."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    diffusion_samplers = tuple(name for name in SAMPLERS if name not in FLOW_SAMPLERS)
    flow = info.get("objective", "diffusion") == "flow"
    if flow and sampler not in FLOW_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} needs a diffusion checkpoint; this is a flow-matching checkpoint "
                         f"(it predicts the velocity on the path x_t = (1 − t)·x0 + t·ε): use one of {FLOW_SAMPLERS}")
    if not flow and sampler in FLOW_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} needs a flow-matching checkpoint; this is a diffusion checkpoint "
                         f"(prediction_type {info.get('prediction_type', 'epsilon')!r}): use one of {diffusion_samplers}")


def check_generate_options(info: dict, *, guidance_scale: float, clip_x0: bool, sampler: str | None = None) -> None:
    """The options of :func:`generate` that depend on the checkpoint (``info`` of ``load_model``), checked
    without sampling, so that callers with other work to do first (``evaluate``) can fail early."""
    if sampler is not None:
        check_sampler(info, sampler)
    if clip_x0 and info.get("objective") == "flow":
        raise ValueError("clip_x0 applies to the diffusion samplers; the flow samplers integrate the velocity "
                         "without clamping x0: sample this flow-matching checkpoint with clip_x0=False")
    if clip_x0 and info.get("vae"):
        raise ValueError("clip_x0 clamps x0 to the pixel range [-1, 1]; this checkpoint samples VAE latents, "
                         "which are not bounded: sample it with clip_x0=False")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if info["num_classes"] is None and guidance_scale != 1.0:
        raise ValueError("guidance_scale needs a class-conditional model; this checkpoint is unconditional")


def generate(model, schedule, info: dict, *, sampler: str, steps: int | None, n: int, batch_size: int,
             seed: int, guidance_scale: float, eta: float, device, progress: bool,
             clip_x0: bool = False, labels: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` samples on the CPU: images clamped to [-1, 1], or for a latent model (``info["vae"]``) its
    latents as sampled (they are not bounded; clamping them would distort every decoded image).
    Conditional models get ``labels`` (n,), by default the classes in turn. ``clip_x0``: clamp each step's x̂0 to [-1, 1] as Ho et
    al.'s sampler does (pixel models only)."""
    check_generate_options(info, guidance_scale=guidance_scale, clip_x0=clip_x0, sampler=sampler)
    num_classes = info["num_classes"]
    net = model if guidance_scale == 1.0 else classifier_free_guidance(model, guidance_scale, info["null_label"])
    if labels is None and num_classes is not None:
        labels = torch.arange(n) % num_classes
    options = sampler_options(sampler, steps=steps, eta=eta, prediction_type=info["prediction_type"], clip_x0=clip_x0)
    generator = torch.Generator(device).manual_seed(seed)
    images = sample_in_batches(net, schedule, sampler, shape=info["image_shape"], n=n, labels=labels,
                               batch_size=batch_size, generator=generator, device=device, progress=progress, **options)
    return images if info.get("vae") else images.clamp(-1, 1)
