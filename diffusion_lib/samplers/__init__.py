"""Samplers: plain functions taking any callable model(x_t, t, y=None) and a NoiseSchedule (ddpm, ddim,
dpm_solver), or a FlowPath for a flow-matching model (flow_euler, flow_heun).

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

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm_solver": dpm_solver_sample,
            "flow_euler": flow_euler_sample, "flow_heun": flow_heun_sample}
FLOW_SAMPLERS = ("flow_euler", "flow_heun")  # they take a FlowPath; the others a NoiseSchedule


def sample(model, schedule, sampler: str = "ddim", **kwargs):
    """Run the sampler named `sampler` ("ddpm", "ddim", "dpm_solver" with a NoiseSchedule; "flow_euler",
    "flow_heun" with a FlowPath as ``schedule``) with its keyword arguments."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {tuple(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler](model, schedule, **kwargs)


__all__ = ["FLOW_SAMPLERS", "SAMPLERS", "SPACINGS", "Trajectory", "classifier_free_guidance", "ddim_invert", "ddim_sample",
           "ddpm_sample", "dpm_solver_sample",
           "flow_euler_sample", "flow_heun_sample", "logsnr_timesteps", "make_timesteps", "sample"]
