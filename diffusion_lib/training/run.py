"""``train(config)``: the one entry point of every training run, and the table of tasks it dispatches to.

The command line (``python -m diffusion_lib train``), the notebooks and the benchmarks all train
through :func:`train`. It sets the threads, starts DistributedDataParallel under ``torchrun``, picks
the device and precision, and hands the config to its task (``config.task``).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path

import torch

from ..checkpoint import check_writable, run_lock
from ..device import resolve_precision
from .config import TrainConfig, validate_config
from .distributed import close_distributed, init_distributed
from .tasks.classifier import train_classifier
from .tasks.diffusion import train_diffusion
from .tasks.vae import train_vae
from .trainer import resolve_device

TRAIN_FUNCTIONS = {"diffusion": train_diffusion, "vae": train_vae, "classifier": train_classifier}


def train(config: TrainConfig, *, resume: bool | str | Path = False, dataset=None,
          model: torch.nn.Module | None = None, extra_state: dict | None = None) -> dict:
    """Train as ``config`` says; returns a summary dict (step, loss, history, checkpoint).

    ``dataset`` replaces the config's named dataset (e.g. cached VAE latents); ``model`` (instead of
    the UNet built from the preset) and ``extra_state`` apply to the diffusion task. Under ``torchrun``
    each process trains its share of the global batch. The run holds ``output_dir``'s lock
    (:func:`~diffusion_lib.checkpoint.run_lock`): a second run on that folder fails at once.
    """
    config = validate_config(dataclasses.replace(config))
    check_writable(config.output_dir, "config key 'output_dir'", folder=True)
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    dist_info = init_distributed("cuda" if resolve_device(config).type == "cuda" else "cpu")
    try:
        device = resolve_device(config, dist_info)
        resolve_precision(config.precision, device)  # fail before loading data
        diffusion_only = {"model": model, "extra_state": extra_state} if config.task == "diffusion" else {}
        # Before loading data: a second run on the same output_dir fails at once (RunLockedError).
        with run_lock(config.output_dir) if dist_info.is_main else nullcontext():
            return TRAIN_FUNCTIONS[config.task](config, resume=resume, dataset=dataset, dist_info=dist_info,
                                                device=device, **diffusion_only)
    finally:
        close_distributed()
        torch.set_num_threads(threads)
