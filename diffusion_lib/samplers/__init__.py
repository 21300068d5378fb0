"""Samplers: plain functions taking any callable model(x_t, t, y=None) and a NoiseSchedule.

One algorithm per file; ``sample(model, schedule, sampler=name, **kwargs)`` dispatches by name
for the CLI and notebooks.
"""

from .common import Trajectory
from .ddim import ddim_invert, ddim_sample
from .ddpm import ddpm_sample
from .dpm_solver import dpm_solver_sample
from .flow import flow_euler_sample, flow_heun_sample
from .guidance import classifier_free_guidance
from .timesteps import SPACINGS, logsnr_timesteps, make_timesteps

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm_solver": dpm_solver_sample}


def sample(model, schedule, sampler: str = "ddim", **kwargs):
    """Run the sampler named `sampler` ("ddpm", "ddim" or "dpm_solver") with its keyword arguments."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler](model, schedule, **kwargs)


__all__ = ["SAMPLERS", "SPACINGS", "Trajectory", "classifier_free_guidance", "ddim_invert", "ddim_sample",
           "ddpm_sample", "dpm_solver_sample",
           "flow_euler_sample", "flow_heun_sample", "logsnr_timesteps", "make_timesteps", "sample"]
