"""Run sizes: one notebook, three profiles.

``DIFFUSION_PROFILE`` chooses how big a run is (see ARCHITECTURE.md, "Profiles"):

- ``smoke``: CI and nbval; tiny data, a few steps, seconds per notebook, always on the CPU;
- ``cpu``: the default without CUDA; real data, small models, minutes;
- ``gpu``: the default with CUDA; the full configurations of the papers.

A notebook's ``parameters`` cell reads the profile once (``profile = get_profile()``) and every size
after it is chosen with :func:`pick`, so papermill can inject another ``profile`` and all sizes follow.

Dry run of the gpu profile: ``DIFFUSION_DRY_RUN=N`` (a positive integer) keeps every gpu code path
(the gpu data sets, models and branches) but cuts its sizes, so that CI runs each chapter's gpu
branches on a CPU in seconds (tests/test_gpu_dry_run.py). In the gpu profile only, it caps

- every int that :func:`pick` returns, and every int in a list or tuple it returns, at N (training
  steps, sample counts, reference sizes, batch sizes; strings, floats and dicts pass unchanged);
- the training configurations of the notebooks (``course.pretrained.notebook_config`` and the
  ``course.recipes`` configurations, through :func:`dry_run_fields`): ``max_steps``, ``batch_size``,
  ``warmup_steps``, ``log_every`` and ``checkpoint_every`` at N, and the number of diffusion steps T
  at :data:`DRY_RUN_MAX_TIMESTEPS` (20), so that sampling with every step stays cheap;
- ``course.pretrained.load_or_train``: it trains that configuration even where a shipped model exists (the
  gpu training branch runs, and sampling never meets a shipped model's T = 1000).

Its numbers mean nothing; it checks that the code runs.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "DIFFUSION_PROFILE"
DEVICE_ENV = "DIFFUSION_DEVICE"
DRY_RUN_ENV = "DIFFUSION_DRY_RUN"
DRY_RUN_MAX_TIMESTEPS = 20  # T of the models a dry run trains

T = TypeVar("T")


def check_profile(profile: str) -> str:
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise ``ValueError``."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    return profile


def get_profile() -> str:
    """The profile from ``DIFFUSION_PROFILE``; unset or empty: ``gpu`` with CUDA, ``cpu`` without."""
    value = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in PROFILES:
        raise ValueError(
            f"{PROFILE_ENV} must be one of {', '.join(PROFILES)}; got {os.environ[PROFILE_ENV]!r}"
        )
    return value


def default_device(profile: str | None = None) -> torch.device:
    """The device a notebook runs on.

    ``DIFFUSION_DEVICE`` wins when set (e.g. ``cuda:1``). Otherwise the smoke profile uses the CPU,
    so CI's numbers match the committed CPU outputs on any machine; the others use CUDA when there
    is one.
    """
    profile = check_profile(profile) if profile is not None else get_profile()
    override = os.environ.get(DEVICE_ENV, "").strip()
    if override:
        return torch.device(override)
    if profile != "smoke" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def dry_run_cap(profile: str) -> int | None:
    """N of ``DIFFUSION_DRY_RUN=N`` in the gpu profile; None in other profiles or when it is unset."""
    if check_profile(profile) != "gpu":
        return None
    value = os.environ.get(DRY_RUN_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{DRY_RUN_ENV} must be a positive integer (the cap of every size); got {value!r}")
    return int(value)


def _capped(value, cap: int):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return min(value, cap)
    if isinstance(value, (list, tuple)):
        return type(value)(_capped(v, cap) for v in value)
    return value


def pick(profile: str, *, smoke: T, cpu: T, gpu: T) -> T:
    """The value for ``profile``: ``pick(profile, smoke=200, cpu=5_000, gpu=100_000)``.

    In a dry run of the gpu profile (``DIFFUSION_DRY_RUN=N``) ints, also in lists and tuples, are capped at N.
    """
    value = {"smoke": smoke, "cpu": cpu, "gpu": gpu}[check_profile(profile)]
    cap = dry_run_cap(profile)
    return value if cap is None else _capped(value, cap)


def dry_run_fields(profile: str, fields: dict) -> dict:
    """A training configuration's fields (of ``TrainConfig``) with the dry-run caps applied (see the
    module's docstring); ``fields`` itself outside a dry run of the gpu profile."""
    cap = dry_run_cap(profile)
    if cap is None:
        return fields
    capped = dict(fields)
    for key in ("max_steps", "batch_size", "warmup_steps", "log_every", "checkpoint_every"):
        if key in capped:
            capped[key] = min(capped[key], cap)
    capped["num_timesteps"] = min(capped.get("num_timesteps", DRY_RUN_MAX_TIMESTEPS), DRY_RUN_MAX_TIMESTEPS)
    return capped
