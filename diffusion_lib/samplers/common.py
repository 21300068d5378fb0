"""What every sampler shares: argument checks, the initial noise, the model call, the conversion
of a prediction to (x0, ε), and the optional trajectory and progress bar.

Coefficients are per-step Python floats (the whole batch shares one timestep), so a step costs a
handful of tensor operations and no indexing into schedule tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..schedules import FlowPath, NoiseSchedule, split_prediction


@dataclass
class Trajectory:
    """The states a sampler visited, for figures.

    x_t[i] is the state at noise level timesteps[i] and x0_pred[i] the prediction of x0 made there
    (for a sampler: the model input at timesteps[i]; for ddim_invert: the latent reached there).
    """

    timesteps: torch.Tensor
    x_t: list[torch.Tensor] = field(default_factory=list)
    x0_pred: list[torch.Tensor] = field(default_factory=list)


def check_schedule(schedule) -> NoiseSchedule:
    if not isinstance(schedule, NoiseSchedule):
        hint = " (a flow-matching path: sample it with flow_euler or flow_heun)" if isinstance(schedule, FlowPath) else ""
        raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}{hint}")
    return schedule


def initial_noise(x_T, shape, generator, device, dtype) -> torch.Tensor:
    """x_T itself, or standard normal noise of `shape` drawn from `generator`."""
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or not x_T.dtype.is_floating_point or x_T.ndim < 1:
            raise TypeError("x_T must be a floating-point tensor of shape (N, ...)")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}; pass one of them")
        return x_T
    if shape is None:
        raise ValueError("pass either x_T (the initial noise) or shape (with an optional generator)")
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be a tuple of positive ints (N, ...), got {shape!r}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.get_default_dtype())


def to_x0_eps(x, pred, a: float, b: float, prediction_type: str, clip_x0: bool, need_eps: bool = True):
    """(x0, ε) from a network output at x = a·x0 + b·ε (:func:`~diffusion_lib.schedules.split_prediction`).

    With clip_x0, x0 is clamped to [−1, 1] and ε recomputed from it, so the step stays consistent
    with the clipped x0 (as in improved-diffusion's DDIM). Returns ε = None when not need_eps.
    """
    x0, eps = split_prediction(x, pred, a, b, prediction_type, need_eps=need_eps and not clip_x0)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = None
    if need_eps and eps is None:
        eps = split_prediction(x, x0, a, b, "sample")[1]
    return x0, eps


def check_model_dtype(model, x: torch.Tensor) -> None:
    """Refuse starting noise whose dtype or device differs from the network's weights, which would
    otherwise fail deep inside its first layer. A guided model is checked through the network it wraps."""
    net = getattr(model, "model", model)
    if not isinstance(net, torch.nn.Module):
        return
    weight = next((p for p in net.parameters() if p.is_floating_point()), None)
    if weight is None:
        return
    if x.dtype != weight.dtype:
        raise TypeError(f"the starting tensor (x_T; x0 for ddim_invert) has dtype {x.dtype} but the model's weights "
                        f"are {weight.dtype}: pass it as .to({weight.dtype}) (or dtype={weight.dtype})")
    if x.device != weight.device:
        raise ValueError(f"the starting tensor (x_T; x0 for ddim_invert) is on {x.device} but the model's weights "
                         f"are on {weight.device}: pass it as .to({str(weight.device)!r}) (or device={str(weight.device)!r})")


class SamplerRun:
    """The loop scaffold: cached timestep tensors, model call with shape check, trajectory, progress."""

    def __init__(self, model, schedule, x, timesteps, *, y, prediction_type, clip_x0,
                 return_trajectory, progress, desc):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t, y=None), got {type(model).__name__}")
        check_schedule(schedule).check_prediction_type(prediction_type)
        check_model_dtype(model, x)
        if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
            raise ValueError(f"y must be a tensor with one label per sample (batch {x.shape[0]}), "
                             f"got {getattr(y, 'shape', type(y).__name__)}")
        self.model, self.y = model, y
        self.prediction_type, self.clip_x0 = prediction_type, bool(clip_x0)
        self.timesteps = timesteps
        self.t_list = timesteps.tolist()
        alpha_bar = schedule.alpha_bar.tolist()
        self.alpha_bar = [alpha_bar[t] for t in self.t_list]  # ᾱ at each visited step
        # one (N,) long tensor per step: rows of a single (S, N) tensor, built once
        self.t_batch = timesteps.to(x.device)[:, None].repeat(1, x.shape[0]).unbind(0)
        self.trajectory = Trajectory(timesteps.clone()) if return_trajectory else None
        self.progress = progress
        self.desc = desc
        self.noise = None

    def steps(self):
        return tqdm(range(len(self.t_list)), desc=self.desc, disable=not self.progress, leave=False)

    def predict(self, x, i: int, *, need_eps: bool = True, record: bool = True):
        """Call the model at step i and return (x0, ε) (ε None unless need_eps)."""
        t = self.t_batch[i]
        pred = self.model(x, t) if self.y is None else self.model(x, t, y=self.y)
        if not isinstance(pred, torch.Tensor) or pred.shape != x.shape:
            raise ValueError(f"the model must return a tensor of x_t's shape {tuple(x.shape)}, "
                             f"got {getattr(pred, 'shape', type(pred).__name__)}")
        ab = self.alpha_bar[i]
        x0, eps = to_x0_eps(x, pred, math.sqrt(ab), math.sqrt(1.0 - ab), self.prediction_type,
                            self.clip_x0, need_eps)
        if record and self.trajectory is not None:
            self.trajectory.x_t.append(x)
            self.trajectory.x0_pred.append(x0)
        return x0, eps

    def add_noise(self, x, std: float, generator):
        """x + std·z, z ~ N(0, I) from generator; draws nothing when std == 0 (keeps streams aligned)."""
        if std <= 0.0:
            return x
        if self.noise is None:
            self.noise = torch.empty_like(x)
        # normal_ draws exactly what torch.randn would, into a reused buffer
        return x.add_(self.noise.normal_(generator=generator), alpha=std)

    def result(self, x):
        """The sampler's return value, refused when it holds NaN or ±inf (one reduction per run)."""
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            raise FloatingPointError(f"{self.desc}: {int((~finite).sum())} of {x.numel()} sample values are NaN or "
                                     f"infinite; {self.nonfinite_origin()}. Check the model (e.g. a diverged "
                                     f"checkpoint) and the initial noise")
        return (x, self.trajectory) if self.trajectory is not None else x

    def nonfinite_origin(self) -> str:
        """Where non-finite values first appeared: read from the trajectory when one was recorded (no
        cost while sampling), else how to find out."""
        if self.trajectory is None or not self.trajectory.x0_pred:
            return "pass return_trajectory=True to see the step where they first appear"
        for t, x_t, x0 in zip(self.t_list, self.trajectory.x_t, self.trajectory.x0_pred):
            if not bool(torch.isfinite(x_t).all()):
                return f"the state x_t is already non-finite at timestep {t}"
            if not bool(torch.isfinite(x0).all()):
                return f"the model's prediction is first non-finite at timestep {t}"
        return "they appear in the last step"
