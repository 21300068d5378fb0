"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance")."""

from __future__ import annotations

import math

import torch


def classifier_free_guidance(model, guidance_scale: float, null_label: int):
    """Wrap a conditional model into a guided one: ε̃ = ε_u + w · (ε_c − ε_u).

    w = guidance_scale (the convention of Saharia et al. 2022 and diffusers): w = 1 is the plain
    conditional model, w = 0 the unconditional one, w > 1 pushes towards the condition. Ho & Salimans
    write ε̃ = (1 + w') ε_c − w' ε_u (their eq. 6, with their own weight w'), so their weight is
    w' = w − 1. The conditional and unconditional halves go through the model as ONE batch
    of 2N (labels y and null_label). The combination is affine in the output, so it applies to
    x0- and v-predictions unchanged: converting the combined output equals combining the converted
    ones at the same x_t.

    Args:
        model: callable model(x_t, t, y) trained with label dropout to `null_label`.
        guidance_scale: w >= 0.
        null_label: the label index the model was trained with for "no condition"
            (UNet: model.null_label == num_classes). When the model has a ``null_label`` attribute,
            any other value is refused: a real class would silently stand in for "no condition".
    Returns:
        guided(x_t, t, y) with the same output shape as model.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t, y), got {type(model).__name__}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if isinstance(null_label, bool) or not isinstance(null_label, int) or null_label < 0:
        raise ValueError(f"null_label must be an int >= 0 (the model's unconditional label), got {null_label!r}")
    if hasattr(model, "null_label") and null_label != model.null_label:  # a UNet knows its null label
        if model.null_label is None:
            raise ValueError("classifier_free_guidance needs a class-conditional model; this one is unconditional "
                             "(null_label None)")
        raise ValueError(f"null_label={null_label} is not this model's unconditional label: labels 0.."
                         f"{model.null_label - 1} are real classes and its null label is {model.null_label} "
                         f"(model.null_label)")
    w = float(guidance_scale)

    def guided(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("a classifier-free-guided model needs labels y (one per sample)")
        n = x_t.shape[0]
        y = torch.as_tensor(y, device=x_t.device)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},), got {tuple(y.shape)}")
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]))
        cond, uncond = out[:n], out[n:]
        return torch.add(uncond, cond - uncond, alpha=w)

    guided.guidance_scale = w
    guided.null_label = null_label
    guided.model = model  # the network, for the samplers' dtype check
    return guided
