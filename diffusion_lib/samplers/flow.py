"""Euler and Heun solvers of the flow ODE dx/dt = u_θ(x_t, t) from t = 1 (noise) to t = 0 (data).

A flow-matching model (:func:`~diffusion_lib.objective.flow_matching_loss`) predicts the velocity u of
the path x_t = (1 − t)·x0 + t·ε (u, not v: v is Salimans & Ho's v-prediction), so sampling integrates
that ODE backwards in time over the uniform grid t_i = 1 − i/N, i = 0..N. Euler costs one model call
per step, Heun (Karras et al. 2022, Algorithm 1 without stochastic churn) two: its correction averages
the slopes at both ends. The model is called as model(x_t, t·(T − 1), y), the network time of
:meth:`~diffusion_lib.schedules.FlowPath.model_time`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..schedules import FlowPath, NoiseSchedule
from .common import Trajectory, check_model_dtype, initial_noise


def _check_arguments(model, path, num_steps):
    """Checked before any noise is drawn from the caller's generator."""
    if not callable(model):
        raise TypeError(f"model must be callable as model(x_t, t, y=None), got {type(model).__name__}")
    if not isinstance(path, FlowPath):
        hint = " (a diffusion schedule: sample it with ddpm, ddim or dpm_solver)" if isinstance(path, NoiseSchedule) else ""
        raise TypeError(f"path must be a FlowPath (a flow-matching model's path), got {type(path).__name__}{hint}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")


def _check_batch(model, y, x):
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
        raise ValueError(f"y must be a tensor with one label per sample (batch {x.shape[0]}), "
                         f"got {getattr(y, 'shape', type(y).__name__)}")
    check_model_dtype(model, x)


class _Velocity:
    """u_θ(x, t) for one time t shared by the batch, with the shape check every sampler makes."""

    def __init__(self, model, path, y, x):
        self.model, self.path, self.y = model, path, y
        self.n, self.device, self.dtype = x.shape[0], x.device, x.dtype

    def __call__(self, x, t: float):
        time = self.path.model_time(torch.full((self.n,), t, device=self.device, dtype=self.dtype))
        u = self.model(x, time) if self.y is None else self.model(x, time, y=self.y)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            raise ValueError(f"the model must return a tensor of x_t's shape {tuple(x.shape)}, "
                             f"got {getattr(u, 'shape', type(u).__name__)}")
        return u


def _finish(x, trajectory, desc):
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{desc}: the samples hold NaN or infinite values; check the model "
                                 f"(e.g. a diverged checkpoint) and the initial noise")
    return (x, trajectory) if trajectory is not None else x


def _times(num_steps: int) -> list[float]:
    return [1.0 - i / num_steps for i in range(num_steps + 1)]


@torch.no_grad()
def flow_euler_sample(model, path, x_T=None, *, shape=None, generator=None, y=None, num_steps=50,
                      return_trajectory=False, progress=False, device=None, dtype=None):
    """Euler's method on dx/dt = u_θ(x, t) from t = 1 to 0: x_{t_{i+1}} = x_{t_i} + (t_{i+1} − t_i)·u_θ(x_{t_i}, t_i).

    ``num_steps`` model calls. On the straight path with the exact velocity of a single data point
    one step is exact, which is why straighter paths need fewer steps (Liu et al. 2023, §2).
    Returns x0, or (x0, Trajectory) whose ``timesteps`` are the times t_i and ``x0_pred`` the
    predictions x_t − t·u of x0 made there.
    """
    _check_arguments(model, path, num_steps)
    x = initial_noise(x_T, shape, generator, device, dtype)
    _check_batch(model, y, x)
    velocity = _Velocity(model, path, y, x)
    times = _times(num_steps)
    trajectory = Trajectory(torch.tensor(times[:-1])) if return_trajectory else None
    for i in tqdm(range(num_steps), desc="flow Euler", disable=not progress, leave=False):
        u = velocity(x, times[i])
        if trajectory is not None:
            trajectory.x_t.append(x)
            trajectory.x0_pred.append(x - times[i] * u)
        x = x + (times[i + 1] - times[i]) * u
    return _finish(x, trajectory, "flow Euler")


@torch.no_grad()
def flow_heun_sample(model, path, x_T=None, *, shape=None, generator=None, y=None, num_steps=25,
                     return_trajectory=False, progress=False, device=None, dtype=None):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1 with S_churn = 0) on the flow ODE:

        d = u_θ(x_i, t_i),  x̃ = x_i + h·d,  x_{i+1} = x_i + h·(d + u_θ(x̃, t_{i+1}))/2,  h = t_{i+1} − t_i.

    ``num_steps`` steps cost 2·num_steps model calls (the velocity is defined at t = 0, so the last
    step is corrected too). Returns as :func:`flow_euler_sample`.
    """
    _check_arguments(model, path, num_steps)
    x = initial_noise(x_T, shape, generator, device, dtype)
    _check_batch(model, y, x)
    velocity = _Velocity(model, path, y, x)
    times = _times(num_steps)
    trajectory = Trajectory(torch.tensor(times[:-1])) if return_trajectory else None
    for i in tqdm(range(num_steps), desc="flow Heun", disable=not progress, leave=False):
        h = times[i + 1] - times[i]
        d = velocity(x, times[i])
        if trajectory is not None:
            trajectory.x_t.append(x)
            trajectory.x0_pred.append(x - times[i] * d)
        x_euler = x + h * d
        x = x + (0.5 * h) * (d + velocity(x_euler, times[i + 1]))
    return _finish(x, trajectory, "flow Heun")
