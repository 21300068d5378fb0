"""Trained models for the book: where the notebooks find them, and "load it, or train it here".

The course ships small models trained with ``python -m diffusion_lib train`` (EMA weights only,
possibly stored in fp16), each as ``<name>.pt`` with a model card ``<name>.json`` beside it
(command, config, steps, wall time, hardware, seed, sha256, measured FID). The names the book uses
are in :data:`NAMES`; the manifest ``shipped_models.json`` inside the package (:func:`manifest`,
written by ``scripts/ship_model.py``) gives each one's file, size and sha256, and its card's.
:func:`find_checkpoint` looks for ``<name>.pt`` in these folders, in order:

1. ``$DIFFUSION_CHECKPOINTS`` (a folder you choose, e.g. on Google Drive in Colab);
2. ``checkpoints/`` of the repository, next to the ``diffusion_lib/`` package folder (a clone, or
   an editable install ``pip install -e .``);
3. ``~/.cache/diffusion_lib/checkpoints`` (:func:`cache_dir`).

The first file found wins, and a shipped name's file must have the manifest's sha256 (a damaged
file is refused; one in the cache is fetched again). When none is found, :func:`fetch_checkpoint`
downloads the file and its card into the cache from :func:`checkpoints_url` (the repository's
``checkpoints/`` on GitHub, or ``$DIFFUSION_CHECKPOINTS_URL``), as a regular pip install (Colab)
has no ``checkpoints/`` folder. The command line takes a shipped name wherever it takes a checkpoint
file (:func:`resolve_checkpoint`), and finds a latent model's VAE the same way, by the sha256 its
checkpoint records (:func:`resolve_vae`). A notebook calls :func:`load_or_train`: the shipped model when
there is one (never in the ``smoke`` profile, whose outputs must not depend on downloaded files),
otherwise, and after one line saying why when the download failed, a model trained in the notebook
with :func:`notebook_config`'s configuration for the profile. Such
a run lives in ``runs/<name>-<profile>-<hash of its config>/`` below the working folder (the smoke
profile uses a fresh temporary folder), so a second notebook with the same configuration reuses a
finished run instead of training again, and an interrupted one resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import download
from ..checkpoint import atomic_write, cache_dir as _cache_dir, file_digest, latest_checkpoint, load_model, run_lock
from ..profiles import check_profile, dry_run_cap, dry_run_fields
from ..training.config import TrainConfig, config_to_dict, validate_config
from . import repository

CHECKPOINTS_ENV = "DIFFUSION_CHECKPOINTS"
CHECKPOINTS_URL_ENV = "DIFFUSION_CHECKPOINTS_URL"
#: The shipped models' manifest, package data (pyproject.toml), so that every install has it.
MANIFEST = Path(__file__).with_name("shipped_models.json")

#: The shipped models the chapters look for.
NAMES = ("fashion_ddpm_linear", "fashion_ddpm_cosine", "fashion_vae", "fashion_latent_ddpm", "fashion_cfg",
         "fashion_classifier", "fashion_ddpm_cpu", "fashion_flow")


def checkpoint_dirs() -> list[Path]:
    """The folders :func:`find_checkpoint` searches, in order (they need not exist)."""
    dirs = []
    env = os.environ.get(CHECKPOINTS_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path(__file__).resolve().parents[2] / "checkpoints")  # the repository's folder
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    """Where :func:`fetch_checkpoint` puts downloaded models: ``~/.cache/diffusion_lib/checkpoints``
    (``$DIFFUSION_CACHE/checkpoints`` when that is set)."""
    return _cache_dir("checkpoints")


@functools.lru_cache(maxsize=1)
def manifest() -> dict[str, dict]:
    """name -> ``{"file", "size", "sha256", "card": {"file", "size", "sha256"}}`` for every shipped
    model (:data:`MANIFEST`). Each file is fetched from ``checkpoints_url() + file``."""
    return json.loads(MANIFEST.read_text())


def build_manifest(folder: str | Path) -> dict[str, dict]:
    """The manifest of the models in ``folder``: every ``<name>.pt`` with its card ``<name>.json``."""
    def entry(path: Path) -> dict:
        return {"file": path.name, "size": path.stat().st_size, "sha256": file_digest(path)}

    return {path.stem: {**entry(path), "card": entry(path.with_suffix(".json"))}
            for path in sorted(Path(folder).glob("*.pt")) if path.with_suffix(".json").is_file()}


def write_manifest(folder: str | Path, out: str | Path = MANIFEST) -> Path:
    """Write :func:`build_manifest` of ``folder`` to ``out`` atomically (``scripts/ship_model.py``)."""
    text = json.dumps(build_manifest(folder), indent=1) + "\n"
    atomic_write(out, lambda f: f.write(text.encode()))
    manifest.cache_clear()
    return Path(out)


def checkpoints_url() -> str:
    """The folder URL the shipped models are fetched from (ending in "/"): ``$DIFFUSION_CHECKPOINTS_URL``,
    else the raw files of the repository's ``checkpoints/`` (:func:`diffusion_lib.course.repository.raw_url`)."""
    url = os.environ.get(CHECKPOINTS_URL_ENV, "").strip() or repository.raw_url("checkpoints/")
    return url if url.endswith("/") else url + "/"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.endswith(".pt"):
        raise ValueError(f"name must be a checkpoint name without folder or '.pt', such as "
                         f"{NAMES[0]!r}; got {name!r}")
    return name


def find_checkpoint(name: str) -> Path | None:
    """The first ``<name>.pt`` in :func:`checkpoint_dirs`, or None when there is none (nothing is fetched).

    A shipped name's file must have the manifest's sha256. In the cache a file that has not is
    skipped (a damaged or older download, which :func:`fetch_checkpoint` replaces); elsewhere it is
    accepted only when its own card records its sha256 (a model shipped after this package's
    manifest, e.g. one just trained by ``make gpu-checkpoints``), else
    :class:`~diffusion_lib.download.ChecksumError` names the file and both hashes.
    """
    _check_name(name)
    shipped = manifest().get(name)
    for folder in checkpoint_dirs():
        path = folder / f"{name}.pt"
        if not path.is_file():
            continue
        if shipped is not None and (actual := download.sha256_of(path)) != shipped["sha256"]:
            if folder == cache_dir():
                continue
            if (read_card(path) or {}).get("sha256") != actual:
                raise download.ChecksumError(
                    f"{path} has sha256 {actual}, but the shipped model {name} has {shipped['sha256']} (and no "
                    f"model card beside it records {actual[:12]}...): a damaged copy (delete it, and the shipped "
                    f"model is fetched) or another model saved under that name (rename it)")
        return path
    return None


def fetch_checkpoint(name: str, *, progress: bool = True) -> Path:
    """Download the shipped model ``name`` and its card into :func:`cache_dir` from
    :func:`checkpoints_url`, each checked against the manifest's sha256; return the model's path.

    Raises :class:`~diffusion_lib.download.DownloadError` (no network, timeout, HTTP error) or
    :class:`~diffusion_lib.download.ChecksumError` (a wrong file, not kept).
    """
    _check_name(name)
    if name not in manifest():
        raise ValueError(f"name must be a shipped model ({', '.join(manifest())}) to be fetched; got {name!r}")

    def fetch(item: dict) -> Path:
        return download.fetch(checkpoints_url() + item["file"], cache_dir() / item["file"], sha256=item["sha256"],
                              size=item["size"], progress=progress)

    path = fetch(manifest()[name])
    try:
        fetch(manifest()[name]["card"])
    except BaseException:
        path.unlink(missing_ok=True)  # the cache never holds a model without its card
        raise
    return path


def shipped_checkpoint(name: str) -> Path | None:
    """The file of the shipped model ``name``: :func:`find_checkpoint`'s, else fetched. None when it
    cannot be had; after a failed download, one line on stderr says why."""
    path = find_checkpoint(name)
    if path is not None or name not in manifest():
        return path
    try:
        return fetch_checkpoint(name)
    except (download.DownloadError, download.ChecksumError) as e:
        print(f"The shipped model {name} could not be fetched ({e}); using a model trained here instead.",
              file=sys.stderr)
        return None


def resolve_checkpoint(checkpoint: str | Path, *, progress: bool = True) -> Path:
    """A checkpoint given as a file, or as the name of a shipped model (:func:`find_checkpoint`, else
    fetched); ``FileNotFoundError`` when it is neither."""
    path = Path(checkpoint)
    if path.is_file():
        return path
    if str(checkpoint) in manifest():
        return _shipped_file(str(checkpoint), progress=progress)
    raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} is neither a file nor a shipped model "
                            f"({', '.join(manifest())})")


def _shipped_file(name: str, *, progress: bool = True, needed_by: str = "") -> Path:
    """The shipped model ``name``: found locally, else fetched; a failed download raises FileNotFoundError
    saying where to put the file."""
    path = find_checkpoint(name)
    if path is not None:
        return path
    try:
        return fetch_checkpoint(name, progress=progress)
    except download.DownloadError as e:
        folders = ", ".join(str(d) for d in checkpoint_dirs())
        raise FileNotFoundError(f"the shipped model {name}{needed_by} is not on this machine and could not be "
                                f"fetched ({e}); put {manifest()[name]['file']} in one of {folders}") from e


def resolve_vae(info: dict, vae: str | Path | None = None, *, progress: bool = True) -> Path | None:
    """The VAE file that decodes the samples of the latent model described by ``info`` (``load_model``'s),
    checked before any sampling; None for a pixel-space model.

    ``vae`` (a file or a shipped model's name) overrides; it must be the file the model was trained with
    (its sha256 is ``info["vae_sha256"]``), else ``ValueError``. Without it: the shipped model the
    checkpoint names (``vae_name``) or the shipped model whose file has that sha256, found like every
    shipped model (:func:`find_checkpoint`, else fetched); else the file recorded at training time,
    when it is still there with that sha256. ``FileNotFoundError`` when there is none.
    """
    from ..latent import check_vae_file

    expected = info.get("vae_sha256")
    if not info.get("vae") and not expected:
        if vae is not None:
            raise ValueError(f"vae: {info.get('path')} is a pixel-space model, which takes no VAE; got {str(vae)!r}")
        return None
    needed_by = f" (the VAE of {info.get('path')})"
    if vae is not None:
        path = Path(vae)
        if not path.is_file():
            if str(vae) not in manifest():
                raise FileNotFoundError(f"vae {str(vae)!r} is neither a file nor a shipped model "
                                        f"({', '.join(manifest())})")
            path = _shipped_file(str(vae), progress=progress, needed_by=needed_by)
        return check_vae_file(path, info)
    names = [name for name, entry in manifest().items() if entry["sha256"] == expected]
    names.sort(key=lambda name: name != info.get("vae_name"))  # the name the checkpoint records first
    if names:
        return _shipped_file(names[0], progress=progress, needed_by=needed_by)
    recorded = Path(info["vae"]) if info.get("vae") else None
    if recorded is not None and recorded.is_file():
        return check_vae_file(recorded, info)
    raise FileNotFoundError(
        f"{info.get('path')} is a latent-diffusion model: its samples are decoded by the VAE file with sha256 "
        f"{expected}, which was {str(recorded)!r} at training time and is not there, and no shipped model has "
        f"that sha256; pass the VAE file (--vae FILE, or vae=)")


def read_card(checkpoint: str | Path) -> dict | None:
    """The model card (the JSON file beside a checkpoint, same name), or None when there is none."""
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def load_pretrained(name: str, device: str | torch.device = "cpu", *, progress: bool = True
                    ) -> tuple[torch.nn.Module, Any, dict]:
    """Load the shipped diffusion model ``name``: ``(model, schedule, info)``, the model in float32
    eval mode on ``device``.

    ``info`` is :func:`~diffusion_lib.checkpoint.load_model`'s, plus ``card`` (the model card, or
    None), ``name`` and ``source`` ("shipped"). A shipped name not found locally is fetched
    (:func:`fetch_checkpoint`, with a progress bar unless ``progress`` is False; its errors pass
    through). Another name not found raises ``FileNotFoundError`` listing the folders searched.
    """
    path = find_checkpoint(name)
    if path is None and name in manifest():
        path = fetch_checkpoint(name, progress=progress)
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
# Chapter 11 compares a DDPM and a flow-matching model trained alike: the same recipe, once with the
# diffusion objective and once with objective flow (configs/fashion_cpu.yaml and fashion_flow_cpu.yaml
# at full size). The DDPM of the pair has its own name, as the shipped fashion_ddpm_linear was trained
# at another budget (on a GPU).
_NOTEBOOK_CONFIGS["fashion_ddpm_cpu"] = dict(_NOTEBOOK_CONFIGS["fashion_ddpm_linear"])
_NOTEBOOK_CONFIGS["fashion_flow"] = {profile: {**fields, "objective": "flow", "flow_time_sampling": "uniform"}
                                     for profile, fields in _NOTEBOOK_CONFIGS["fashion_ddpm_linear"].items()}


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
    with run_lock(output_dir, wait=True):  # two notebooks sharing a run: the second waits, then reuses it
        summary = train(config, resume=True)
    checkpoint = summary["checkpoint"] or latest_checkpoint(config.output_dir)
    model, schedule, info = load_model(checkpoint, ema=True, device=device or "cpu")
    info.update(name=name, source="trained here", card=None, output_dir=str(output_dir),
                log=str(Path(output_dir) / "log.csv"), train=summary)
    return model, schedule, info


def load_or_train(name: str, config: TrainConfig, *, profile: str, device: str | torch.device | None = None,
                  output_dir: str | Path | None = None, progress: bool = True) -> tuple[torch.nn.Module, Any, dict]:
    """The shipped model ``name`` when ``profile`` is not "smoke" (nor a dry run of the gpu profile,
    which checks the gpu training branch) and :func:`shipped_checkpoint` finds or fetches it;
    otherwise :func:`train_here` with ``config``. ``info["source"]`` says which."""
    if (check_profile(profile) != "smoke" and dry_run_cap(profile) is None
            and shipped_checkpoint(name) is not None):
        return load_pretrained(name, device=device or "cpu")
    return train_here(name, config, profile=profile, device=device, output_dir=output_dir, progress=progress)


def describe(info: dict) -> str:
    """One line naming where a model from :func:`load_or_train` comes from, for figure captions."""
    if info.get("source") == "shipped":
        steps = (info.get("card") or {}).get("steps", info.get("step"))
        return f"the shipped model {info['name']}" + (f" ({steps:,} training steps)" if steps else "")
    return f"the model trained in this notebook ({info.get('step'):,} steps)"
