"""The VAE, latent and guided models and the classifier of chapters 7–8: shipped, or trained here.

Like :func:`diffusion_lib.course.pretrained.load_or_train` for the pixel models: a chapter takes the shipped
model (``checkpoints/<name>.pt``, or fetched: see :mod:`diffusion_lib.course.pretrained`) when there is
one and the profile is ``cpu``, and otherwise trains the configuration below for its profile, in
``runs/<name>-<profile>-<hash>/`` (reused and resumed like any run). Every configuration goes
through ``python -m diffusion_lib train``'s code path, so what a notebook trains is what the command
line trains.

Profiles: ``smoke`` — 16×16 synthetic shapes and tiny networks (seconds); ``cpu`` — Fashion-MNIST,
short runs of the shipped recipes (a few minutes each); ``gpu`` — the data set of :func:`gpu_dataset`
(ImageNet-100 when its folder exists, else CIFAR-10), sized for minutes on a T4.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from ..checkpoint import load_checkpoint, load_classifier, load_model, load_vae
from ..data import DatasetNotFoundError, dataset_info, load_dataset
from ..profiles import check_profile, dry_run_fields
from ..training import TrainConfig, train
from ..training.config import validate_config
from .pretrained import find_checkpoint, load_pretrained, run_dir, shipped_checkpoint

_COMMON = dict(seed=0, sample_every=0, tensorboard=False, weight_decay=0.0, grad_clip=None)
_SMOKE_DATA = dict(dataset="shapes", dataset_kwargs={"num_samples": 256}, image_size=16, device="cpu",
                   num_threads=1, batch_size=16, log_every=2)
_TINY_VAE = {"in_channels": 3, "base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "latent_channels": 2,
             "num_groups": 4, "attention": False}


def gpu_dataset() -> str:
    """"imagenet100" when its folder is on disk (see data.load_dataset), else "cifar10"."""
    try:
        load_dataset("imagenet100", "train", download=False)
        return "imagenet100"
    except DatasetNotFoundError:
        return "cifar10"


def vae_config(profile: str, dataset: str | None = None) -> TrainConfig:
    """The VAE (``task: vae``) a chapter trains when no shipped ``fashion_vae`` fits its profile."""
    profile = check_profile(profile)
    if profile == "smoke":
        fields = dict(_SMOKE_DATA, task="vae", model="fashion_f4", model_overrides=_TINY_VAE, vae_beta=1e-3,
                      lr=2e-3, warmup_steps=2, ema_decay=0.9, max_steps=20)
    elif profile == "cpu":  # configs/fashion_vae.yaml, shortened
        fields = dict(task="vae", dataset="fashion_mnist", model="fashion_f4", vae_beta=1e-3, batch_size=32,
                      lr=1e-3, warmup_steps=50, ema_decay=0.995, max_steps=300, num_threads=1, device="cpu",
                      log_every=10)
    else:  # a wider fashion_f4 at the data set's size: CIFAR-10 32x32x3 -> 4x8x8, ImageNet-100 (where
        # Stable Diffusion's VAE cannot be had, see load_or_train_vae_for) 128x128x3 -> 4x32x32
        dataset = dataset or "cifar10"
        fields = dict(task="vae", dataset=dataset, image_size=dataset_info(dataset).image_size, model="fashion_f4",
                      vae_beta=1e-3,
                      model_overrides={"in_channels": 3, "base_channels": 64, "num_groups": 16},
                      batch_size=128, lr=1e-3, warmup_steps=100, ema_decay=0.999, max_steps=3000, log_every=50)
    return validate_config(TrainConfig(**dry_run_fields(profile, {**_COMMON, **fields})))


def latent_config(profile: str, vae: str | Path, *, class_conditional: bool = False,
                  dataset: str | None = None, latent_shape=None) -> TrainConfig:
    """The latent UNet (``vae: <path>``) a chapter trains when no shipped latent model fits its profile.

    ``latent_shape`` (C, h, w): the VAE's latents; the UNet's in_channels and image_size follow it.
    """
    profile = check_profile(profile)
    derived = {}  # UNet fields that follow from the VAE and the data
    if latent_shape is not None:
        derived.update(in_channels=int(latent_shape[0]), image_size=int(latent_shape[1]))
    cond = dict(class_conditional=class_conditional, p_uncond=0.1)
    if class_conditional:  # the preset's 10 classes are Fashion-MNIST's; take the data set's
        name = {"smoke": "shapes", "cpu": "fashion_mnist"}.get(profile, dataset or "cifar10")
        derived["num_classes"] = dataset_info(name).num_classes
    vae = str(vae) if vae is not None else None  # None: latents passed to the trainer as a dataset
    linear = dict(schedule="linear", num_timesteps=1000, beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")
    if profile == "smoke":
        fields = dict(_SMOKE_DATA, model="latent_small", vae=vae, schedule="linear", num_timesteps=100,
                      beta_start=1e-3, beta_end=0.2, lr=2e-3, warmup_steps=2, ema_decay=0.9, max_steps=30,
                      model_overrides={"in_channels": 2, "image_size": 8, "base_channels": 16, "num_res_blocks": 1,
                                       "num_groups": 8, "dropout": 0.0, **derived})
    elif profile == "cpu":  # configs/fashion_latent(_cfg).yaml, shortened
        fields = dict(linear, dataset="fashion_mnist", model="latent_small", vae=vae, batch_size=64, lr=1e-3,
                      warmup_steps=50, ema_decay=0.995, max_steps=400, num_threads=1, device="cpu", log_every=10,
                      model_overrides={"dropout": 0.0, **derived})
    else:
        fields = dict(linear, dataset=dataset or "cifar10", model="latent_small", vae=vae, batch_size=256,
                      lr=5e-4, warmup_steps=200, ema_decay=0.999, max_steps=10_000, log_every=100,
                      model_overrides={"channel_mult": [1, 2, 2], **derived})
    return validate_config(TrainConfig(**dry_run_fields(profile, {**_COMMON, "grad_clip": 1.0, **fields, **cond})))


def classifier_config(profile: str, dataset: str | None = None) -> TrainConfig:
    """The classifier (``task: classifier``) a chapter trains when no shipped ``fashion_classifier`` fits."""
    profile = check_profile(profile)
    if profile == "smoke":
        fields = dict(_SMOKE_DATA, task="classifier", model="classifier",
                      model_overrides={"channels": [8, 16], "dropout": 0.0}, lr=1e-2, warmup_steps=2,
                      ema_decay=0.9, max_steps=30)
    elif profile == "cpu":  # configs/fashion_classifier.yaml, shortened
        fields = dict(task="classifier", model="classifier", dataset="fashion_mnist", hflip=True,
                      model_overrides={"channels": [16, 32, 64], "dropout": 0.1}, batch_size=128, lr=2e-3,
                      warmup_steps=50, ema_decay=0.99, max_steps=500, num_threads=1, device="cpu", log_every=25)
    else:
        fields = dict(task="classifier", model="classifier", dataset=dataset or "cifar10", hflip=True,
                      batch_size=256, lr=2e-3, warmup_steps=100, ema_decay=0.999, max_steps=3000, log_every=50)
    return validate_config(TrainConfig(**dry_run_fields(profile, {**_COMMON, "weight_decay": 1e-4, **fields})))


def _run(name: str, config: TrainConfig, profile: str, output_dir, dataset=None) -> dict:
    """Train (or resume, or reuse) ``config`` in its own run folder; returns the training summary."""
    if output_dir is None:
        output_dir = (tempfile.mkdtemp(prefix=f"{name}-smoke-") if profile == "smoke"
                      else run_dir(name, config, profile))
    config = dataclasses.replace(config, output_dir=str(output_dir))
    return train(config, resume=True, dataset=dataset)


def load_or_train_vae(profile: str, config: TrainConfig | None = None, *, device="cpu", output_dir=None):
    """(VAE, path of its file, source) — the shipped ``fashion_vae`` (cpu profile) or one trained here."""
    if check_profile(profile) == "cpu" and (shipped := shipped_checkpoint("fashion_vae")) is not None:
        return load_vae(shipped, device=device), shipped, "shipped"
    summary = _run("fashion_vae", config or vae_config(profile), profile, output_dir)
    path = Path(summary["output_dir"]) / "vae.pt"
    return load_vae(path, device=device), path, "trained here"


def load_or_train_vae_for(profile: str, dataset: str, *, device="cpu", output_dir=None):
    """(VAE, path of its file or None, source): the VAE of chapters 7–8 for ``dataset``.

    ImageNet-100 (gpu profile) takes Stable Diffusion's VAE (:func:`~diffusion_lib.models.sd_vae.load_sd_vae`,
    path None). Where that cannot be had (diffusers not installed, or its weights not downloadable),
    one line says why and the course's own VAE is trained here instead, as for every other data set
    (:func:`load_or_train_vae` with :func:`vae_config`).
    """
    from ..models.sd_vae import SD_VAE_NAME, load_sd_vae

    if dataset == "imagenet100":
        try:
            vae = load_sd_vae(image_size=dataset_info(dataset).image_size, device=device)
            return vae, None, "Stable Diffusion (diffusers)"
        except (ImportError, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"Stable Diffusion's VAE ({SD_VAE_NAME}, Hugging Face Hub) could not be loaded ({reason}); "
                  f"training the course's own VAE on {dataset} instead.")
    return load_or_train_vae(profile, vae_config(profile, dataset), device=device, output_dir=output_dir)


def load_or_train_classifier(profile: str, config: TrainConfig | None = None, *, device="cpu", output_dir=None):
    """(Classifier, test accuracy, source) — the shipped ``fashion_classifier`` (cpu profile) or one trained here."""
    if check_profile(profile) == "cpu" and (shipped := shipped_checkpoint("fashion_classifier")) is not None:
        return load_classifier(shipped, device=device), load_checkpoint(shipped).get("test_accuracy"), "shipped"
    summary = _run("fashion_classifier", config or classifier_config(profile), profile, output_dir)
    path = Path(summary["output_dir"]) / "classifier.pt"
    return load_classifier(path, device=device), load_checkpoint(path).get("test_accuracy"), "trained here"


def load_or_train_latent(name: str, profile: str, config: TrainConfig, *, dataset=None, device="cpu",
                         output_dir=None):
    """The latent UNet ``name`` ("fashion_latent_ddpm" or "fashion_cfg"): the shipped one (cpu profile)
    or ``config`` trained here, on ``dataset`` (e.g. latents of Stable Diffusion's VAE) when given, else
    on the latents of ``config.vae``. Returns ``(model, schedule, info)`` as ``load_model`` does, with
    ``source``, ``name`` and ``train`` (the training summary) in ``info``."""
    if check_profile(profile) == "cpu" and shipped_checkpoint(name) is not None:
        return load_pretrained(name, device=device)
    summary = _run(name, config, profile, output_dir, dataset)
    model, schedule, info = load_model(summary["checkpoint"], device=device)
    info.update(name=name, source="trained here", card=None, train=summary)
    return model, schedule, info


def find_vae_for(info: dict, fallback=None):
    """The VAE file that decodes a latent model's samples: the path recorded at training time when it
    still exists, else ``fallback`` (e.g. the shipped ``fashion_vae``); None for pixel models."""
    if not info.get("vae"):
        return None
    recorded = Path(info["vae"])
    if recorded.is_file():
        return recorded
    return fallback if fallback is not None else find_checkpoint("fashion_vae")

