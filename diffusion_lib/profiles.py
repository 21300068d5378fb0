"""Run sizes: one notebook, three profiles.

``DIFFUSION_PROFILE`` chooses how big a run is (see ARCHITECTURE.md, "Profiles"):

- ``smoke``: CI and nbval; tiny data, a few steps, seconds per notebook, always on the CPU;
- ``cpu``: the default without CUDA; real data, small models, minutes;
- ``gpu``: the default with CUDA; the full configurations of the papers.

A notebook's ``parameters`` cell reads the profile once (``profile = get_profile()``) and every size
after it is chosen with :func:`pick`, so papermill can inject another ``profile`` and all sizes follow.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PROFILES = ("smoke", "cpu", "gpu")
PROFILE_ENV = "DIFFUSION_PROFILE"
DEVICE_ENV = "DIFFUSION_DEVICE"

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


def pick(profile: str, *, smoke: T, cpu: T, gpu: T) -> T:
    """The value for ``profile``: ``pick(profile, smoke=200, cpu=5_000, gpu=100_000)``."""
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[check_profile(profile)]
