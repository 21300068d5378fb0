"""Shared helpers of the training tests: a tiny, fast training configuration on the shapes set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# A UNet of ~20k parameters on 8x8 shapes: a step takes milliseconds. Dropout stays on (0.1) so the
# resume tests also check that the RNG state of dropout is restored.
TINY_MODEL = ("model_overrides={base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
              "attention_levels: [1], num_groups: 4, dropout: 0.1}")


def tiny_overrides(output_dir, **extra) -> list[str]:
    items = {
        "output_dir": str(output_dir), "dataset": "shapes", "dataset_kwargs": "{num_samples: 64}",
        "image_size": 8, "model": "cifar_small", "num_timesteps": 50, "batch_size": 8, "lr": "1e-3",
        "warmup_steps": 2, "ema_decay": 0.99, "device": "cpu", "progress": "false", "tensorboard": "false",
        "log_every": 1, "sample_every": 0, "checkpoint_every": 1000, "max_steps": 4,
    }
    items.update(extra)
    return [TINY_MODEL] + [f"{k}={v}" for k, v in items.items()]


def tiny_config(output_dir, **extra):
    from diffusion_lib.training.config import load_config

    return load_config(None, tiny_overrides(output_dir, **extra))


def subprocess_env() -> dict:
    """One intra-op thread, like the in-process runs (see the fixture below): same arithmetic."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffusion_lib", *map(str, args)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


class one_thread:
    """Context manager: torch on one intra-op thread (bit-identical to the subprocesses, and faster on a
    shared 2-core machine than two threads fighting for it)."""

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def state_tensors(state: dict, prefix: str = ""):
    """(name, tensor) for every tensor in a nested checkpoint dict."""
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, dict):
            yield from state_tensors(value, name + ".")
        elif isinstance(value, (list, tuple)):
            yield from state_tensors(dict(enumerate(value)), name + ".")


def loss_after_steps(model, schedule, x0, steps: int = 25, lr: float = 3e-3) -> float:
    """The diffusion loss on ``x0`` (fixed noise and t) after ``steps`` AdamW training steps on it."""
    from diffusion_lib.objective import diffusion_loss, train_step

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for i in range(steps):
        train_step(model, schedule, opt, x0, generator=torch.Generator().manual_seed(i))
    with torch.no_grad():
        return diffusion_loss(model, schedule, x0, generator=torch.Generator().manual_seed(123)).item()
