"""Trained models for the book: where the notebooks find them, and "load it, or train it here".

The course ships small models trained with ``python -m diffusion_lib train`` (EMA weights only,
possibly stored in fp16), each as ``<name>.pt`` with a model card ``<name>.json`` beside it
(command, config, steps, wall time, hardware, seed, sha256, measured FID). The names the book uses
are in :data:`NAMES`. :func:`find_checkpoint` looks for ``<name>.pt`` in these folders, in order:

1. ``$DIFFUSION_CHECKPOINTS`` (a folder you choose, e.g. on Google Drive in Colab);
2. ``checkpoints/`` of the repository, next to the ``diffusion_lib/`` package folder (a clone, or
   an editable install ``pip install -e .``);
3. ``~/.cache/diffusion_lib/checkpoints``.

The first file found wins. A notebook calls :func:`load_or_train`: the shipped model when there is
one (never in the ``smoke`` profile, whose outputs must not depend on downloaded files), otherwise
a model trained in the notebook with :func:`notebook_config`'s configuration for the profile. Such
a run lives in ``runs/<name>-<profile>-<hash of its config>/`` below the working folder (the smoke
profile uses a fresh temporary folder), so a second notebook with the same configuration reuses a
finished run instead of training again, and an interrupted one resumes exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import latest_checkpoint, load_model
from ..profiles import check_profile, dry_run_cap, dry_run_fields
from ..training.config import TrainConfig, config_to_dict, validate_config

CHECKPOINTS_ENV = "DIFFUSION_CHECKPOINTS"

#: The shipped models the chapters look for.
NAMES = ("fashion_ddpm_linear", "fashion_ddpm_cosine", "fashion_vae", "fashion_latent_ddpm", "fashion_cfg",
         "fashion_classifier")


def checkpoint_dirs() -> list[Path]:
    """The folders :func:`find_checkpoint` searches, in order (they need not exist)."""
    dirs = []
    env = os.environ.get(CHECKPOINTS_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(__file__).resolve().parents[2] / "checkpoints")  # the repository's folder
    dirs.append(Path.home() / ".cache" / "diffusion_lib" / "checkpoints")
    return dirs


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.endswith(".pt"):
        raise ValueError(f"name must be a checkpoint name without folder or '.pt', such as "
                         f"{NAMES[0]!r}; got {name!r}")
    return name


def find_checkpoint(name: str) -> Path | None:
    """The first ``<name>.pt`` in :func:`checkpoint_dirs`, or None when there is none."""
    _check_name(name)
    for folder in checkpoint_dirs():
        path = folder / f"{name}.pt"
        if path.is_file():
            return path
    return None


def read_card(checkpoint: str | Path) -> dict | None:
    """The model card (the JSON file beside a checkpoint, same name), or None when there is none."""
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_pretrained(name: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, dict]:
    """Load the shipped diffusion model ``name``: ``(model, schedule, info)``, the model in float32
    eval mode on ``device``.

    ``info`` is :func:`~diffusion_lib.checkpoint.load_model`'s, plus ``card`` (the model card, or
    None), ``name`` and ``source`` ("shipped"). Raises ``FileNotFoundError`` listing the folders
    searched when no checkpoint of that name exists.
    """
    path = find_checkpoint(name)
    if path is None:
        searched = ", ".join(str(d) for d in checkpoint_dirs())
        raise FileNotFoundError(f"no checkpoint {name}.pt in {searched}; set ${CHECKPOINTS_ENV} to the "
                                f"folder that holds it, or train one (see configs/README.md)")
    model, schedule, info = load_model(path, ema=True, device=device)
    model.float()  # shipped weights may be fp16; the samplers and the notebooks compute in float32
    info.update(card=read_card(path), name=name, source="shipped")
    return model, schedule, info


# --------------------------------------------------------------------------------- train here
_FASHION = dict(dataset="fashion_mnist", model="fashion_small", schedule="linear", num_timesteps=1000,
                beta_start=1e-4, beta_end=0.02, prediction_type="epsilon", weight_decay=1e-4, grad_clip=1.0,
                seed=0, sample_every=0, tensorboard=False)
# Smoke: a tiny UNet on 16x16 synthetic shapes, seconds on one core. T = 100 (linear beta scaled by
# 10, so that alpha_bar_T is as small as with T = 1000): ancestral sampling costs 100 network calls.
_SMOKE = dict(dataset="shapes", dataset_kwargs={"num_samples": 256}, image_size=16, model="cifar_small",
              model_overrides={"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                               "attention_levels": [1], "num_groups": 8, "dropout": 0.0},
              schedule="linear", num_timesteps=100, beta_start=1e-3, beta_end=0.2, batch_size=16, lr=2e-3,
              warmup_steps=2, ema_decay=0.8, max_steps=12, device="cpu", num_threads=1, seed=0,
              sample_every=0, tensorboard=False, log_every=2)
# cpu: minutes on 2 shared cores. fashion_small at half width without its dropout (a short run does
# not overfit), a large learning rate and a short EMA; the shipped model is the full recipe.
_CPU_MODEL = {"base_channels": 16, "channel_mult": [1, 2, 2], "attention_levels": [2], "dropout": 0.0}

_NOTEBOOK_CONFIGS: dict[str, dict[str, dict]] = {
    "fashion_ddpm_linear": {
        "smoke": _SMOKE,
        "cpu": {**_FASHION, "model_overrides": _CPU_MODEL, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50,
                "ema_decay": 0.995, "max_steps": 200, "device": "cpu", "num_threads": 1, "log_every": 10},
        # the full fashion_small (configs/fashion_cpu.yaml) for as many steps as fit in minutes on a T4
        "gpu": {**_FASHION, "batch_size": 128, "lr": 5e-4, "warmup_steps": 200, "ema_decay": 0.999,
                "max_steps": 6000, "log_every": 50},
    },
    # Ho et al.'s CIFAR-10 recipe (configs/ddpm_cifar10.yaml), shortened to fit a Colab session
    # (about 15 minutes on a T4, estimated from the network's size, not measured); resumable across
    # sessions when output_dir is on Google Drive.
    "cifar10_ddpm": {
        "gpu": dict(dataset="cifar10", image_size=32, hflip=True, model="ddpm_cifar10", schedule="linear",
                    num_timesteps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="epsilon",
                    batch_size=128, lr=2e-4, weight_decay=0.0, warmup_steps=500, grad_clip=1.0,
                    ema_decay=0.9995, max_steps=3000, num_workers=2, seed=0, sample_every=0,
                    tensorboard=False, log_every=50),
    },
}


def notebook_config(name: str, profile: str, **overrides) -> TrainConfig:
    """The configuration the notebooks train ``name`` with in ``profile`` (fields replaced by
    ``overrides``, then cut by a dry run: :func:`~diffusion_lib.profiles.dry_run_fields`); ``output_dir``
    is set by :func:`train_here`."""
    check_profile(profile)
    if profile not in _NOTEBOOK_CONFIGS.get(name, {}):
        available = [f"{n} ({', '.join(p)})" for n, p in _NOTEBOOK_CONFIGS.items()]
        raise ValueError(f"no notebook configuration for {name!r} in the {profile!r} profile; available: "
                         f"{'; '.join(available)}")
    fields = dry_run_fields(profile, {**_NOTEBOOK_CONFIGS[name][profile], **overrides})
    return validate_config(TrainConfig(**{**fields, "output_dir": fields.get("output_dir", "runs/default")}))


def run_dir(name: str, config: TrainConfig, profile: str, root: str | Path = "runs") -> Path:
    """``<root>/<name>-<profile>-<8 hex digits of the config's hash>``: one folder per configuration."""
    fields = {k: v for k, v in config_to_dict(config).items()
              if k not in ("output_dir", "progress", "num_workers", "num_threads")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path(root) / f"{_check_name(name)}-{check_profile(profile)}-{digest}"


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold an exclusive lock on the run folder ``folder`` (created if needed) while the block runs.

    Notebooks executed side by side may train the same configuration into the same folder; without
    the lock both would write its checkpoints and log at once. Where ``fcntl`` is missing
    (Windows) nothing is locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_here(name: str, config: TrainConfig, *, profile: str, device: str | torch.device | None = None,
               output_dir: str | Path | None = None, progress: bool = True) -> tuple[torch.nn.Module, Any, dict]:
    """Train ``config`` (or resume it, or reuse its finished run) and load the EMA model.

    The run's folder is ``output_dir``, else :func:`run_dir` (smoke profile: a new temporary
    folder). Returns ``(model, schedule, info)`` with ``info`` as in ``load_model`` plus ``source``
    ("trained here"), ``name``, ``output_dir``, ``log`` (the CSV log) and ``train`` (the summary of
    :func:`~diffusion_lib.training.train`; its ``start_step`` equals ``step`` when a finished run
    was reused).
    """
    from ..training import train

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (see notebook_config), got {type(config).__name__}")
    if output_dir is None:
        output_dir = (tempfile.mkdtemp(prefix=f"{name}-smoke-") if check_profile(profile) == "smoke"
                      else run_dir(name, config, profile))
    changes = {"output_dir": str(output_dir), "progress": progress}
    if device is not None:
        changes["device"] = str(device)
    config = dataclasses.replace(config, **changes)
    with run_lock(output_dir):  # two notebooks sharing a run: the second waits, then reuses it
        summary = train(config, resume=True)
    checkpoint = summary["checkpoint"] or latest_checkpoint(config.output_dir)
    model, schedule, info = load_model(checkpoint, ema=True, device=device or "cpu")
    info.update(name=name, source="trained here", card=None, output_dir=str(output_dir),
                log=str(Path(output_dir) / "log.csv"), train=summary)
    return model, schedule, info


def load_or_train(name: str, config: TrainConfig, *, profile: str, device: str | torch.device | None = None,
                  output_dir: str | Path | None = None, progress: bool = True) -> tuple[torch.nn.Module, Any, dict]:
    """The shipped model ``name`` when :func:`find_checkpoint` finds it and ``profile`` is not
    "smoke" (nor a dry run of the gpu profile, which checks the gpu training branch); otherwise
    :func:`train_here` with ``config``. ``info["source"]`` says which."""
    if check_profile(profile) != "smoke" and dry_run_cap(profile) is None and find_checkpoint(name) is not None:
        return load_pretrained(name, device=device or "cpu")
    return train_here(name, config, profile=profile, device=device, output_dir=output_dir, progress=progress)


def describe(info: dict) -> str:
    """One line naming where a model from :func:`load_or_train` comes from, for figure captions."""
    if info.get("source") == "shipped":
        steps = (info.get("card") or {}).get("steps", info.get("step"))
        return f"the shipped model {info['name']}" + (f" ({steps:,} training steps)" if steps else "")
    return f"the model trained in this notebook ({info.get('step'):,} steps)"
