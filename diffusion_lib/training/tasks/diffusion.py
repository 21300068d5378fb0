"""The diffusion task (``task: diffusion``, the default): a UNet, the denoising loss and DDIM sample grids.

``train(config)`` comes here for diffusion models: the NoiseSchedule and UNetConfig a config
describes (checked against the data set), the data set (encoded once to VAE latents for latent
diffusion, ``vae: <file>``), the Trainer's loss (flips, label dropout, t and ε from the step's rng)
and its sample grids.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path

import torch

from ...data import dataset_info, load_dataset
from ...data.images import random_hflip
from ...latent import decode_latents, encode_dataset
from ...models import UNet, UNetConfig
from ...objective import diffusion_loss, drop_labels, flow_matching_loss
from ...pipelines.generate import sample_in_batches, sampler_options
from ...samplers import classifier_free_guidance
from ...schedules import FlowPath, NoiseSchedule
from ..config import ConfigError, TrainConfig
from ..distributed import DistInfo, barrier
from ..randomness import StepRandom
from ..trainer import Trainer


def build_schedule(config: TrainConfig):
    """The NoiseSchedule a config describes (beta_start/beta_end go to schedules that take them), or
    for ``objective: flow`` the FlowPath whose model time spans the same [0, num_timesteps − 1]."""
    if config.objective == "flow":
        return FlowPath(config.num_timesteps)
    constructor = getattr(NoiseSchedule, config.schedule, None) if not config.schedule.startswith("_") else None
    if constructor is None or config.schedule in ("from_name", "from_betas", "from_dict"):
        raise ConfigError(f"config key 'schedule' must name a NoiseSchedule constructor such as 'linear', "
                          f"'cosine' or 'sigmoid', got {config.schedule!r}")
    kwargs = dict(config.schedule_kwargs)
    for key in ("beta_start", "beta_end"):
        if getattr(config, key) is not None:
            kwargs[key] = getattr(config, key)
    accepted = set(inspect.signature(constructor).parameters) - {"num_timesteps"}
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"config key {key!r} does not apply to the {config.schedule!r} schedule, "
                              f"which takes {sorted(accepted)}")
    try:
        schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps, **kwargs)
    except (TypeError, ValueError) as e:
        given = {"num_timesteps": config.num_timesteps, **kwargs}
        raise ConfigError(f"config keys 'schedule' ({config.schedule!r}) and {given}: {e}") from e
    if config.zero_terminal_snr:
        schedule = schedule.rescale_zero_terminal_snr()
    schedule.check_prediction_type(config.prediction_type)
    return schedule


def build_model_config(config: TrainConfig, dataset_info=None):
    """The UNetConfig of a config's preset and overrides, checked against the dataset's shape.

    ``class_conditional`` sets ``num_classes`` from the dataset (unless overridden); an
    unconditional config drops the preset's classes.
    """
    overrides = dict(config.model_overrides)
    if "num_classes" not in overrides:
        if config.class_conditional:
            preset_classes = UNetConfig.preset(config.model).num_classes
            overrides["num_classes"] = preset_classes or getattr(dataset_info, "num_classes", None)
            if overrides["num_classes"] is None:
                raise ConfigError("class_conditional is true but neither the model preset nor the dataset "
                                  "gives num_classes; set model_overrides.num_classes")
        else:
            overrides["num_classes"] = None
    elif config.class_conditional and overrides["num_classes"] is None:
        raise ConfigError("class_conditional is true but model_overrides.num_classes is null")
    # In latent diffusion image_size is the images' size; the UNet's size is the latents'.
    pixel_model = config.vae is None
    if pixel_model and config.image_size is not None and "image_size" not in overrides:
        overrides["image_size"] = config.image_size
    try:
        model_config = UNetConfig.preset(config.model, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config keys 'model'/'model_overrides': {e}") from e
    if pixel_model and config.image_size is not None and model_config.image_size != config.image_size:
        raise ConfigError(f"config key 'image_size' ({config.image_size}) differs from the model's "
                          f"image_size ({model_config.image_size})")
    channels = getattr(dataset_info, "channels", None)
    if pixel_model and channels is not None and channels != model_config.in_channels:
        raise ConfigError(
            f"dataset {config.dataset!r} has {channels} channels but model {config.model!r} takes "
            f"in_channels={model_config.in_channels}; set model_overrides.in_channels={channels} "
            f"or choose another model preset")
    classes = getattr(dataset_info, "num_classes", None)
    if config.class_conditional and classes is not None and classes > model_config.num_classes:
        raise ConfigError(f"dataset {config.dataset!r} has {classes} classes but the model has "
                          f"num_classes={model_config.num_classes}: labels would be out of range")
    return model_config


def _check_item_shape(dataset, expected: tuple[int, ...], what: str) -> None:
    x = dataset[0][0]
    if tuple(x.shape) != expected:
        raise ConfigError(f"{what} gives images of shape {tuple(x.shape)} but the model takes {expected} "
                          f"(channels, image_size, image_size); check 'image_size' and 'model_overrides'")


def diffusion_loss_fn(schedule, config: TrainConfig, null_label: int | None) -> Callable:
    """The Trainer's loss for a diffusion model: flips, label dropout, t and ε from the step's rng."""

    def loss_fn(model, x0, y, rng: StepRandom):
        if config.hflip:
            x0 = random_hflip(x0, rng.rand())
        if config.class_conditional:
            y = drop_labels(y, config.p_uncond, null_label, rng.rand())
        else:
            y = None
        if config.objective == "flow":
            t = rng.rand() if config.flow_time_sampling == "uniform" else torch.sigmoid(rng.randn())
            return flow_matching_loss(model, schedule, x0, y, t=t, noise=rng.randn_like(x0))
        t = rng.randint(schedule.num_timesteps)
        noise = rng.randn_like(x0)
        return diffusion_loss(model, schedule, x0, y, prediction_type=config.prediction_type,
                              min_snr_gamma=config.min_snr_gamma, t=t, noise=noise)

    return loss_fn


def diffusion_sample_fn(schedule, config: TrainConfig, model_config) -> Callable:
    """Sample grids with DDIM (``sample_steps`` steps; Euler for a flow model) from the EMA model, one row
    per class if conditional; a latent model's samples are decoded by its VAE."""

    def sample_fn(model, generator):
        n = config.sample_n
        shape = (model_config.in_channels, model_config.image_size, model_config.image_size)
        labels = None
        if model_config.num_classes:
            labels = torch.arange(n) % model_config.num_classes
            if config.sample_guidance_scale != 1.0:
                model = classifier_free_guidance(model, config.sample_guidance_scale, model_config.num_classes)
        decode = None
        if config.vae is not None:  # latent diffusion: show the decoded images, not the latents
            decode = functools.partial(decode_latents, vae=config.vae, device=generator.device)
        sampler = "flow_euler" if config.objective == "flow" else "ddim"
        options = sampler_options(sampler, steps=config.sample_steps, prediction_type=config.prediction_type)
        return sample_in_batches(model, schedule, sampler, shape=shape, n=n, labels=labels, batch_size=n,
                                 generator=generator, decode=decode, **options)

    sample_fn.nrow = model_config.num_classes  # a conditional grid has one class per column
    return sample_fn


def train_diffusion(config: TrainConfig, *, resume: bool | str | Path = False, dataset=None,
                    model: torch.nn.Module | None = None, extra_state: dict | None = None,
                    dist_info: DistInfo | None = None, device: torch.device | None = None) -> dict:
    """Train a diffusion model as ``config`` says; returns the Trainer's summary.

    ``dataset`` replaces the config's named dataset (e.g. cached VAE latents), ``model`` the UNet
    built from the preset; ``extra_state`` is stored in every checkpoint.
    """
    dist_info = dist_info or DistInfo()
    schedule = build_schedule(config)
    info = None
    if dataset is None:
        info = dataset_info(config.dataset)
    if model is None:
        model_config = build_model_config(config, info)
    else:
        model_config = model.config
    image_shape = (model_config.in_channels, model_config.image_size, model_config.image_size)
    if dataset is None:
        if not dist_info.is_main:
            barrier(dist_info)  # rank 0 downloads (or encodes) first, the others then read its files
        dataset = load_dataset(config.dataset, "train", root=config.data_root,
                               image_size=config.image_size if config.vae else model_config.image_size,
                               **config.dataset_kwargs)
        if config.vae is not None:
            dataset = encode_dataset(dataset, config.vae, device=device)  # Rombach et al. 2022
        if dist_info.is_main:
            barrier(dist_info)
        what = f"dataset {config.dataset!r}" + (" (encoded by the VAE)" if config.vae else "")
    else:
        what = "the given dataset"
    _check_item_shape(dataset, image_shape, what)
    if model is None:
        torch.manual_seed(config.seed)  # the same initial weights on every process
        model = UNet(model_config, num_timesteps=schedule.num_timesteps)
    null_label = model_config.num_classes
    if config.objective == "flow":
        path_state = {"objective": "flow", "flow_path": schedule.to_dict()}
    else:
        path_state = {"schedule": schedule.to_dict(), "prediction_type": config.prediction_type}
    state = {"model_config": model_config.to_dict(), **path_state, "vae": config.vae,
             "vae_sha256": getattr(dataset, "vae_sha256", None), **(extra_state or {})}
    trainer = Trainer(config, model, dataset, diffusion_loss_fn(schedule, config, null_label),
                      extra_state=state, sample_fn=diffusion_sample_fn(schedule, config, model_config),
                      dist_info=dist_info, device=device)
    return trainer.fit(resume=resume)
