"""Training the VAE of latent diffusion with the diffusion trainer's machinery (``task: vae``).

``python -m diffusion_lib train --config configs/fashion_vae.yaml`` comes here through
:func:`diffusion_lib.training.train`. The model is a :class:`~diffusion_lib.models.VAE` built from
the preset named by ``model`` (with ``model_overrides``), the loss is the β-VAE objective
reconstruction + β·KL (``vae_beta``, :func:`~diffusion_lib.models.vae_loss`), and everything else
(AdamW, EMA, atomic checkpoints, exact resume, CSV log, progress bar) is the same
:class:`~diffusion_lib.training.Trainer` that trains the UNet.

When the last step is done, the latent scale 1 / std(z) of the EMA weights is measured on the first
:data:`SCALE_IMAGES` training images (Rombach et al. 2022, section 4.3.2) and stored in the final
checkpoint, and ``<output_dir>/vae.pt`` is written: EMA weights, the scale, and test-set reconstruction
numbers. Latent diffusion then uses ``vae: <output_dir>/vae.pt``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ... import checkpoint as ckpt_io
from ...checkpoint import load_vae
from ...data import dataset_info, load_dataset
from ...data.images import random_hflip
from ...latent import reconstruction_psnr
from ...models import VAE, VAE_PRESETS, VAEConfig, measure_latent_scale, vae_loss
from ..config import ConfigError, TrainConfig
from ..distributed import DistInfo
from ..trainer import Trainer

SCALE_IMAGES = 10_000  # training images the latent scale is measured on
TEST_IMAGES = 2_000  # test images for the reconstruction PSNR stored in vae.pt


def build_vae_config(config: TrainConfig, dataset_info=None):
    """The VAEConfig of ``model`` (a VAE preset) and ``model_overrides``, checked against the data."""
    if config.model not in VAE_PRESETS:
        raise ConfigError(f"config key 'model' must name a VAE preset when task is 'vae'; available: "
                          f"{sorted(VAE_PRESETS)}, got {config.model!r}")
    overrides = dict(config.model_overrides)
    if config.image_size is not None:
        overrides.setdefault("image_size", config.image_size)
    try:
        vae_config = VAEConfig.preset(config.model, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config keys 'model'/'model_overrides': {e}") from e
    channels = getattr(dataset_info, "channels", None)
    if channels is not None and channels != vae_config.in_channels:
        raise ConfigError(f"dataset {config.dataset!r} has {channels} channels but VAE preset {config.model!r} "
                          f"takes in_channels={vae_config.in_channels}; set model_overrides.in_channels={channels}")
    return vae_config


def vae_loss_fn(config: TrainConfig):
    """The Trainer's loss: flips from the step's rng, a posterior sample, reconstruction + β·KL."""
    def loss_fn(model, x, y, rng):
        if config.hflip:
            x = random_hflip(x, rng.rand())
        return vae_loss(x, model(x, generator=rng.generator), config.vae_beta)["loss"]

    return loss_fn


def reconstruction_sample_fn(dataset, n: int = 8):
    """Sample grids for a VAE: the first ``n`` training images (top row) over their reconstructions."""
    x = torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])

    def sample_fn(model, generator):
        images = x.to(generator.device)
        return torch.cat([images, model(images, sample_posterior=False).reconstruction.clamp(-1, 1)])

    sample_fn.nrow = len(x)
    return sample_fn


def _images(dataset, n: int) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


@torch.no_grad()
def vae_report(vae, test_images: torch.Tensor, batch_size: int = 250) -> dict:
    """Reconstruction PSNR (dB), KL per image and the latent statistics of ``test_images``."""
    vae.eval()
    dev = vae.latent_scale.device
    means, stds, kls = [], [], []
    for x in test_images.split(batch_size):
        posterior = vae.encode(x.to(dev))
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
        kls.append(posterior.kl().cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    return {"test_images": len(test_images), "psnr_db": reconstruction_psnr(vae, test_images, batch_size=batch_size),
            "kl_per_image": float(torch.cat(kls).mean()), "latent_mean": float(mean.mean()),
            "latent_std": float(mean.std()), "posterior_std_mean": float(std.mean()),
            "latent_shape": list(vae.latent_shape)}


def store_latent_scale(path: str | Path, dataset, *, num_images: int = SCALE_IMAGES, device="cpu",
                       batch_size: int = 250) -> float:
    """Measure the latent scale of a VAE checkpoint's EMA weights on ``dataset`` and write it into the
    file (atomically); returns the scale. For checkpoints saved before the scale was measured."""
    state = ckpt_io.load_checkpoint(path)
    if "vae_config" not in state:
        raise ckpt_io.CheckpointError(f"checkpoint file {str(path)!r} has no 'vae_config': not a VAE checkpoint")
    which = ckpt_io.weights_key(state, True, path)
    vae = VAE(VAEConfig.from_dict(state["vae_config"])).to(device)
    vae.load_state_dict(state[which])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(min(num_images, len(dataset)))),
                                         batch_size=batch_size)
    scale = measure_latent_scale(vae, (x.to(device) for x, _ in loader), sample=False)
    state[which]["latent_scale"] = torch.tensor(scale, dtype=state[which]["latent_scale"].dtype)
    state["latent_scale"] = scale
    for key in ("format", "version"):  # save_checkpoint writes them again
        state.pop(key, None)
    ckpt_io.save_checkpoint(path, state)
    return scale


def export_vae(checkpoint: str | Path, out: str | Path, *, report: dict | None = None) -> Path:
    """Write the slim ``vae.pt`` of a finished run: EMA weights (with the scale), config, step, report."""
    state = ckpt_io.load_checkpoint(checkpoint)
    slim = {"kind": "vae", "vae_config": state["vae_config"], "ema": state["ema"],
            "latent_scale": state.get("latent_scale"), "step": state["step"], "config": state["config"],
            "report": report or {}, "torch_version": str(torch.__version__)}
    return ckpt_io.save_checkpoint(out, slim)


def train_vae(config: TrainConfig, *, resume=False, dataset=None, dist_info=None, device=None) -> dict:
    """Train a VAE as ``config`` says (``task: vae``), then measure and store its latent scale.

    Returns the Trainer's summary plus ``latent_scale``, ``vae`` (the exported file) and ``report``.
    """
    dist_info = dist_info or DistInfo()
    info = None
    if dataset is None:
        info = dataset_info(config.dataset)
    vae_config = build_vae_config(config, info)
    if dataset is None:
        dataset = load_dataset(config.dataset, "train", root=config.data_root, image_size=vae_config.image_size,
                               **config.dataset_kwargs)
    shape = tuple(dataset[0][0].shape)
    expected = (vae_config.in_channels, vae_config.image_size, vae_config.image_size)
    if shape != expected:
        raise ConfigError(f"the dataset gives images of shape {shape} but the VAE takes {expected}; check "
                          f"'image_size' and 'model_overrides'")
    torch.manual_seed(config.seed)
    vae = VAE(vae_config)
    trainer = Trainer(config, vae, dataset, vae_loss_fn(config),
                      extra_state={"kind": "vae", "vae_config": vae_config.to_dict()},
                      sample_fn=reconstruction_sample_fn(dataset), dist_info=dist_info, device=device)
    result = trainer.fit(resume=resume)
    if not dist_info.is_main or result["checkpoint"] is None:
        return result

    out = Path(config.output_dir) / "vae.pt"
    if result["start_step"] == result["step"] and out.is_file():  # a finished run, reused: nothing new
        state = ckpt_io.load_checkpoint(out)
        return {**result, "latent_scale": state["latent_scale"], "vae": str(out), "report": state["report"]}
    final = Path(result["checkpoint"])
    scale = store_latent_scale(final, dataset, device=trainer.device)
    report = {}
    if info is not None:  # a named dataset: reconstruction numbers on its test split
        test = load_dataset(config.dataset, "test", root=config.data_root, image_size=vae_config.image_size,
                            **config.dataset_kwargs)
        report = vae_report(load_vae(final, device=trainer.device), _images(test, TEST_IMAGES))
    report["latent_scale"] = scale
    export_vae(final, out, report=report)
    return {**result, "latent_scale": scale, "vae": str(out), "report": report}

