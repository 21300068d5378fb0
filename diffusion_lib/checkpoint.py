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

Every file :func:`save_checkpoint` writes carries its own sha256 (in the zip archive's comment), and
every load verifies the file first (:func:`verify_checkpoint_file`; files written before have the CRC-32
of each part of the archive, shipped models the sha256 on their model card). A flipped bit is refused
with an error that names the file. A training run holds :func:`run_lock` on its folder, so two runs never write the same
checkpoints, temporary files or log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import socket
import tempfile
import threading
import time
import warnings
import zipfile
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
    """A checkpoint file that is missing, truncated, damaged or not one of ours; the message names the file."""


class RunLockedError(FileExistsError):
    """The run folder is in use by another training run (:func:`run_lock`); the message names the folder."""


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


_DIGEST_TAG = b"diffusion_lib sha256 "  # the zip comment that carries the file's digest
_COMMENT_LEN = len(_DIGEST_TAG) + 64
_END_RECORD = 22  # a zip file's end-of-central-directory record, up to its comment


class _HashingWriter:
    """A write-only file that hashes what passes through it (``torch.save`` only writes)."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _save_with_digest(state: dict, f: BinaryIO) -> None:
    # torch.save ends the archive with an empty zip comment (its last 2 bytes give its length, 0); the
    # comment becomes the sha256 of everything torch wrote, so the digest travels inside the file.
    writer = _HashingWriter(f)
    torch.save(state, writer)
    comment = _DIGEST_TAG + writer.sha256.hexdigest().encode()
    f.seek(-2, os.SEEK_END)
    f.write(len(comment).to_bytes(2, "little") + comment)


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, os.replace), with the
    sha256 of the file inside it and the CRC-32 of every part, which :func:`verify_checkpoint_file` checks."""
    state = {"format": FORMAT, "version": VERSION, **state}
    crc32 = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)  # the default; a file written without CRCs could not be verified
    try:
        return atomic_write(path, lambda f: _save_with_digest(state, f))
    finally:
        torch.serialization.set_crc32_options(crc32)


def _embedded_digest(path: Path) -> tuple[str, str] | None:
    """(stored, actual) sha256 of a file written by :func:`save_checkpoint`; None for a file without one."""
    size = path.stat().st_size
    start = size - _COMMENT_LEN - _END_RECORD
    if start < 0:
        return None
    with open(path, "rb") as f:
        f.seek(start)
        tail = f.read()
        ours = tail[:4] == b"PK\x05\x06" and tail[20:22] == _COMMENT_LEN.to_bytes(2, "little")
        if not ours and _DIGEST_TAG not in tail:
            return None
        if not (ours and tail[_END_RECORD:].startswith(_DIGEST_TAG)):
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: the record of its sha256 at the end of "
                                  f"the file has changed bytes; copy or download it again")
        stored = tail[_END_RECORD + len(_DIGEST_TAG):].decode("ascii", "replace")
        digest, left = hashlib.sha256(), size - _COMMENT_LEN - 2
        f.seek(0)
        while left > 0:
            block = f.read(min(left, 1 << 20))
            digest.update(block)
            left -= len(block)
        digest.update(b"\x00\x00")  # the empty comment's length, as torch.save wrote it
    return stored, digest.hexdigest()


def verify_checkpoint_file(path: str | Path) -> Path:
    """Raise :class:`CheckpointError` naming ``path`` unless its bytes are intact: where a model card beside
    it (``<name>.json``, shipped models) records a ``sha256``, the file must have it; else a file written
    by :func:`save_checkpoint` must have the sha256 stored inside it, and an older one must match the
    CRC-32 of every part of its zip archive. Files of another format are left to ``torch.load``."""
    path = Path(path)
    card = path.with_suffix(".json")
    if card.is_file():
        try:
            expected = json.loads(card.read_text()).get("sha256")
        except (ValueError, AttributeError):
            expected = None  # not a model card
        if isinstance(expected, str):
            if (actual := file_digest(path)) != expected:
                raise CheckpointError(f"checkpoint file {str(path)!r} has sha256 {actual}, but its model card "
                                      f"{str(card)!r} records {expected}: the file is damaged (copy or download "
                                      f"it again) or the card belongs to another file")
            return path
    embedded = _embedded_digest(path)
    if embedded is not None:
        if embedded[0] != embedded[1]:
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: its bytes have sha256 {embedded[1]}, "
                                  f"but the file records {embedded[0]}; copy or download it again, or resume from "
                                  f"an earlier checkpoint")
        return path
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every part and compares its CRC-32
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged ({e}); copy or download it "
                                  f"again") from e
        if bad is not None:
            raise CheckpointError(f"checkpoint file {str(path)!r} is damaged: its part {bad!r} fails its CRC-32 "
                                  f"check (changed bytes); copy or download it again, or resume from an earlier "
                                  f"checkpoint")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` after :func:`verify_checkpoint_file`; a missing or
    damaged file raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    verify_checkpoint_file(path)
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
    """Delete all but the newest ``keep_last`` checkpoints and stale temporary files; return the deleted.

    The caller holds the run's :func:`run_lock`, so no other run's temporary file is in this folder."""
    ckpts = list_checkpoints(output_dir)
    doomed = ckpts[:-keep_last] if keep_last > 0 else ckpts
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        doomed += [p for p in folder.iterdir() if p.name.startswith(".ckpt_") and p.name.endswith(".tmp")]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


# ----------------------------------------------------------------------------------------- run lock
LOCK_NAME = ".lock"
_HELD: dict[tuple[str, int], int] = {}  # (run folder, thread) -> depth: a holder may take it again


@contextlib.contextmanager
def run_lock(folder: str | Path, *, wait: bool = False):
    """Hold the exclusive lock of the run folder ``folder`` (created if needed) while the block runs.

    Every training run takes it (``training.train``, ``Trainer.fit``), from the command line as from a
    notebook: a second run on the same folder raises :class:`RunLockedError` at once (``wait=False``) or
    waits until the first has finished (``wait=True``, what notebooks that share a run want). The lock
    is ``flock`` on ``<folder>/.lock``, released by the system when the process dies; the thread that
    holds it may take it again. Without ``fcntl`` (Windows) nothing is locked; on a file system that
    refuses ``flock`` (some network folders) nothing is locked either, with a warning.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = (str(folder.resolve()), threading.get_ident())
        if key not in _HELD:
            handle = open(folder / LOCK_NAME, "a+")
    except OSError as e:
        raise ValueError(f"output_dir {str(folder)!r} cannot be created or written ({e.strerror or e}); choose "
                         f"a folder you can write to") from e
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    with handle:
        try:
            import fcntl
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except ImportError:
            pass
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLockedError(f"output_dir {str(folder)!r} is in use by another training run ({holder}); "
                                 f"wait for it to finish, or choose another output_dir") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            warnings.warn(f"{folder} cannot be locked ({e.strerror}): make sure no other run uses it", stacklevel=3)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]  # closing the file releases the lock


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


def _require_keys(state: dict, path: str | Path, keys: tuple[str, ...], kind: str) -> None:
    for key in keys:
        if key not in state:
            raise CheckpointError(f"checkpoint file {str(path)!r} has no {key!r}: {kind}")


def _load_kind(path: str | Path, keys: tuple[str, ...], kind: str, ema: bool) -> tuple[dict, str]:
    """A checkpoint's state, checked to hold ``keys`` (else it is not a ``kind`` checkpoint), and which weights to load."""
    state = load_checkpoint(path)
    _require_keys(state, path, keys, kind)
    return state, weights_key(state, ema, path)


def load_model(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"
               ) -> tuple[torch.nn.Module, Any, dict]:
    """Rebuild the UNet and NoiseSchedule (FlowPath for flow matching) of a training checkpoint, in eval mode
    on ``device``.

    Returns ``(model, schedule, info)``; ``info`` has ``objective`` ("diffusion", or "flow" for a
    flow-matching checkpoint, whose ``schedule`` slot then holds its :class:`~diffusion_lib.schedules.FlowPath`
    and whose ``prediction_type`` is "velocity"), ``step``, ``prediction_type``, ``num_classes``,
    ``null_label``, ``image_shape`` (C, H, W), ``config``, ``model_config``, ``weights`` ("ema" or
    "model"), ``vae`` (None for pixel-space models; the VAE file named at training time), ``vae_sha256``
    (that file's sha256), ``vae_name`` (the shipped VAE with that file, when known) and ``path``. EMA
    weights are used by default (they give the better samples).
    """
    from .models import UNet, UNetConfig
    from .schedules import FlowPath, NoiseSchedule

    ckpt, which = _load_kind(path, ("model_config",), "not a diffusion checkpoint", ema)
    objective = ckpt.get("objective", "diffusion")
    if objective == "flow":
        _require_keys(ckpt, path, ("flow_path",), "a flow-matching checkpoint without its path")
        schedule = FlowPath.from_dict(ckpt["flow_path"])
        prediction_type = "velocity"
    elif objective == "diffusion":
        _require_keys(ckpt, path, ("schedule",), "not a diffusion checkpoint")
        schedule = NoiseSchedule.from_dict(ckpt["schedule"])
        prediction_type = ckpt.get("prediction_type", "epsilon")
    else:
        raise CheckpointError(f"checkpoint file {str(path)!r} has objective {objective!r}; this version of "
                              f"diffusion_lib loads 'diffusion' and 'flow'")
    model_config = UNetConfig.from_dict(ckpt["model_config"])
    model = UNet(model_config, num_timesteps=schedule.num_timesteps)
    model.load_state_dict(ckpt[which])  # copies into float32 parameters even from fp16 weights
    model.to(device).eval()
    info = {
        "objective": objective,
        "step": ckpt.get("step"),
        "prediction_type": prediction_type,
        "num_classes": model_config.num_classes,
        "null_label": getattr(model, "null_label", None),
        "image_shape": (model_config.in_channels, model_config.image_size, model_config.image_size),
        "config": ckpt.get("config", {}),
        "model_config": ckpt["model_config"],
        "weights": which,
        "vae": ckpt.get("vae"),  # latent diffusion: the VAE file given at training time, and
        "vae_sha256": ckpt.get("vae_sha256"),  # its sha256, and the shipped model with that file
        "vae_name": ckpt.get("vae_name"),
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
