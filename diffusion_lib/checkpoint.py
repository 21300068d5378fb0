"""Checkpoints and files: atomic writes, digests, the cache folder, the last K kept, safe loading, and a
loader for every model kind (UNet with its schedule, VAE, classifier).

A checkpoint is one ``torch.save`` file holding plain dicts, lists, numbers and tensors only, so it
loads with ``torch.load(..., weights_only=True)`` (no arbitrary code runs when a reader opens a file
from the internet). Training checkpoints hold:

    step, model, ema, ema_num_averaged, optimizer, scaler, config, model_config, schedule,
    prediction_type, rng (per rank: torch CPU, CUDA, python, numpy), data_order

Files are named ``ckpt_<step:08d>.pt`` inside ``<output_dir>/checkpoints``. A write goes to a
temporary file in the same folder, is flushed and fsync'ed, then renamed over the target with
``os.replace`` (atomic on POSIX and Windows) and the folder is fsync'ed: a crash or SIGKILL at any
moment leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

CACHE_ENV = "DIFFUSION_CACHE"
FORMAT = "diffusion_lib.checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated or not one of ours; the message names the file."""


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (model cards, latent caches, the FID weights)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"ckpt_{step:08d}.pt"


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. Windows cannot open a folder: nothing to do there.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, which is flushed,
    fsync'ed and renamed over ``path`` with ``os.replace``. Checkpoints, cached latents and FID statistics
    are all written this way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def cache_dir(kind: str) -> Path:
    """Where computed files of one kind are kept ("latents", "fid"): ``$DIFFUSION_CACHE/<kind>``, else
    ``~/.cache/diffusion_lib/<kind>``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) / kind if root else Path.home() / ".cache" / "diffusion_lib" / kind


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` (a file, or a folder with ``folder``) can be written: its
    nearest existing folder takes a new file. ``what`` names the option in the error (e.g. "--out")."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != folder:
        want, found = ("a folder", "a file") if folder else ("a file", "a folder")
        raise ValueError(f"{what} {str(path)!r} must be {want}, but it is {found}")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{what} {str(path)!r} cannot be written: {str(parent)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise PermissionError(f"{what} {str(path)!r} cannot be written: folder {str(parent)!r} takes no new file "
                              f"({e.strerror or e})") from None
    return path


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, os.replace)."""
    state = {"format": FORMAT, "version": VERSION, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file raises naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle error, wrong file type ...
        raise CheckpointError(
            f"checkpoint file {str(path)!r} ({path.stat().st_size} bytes) cannot be read; it is truncated, "
            f"damaged or not a weights-only checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or ("model" not in state and "ema" not in state):
        raise CheckpointError(f"checkpoint file {str(path)!r} holds no 'model' or 'ema' weights")
    return state


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest step first (temporary files of interrupted writes ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints and stale temporary files; return the deleted."""
    ckpts = list_checkpoints(output_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else ckpts
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        doomed += [p for p in folder.iterdir() if p.name.startswith(".ckpt_") and p.name.endswith(".tmp")]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# ----------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Every global RNG state of this process, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------------------ model loading
def weights_key(state: dict, ema: bool, path: str | Path) -> str:
    """Which weights of a checkpoint to load: "ema" when asked for and present, else "model"."""
    which = "ema" if ema and "ema" in state else "model"
    if which not in state:
        raise CheckpointError(f"checkpoint file {str(path)!r} holds no {which!r} weights")
    return which


def _load_kind(path: str | Path, keys: tuple[str, ...], kind: str, ema: bool) -> tuple[dict, str]:
    """A checkpoint's state, checked to hold ``keys`` (else it is not a ``kind`` checkpoint), and which weights to load."""
    state = load_checkpoint(path)
    for key in keys:
        if key not in state:
            raise CheckpointError(f"checkpoint file {str(path)!r} has no {key!r}: {kind}")
    return state, weights_key(state, ema, path)


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild the UNet and NoiseSchedule of a training checkpoint, in eval mode on ``device``.

    Returns ``(model, schedule, info)``; ``info`` has ``step``, ``prediction_type``, ``num_classes``,
    ``null_label``, ``image_shape`` (C, H, W), ``config``, ``model_config``, ``weights`` ("ema" or
    "model"), ``vae`` (None for pixel-space models) and ``path``. EMA weights are used by default (they give the better samples).
    """
    from .models import UNet, UNetConfig
    from .schedules import NoiseSchedule

    ckpt, which = _load_kind(path, ("model_config", "schedule"), "not a diffusion checkpoint", ema)
    model_config = UNetConfig.from_dict(ckpt["model_config"])
    schedule = NoiseSchedule.from_dict(ckpt["schedule"])
    model = UNet(model_config, num_timesteps=schedule.num_timesteps)
    model.load_state_dict(ckpt[which])  # copies into float32 parameters even from fp16 weights
    model.to(device).eval()
    info = {
        "step": ckpt.get("step"),
        "prediction_type": ckpt.get("prediction_type", "epsilon"),
        "num_classes": model_config.num_classes,
        "null_label": getattr(model, "null_label", None),
        "image_shape": (model_config.in_channels, model_config.image_size, model_config.image_size),
        "config": ckpt.get("config", {}),
        "model_config": ckpt["model_config"],
        "weights": which,
        "vae": ckpt.get("vae"),  # latent diffusion: the VAE whose latents the model samples
        "path": str(path),
    }
    return model, schedule, info


def load_vae(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu",
             require_scale: bool = True):
    """The VAE of a checkpoint written by ``python -m diffusion_lib train`` with ``task: vae``
    (a training checkpoint or the exported ``vae.pt``), in eval mode on ``device``.

    EMA weights by default. With ``require_scale`` (the default) a checkpoint whose latent scale was
    never measured is refused: latents would silently have the wrong variance.
    """
    from .models import VAE, VAEConfig

    state, which = _load_kind(path, ("vae_config",), "it is not a VAE checkpoint (a UNet checkpoint loads with "
                              "diffusion_lib.load_model)", ema)
    vae = VAE(VAEConfig.from_dict(state["vae_config"]))
    vae.load_state_dict(state[which])  # fp16 weights are copied into float32 parameters
    if require_scale and not vae.has_latent_scale:
        raise CheckpointError(
            f"VAE checkpoint {str(path)!r} has no latent scale: it was saved before the scale was measured "
            f"(an intermediate training checkpoint). Use the run's vae.pt or final checkpoint, or measure it: "
            f"diffusion_lib.training.tasks.vae.store_latent_scale({str(path)!r}, dataset)")
    return vae.to(device).eval()


def load_classifier(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu"):
    """The Classifier of a checkpoint written with ``task: classifier`` (or its ``classifier.pt``), in eval mode."""
    from .models import Classifier, ClassifierConfig

    state, which = _load_kind(path, ("classifier_config",), "not a classifier checkpoint", ema)
    model = Classifier(ClassifierConfig.from_dict(state["classifier_config"]))
    model.load_state_dict(state[which])
    return model.to(device).eval()
