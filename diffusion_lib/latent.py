"""Latent diffusion (Rombach et al. 2022): images to scaled latents (cached) and back, and the UNet that takes them.

The diffusion model of latent diffusion never sees pixels. A trained VAE maps each image to the
mean of its posterior, times the latent scale (1 / std of the training latents, 0.18215 for Stable
Diffusion's VAE), once; the UNet trains on those latents; samples are latents, which the decoder
turns into images:

    x0 ──encode, × scale──▶ z0 ──diffusion (train / sample)──▶ z0 ──÷ scale, decode──▶ x0

:func:`encode_dataset` caches the latents of a dataset in one file keyed by the VAE file's sha256 and
a fingerprint of the images, so a second run (or the notebook after the command line) reads them
back in a second. We cache the posterior *mean*: the cache is then deterministic, and the posterior
std of a VAE trained with a small β is a small fraction of the latents' spread (the VAE chapter
measures it). The scale is measured the same way (``measure_latent_scale(..., sample=False)``).

Stable Diffusion's VAE (diffusers' ``AutoencoderKL``, f = 8, 4 channels) works through the same
interface via :func:`~diffusion_lib.models.sd_vae.load_sd_vae`, online only (Colab); nothing here needs it.
VAE files load with :func:`~diffusion_lib.checkpoint.load_vae` (both are importable from here too).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_write, file_digest, load_vae
from .checkpoint import cache_dir as checkpoint_cache_dir
from .data.datasets import ImageFolderDataset, ImageTensorDataset
from .data.images import count_images, iter_batches, to_float
from .models.sd_vae import StableDiffusionVAE, load_sd_vae

CACHE_VERSION = 1

__all__ = ["LatentDataset", "StableDiffusionVAE", "check_latent_shape", "decode_latents", "encode_dataset",
           "file_sha256", "latent_unet_config", "load_sd_vae", "load_vae", "reconstruction_psnr"]


# --------------------------------------------------------------------------------- VAE files
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the key of cached latents, and the model cards' checksum)."""
    return file_digest(path, "sha256")


def _resolve_vae(vae, device=None):
    """(VAE-like module, sha256 or None): a path is loaded (and hashed), a module passes through."""
    if isinstance(vae, (str, Path)):
        return load_vae(vae, device=device or "cpu"), file_sha256(vae)
    if not (hasattr(vae, "encode_scaled") and hasattr(vae, "decode_scaled")):
        raise TypeError(f"vae must be a VAE checkpoint path or a module with encode_scaled/decode_scaled, "
                        f"got {type(vae).__name__}")
    return vae, None


def _module_sha256(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and values): the key of an in-memory VAE."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim: a scale
    return h.hexdigest()


# ------------------------------------------------------------------------------ UNet <-> VAE
def _latent_shape(vae_or_shape) -> tuple[int, int, int]:
    shape = getattr(vae_or_shape, "latent_shape", vae_or_shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"a latent shape is (channels, height, width), got {shape}")
    return shape


def latent_unet_config(vae_or_shape, preset: str = "latent_small", **overrides):
    """The UNetConfig of ``preset`` with in_channels and image_size taken from the VAE's latents.

    ``vae_or_shape``: a VAE (ours or :class:`StableDiffusionVAE`) or a (C, h, w) latent shape; e.g.
    Stable Diffusion's VAE on 128×128 images gives 4×16×16 latents, the report's f = 4 VAE 3×32×32.
    """
    from .models import UNetConfig

    c, h, w = _latent_shape(vae_or_shape)
    if h != w:
        raise ValueError(f"the UNet takes square inputs; the latents are {h}x{w}")
    return UNetConfig.preset(preset, **{"in_channels": c, "image_size": h, **overrides})


def check_latent_shape(model_config, vae_or_shape) -> None:
    """Raise ValueError unless a UNet built from ``model_config`` takes the VAE's latents."""
    c, h, w = _latent_shape(vae_or_shape)
    takes = (model_config.in_channels, model_config.image_size, model_config.image_size)
    if takes != (c, h, w):
        raise ValueError(f"the UNet takes {takes} inputs but the VAE makes latents of shape {(c, h, w)}; "
                         f"build the UNet with latent_unet_config(vae) (in_channels={c}, image_size={h})")


# --------------------------------------------------------------------------- cached latents
class LatentDataset(Dataset):
    """Scaled VAE latents (N, C, h, w) float32 with labels: items (latent, int label), like an image dataset."""

    def __init__(self, latents: torch.Tensor, labels: torch.Tensor, *, latent_scale: float,
                 vae_sha256: str | None = None, class_names=()):
        if latents.ndim != 4 or not latents.is_floating_point():
            raise ValueError(f"latents must be a float (N, C, h, w) tensor, got {latents.dtype} {tuple(latents.shape)}")
        if labels.shape != (latents.shape[0],):
            raise ValueError(f"{latents.shape[0]} latents but labels of shape {tuple(labels.shape)}")
        self.latents = latents
        self.labels = labels.long()
        self.latent_scale = float(latent_scale)
        self.vae_sha256 = vae_sha256
        self.class_names = tuple(class_names)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[1:])

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i):
        return self.latents[i], int(self.labels[i])


def dataset_fingerprint(dataset) -> str | None:
    """A sha256 identifying a dataset's images and labels, or None when it cannot be computed cheaply.

    In-memory images (Fashion-MNIST, CIFAR-10, shapes) hash their bytes; an image folder hashes its
    file names, sizes, modification times and the image size.
    """
    h = hashlib.sha256()
    if isinstance(dataset, ImageTensorDataset):
        h.update(f"images{tuple(dataset.images.shape)}".encode())
        h.update(dataset.images.contiguous().numpy().tobytes())
        h.update(dataset.labels.contiguous().numpy().tobytes())
    elif isinstance(dataset, ImageFolderDataset):
        h.update(f"folder{dataset.image_size}".encode())
        for f, label in zip(dataset.files, dataset.labels.tolist()):
            st = os.stat(f)
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    else:
        return None
    return h.hexdigest()


@torch.inference_mode()
def encode_images(vae, images, *, batch_size: int = 256, device=None, progress: bool = False) -> torch.Tensor:
    """Scaled posterior-mean latents of ``images`` ((N, C, H, W) in [-1, 1], or an iterable of
    batches or (images, labels) pairs), as one float32 CPU tensor."""
    vae, _ = _resolve_vae(vae, device)
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    out = []
    try:
        with tqdm(total=count_images(images), unit="img", desc="encode", disable=not progress) as bar:
            for batch in iter_batches(images, batch_size):
                out.append(vae.encode_scaled(to_float(batch).to(device), sample=False).float().cpu())
                bar.update(batch.shape[0])
    finally:
        vae.train(was_training)
    if not out:
        raise ValueError("images is empty")
    return torch.cat(out)


def encode_dataset(dataset, vae, *, device: str | torch.device | None = None, batch_size: int = 256,
                   cache_dir: str | Path | None = None, use_cache: bool = True,
                   progress: bool = True) -> LatentDataset:
    """The dataset's (image, label) items as scaled VAE latents, computed once and cached.

    ``vae``: a VAE checkpoint path (its file sha256 keys the cache) or a VAE module (its state dict's
    sha256 does). The cache file ``<cache_dir>/<dataset>-<vae>.pt`` holds the latents, labels, the
    latent scale and both keys; a dataset without a cheap fingerprint is encoded every time.
    """
    device = torch.device(device) if device is not None else None
    module, sha = _resolve_vae(vae, device)
    if device is not None:
        module = module.to(device)
    if sha is None:
        sha = _module_sha256(module)
    scale = float(module.latent_scale)
    if not math.isfinite(scale):
        raise ValueError("the VAE has no latent scale: measure it first (measure_latent_scale)")
    fingerprint = dataset_fingerprint(dataset) if use_cache else None
    class_names = getattr(dataset, "class_names", ())
    path = (Path(cache_dir) if cache_dir is not None else checkpoint_cache_dir("latents")) / \
        f"{(fingerprint or '')[:16]}-{sha[:16]}.pt"
    if fingerprint is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if (cached.get("version") == CACHE_VERSION and cached.get("vae_sha256") == sha
                    and cached.get("dataset_fingerprint") == fingerprint):
                return LatentDataset(cached["latents"], cached["labels"], latent_scale=cached["latent_scale"],
                                     vae_sha256=sha, class_names=class_names)
        except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError):
            pass  # a damaged cache file is recomputed and replaced below
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    latents, labels = [], []
    with tqdm(total=len(dataset), unit="img", desc="encode", disable=not progress) as bar:
        for x, y in loader:
            latents.append(encode_images(module, x, batch_size=batch_size, device=device))
            labels.append(torch.as_tensor(y))
            bar.update(x.shape[0])
    latents, labels = torch.cat(latents), torch.cat(labels).long()
    if fingerprint is not None:
        cached = {"version": CACHE_VERSION, "latents": latents, "labels": labels, "latent_scale": scale,
                  "vae_sha256": sha, "dataset_fingerprint": fingerprint, "mode": "posterior mean"}
        atomic_write(path, lambda f: torch.save(cached, f))
    return LatentDataset(latents, labels, latent_scale=scale, vae_sha256=sha, class_names=class_names)


# ------------------------------------------------------------------------------- decoding
_VAE_CACHE: dict[tuple, nn.Module] = {}


def _vae_from_path(path: str | Path, device) -> nn.Module:
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device))
    if key not in _VAE_CACHE:
        _VAE_CACHE.clear()  # one VAE at a time is plenty
        _VAE_CACHE[key] = load_vae(path, device=device)
    return _VAE_CACHE[key]


@torch.inference_mode()
def decode_latents(latents: torch.Tensor, vae, *, batch_size: int = 256, device=None,
                   expected_sha256: str | None = None) -> torch.Tensor:
    """Images in [-1, 1] (on the CPU) from scaled latents: ``vae.decode(z / latent_scale)``, batched.

    ``vae``: a VAE checkpoint path (loaded once and kept) or a VAE module. ``expected_sha256``: the
    sha256 of the VAE file the latent model was trained on (checked when given).
    """
    if isinstance(vae, (str, Path)):
        if not Path(vae).is_file():
            raise FileNotFoundError(f"VAE checkpoint {str(vae)!r} does not exist (the latent model needs the VAE "
                                    f"it was trained with to decode its samples)")
        if expected_sha256 is not None and file_sha256(vae) != expected_sha256:
            raise ValueError(f"VAE checkpoint {str(vae)!r} is not the VAE the latent model was trained with "
                             f"(sha256 differs from {expected_sha256[:16]}...)")
        vae = _vae_from_path(vae, device or "cpu")
    elif not hasattr(vae, "decode_scaled"):
        raise TypeError(f"vae must be a VAE checkpoint path or a VAE module, got {type(vae).__name__}")
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
        raise ValueError(f"latents must be a (N, C, h, w) tensor, got "
                         f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    expected = getattr(vae, "latent_shape", None)
    if expected is not None and tuple(latents.shape[1:]) != tuple(expected):
        raise ValueError(f"latents of shape {tuple(latents.shape[1:])} do not fit this VAE, whose latents are "
                         f"{tuple(expected)}")
    dev = torch.device(device) if device is not None else next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        out = [vae.decode_scaled(z.to(dev, torch.float32)).float().clamp(-1, 1).cpu()
               for z in latents.split(batch_size)]
    finally:
        vae.train(was_training)
    return torch.cat(out)


@torch.inference_mode()
def reconstruction_psnr(vae, images: torch.Tensor, *, batch_size: int = 256) -> float:
    """Mean PSNR in dB of ``decode(encode(x))`` (posterior mean) over images in [-1, 1], on the [0, 1]
    scale: 10·log10(1 / MSE) per image, averaged."""
    vae, _ = _resolve_vae(vae)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (N, C, H, W) tensor in [-1, 1]")
    dev = next(vae.parameters()).device
    values = []
    was_training = vae.training
    vae.eval()
    try:
        for x in images.split(batch_size):
            x = x.to(dev, torch.float32)
            rec = vae.decode(vae.encode(x).mode()).clamp(-1, 1)
            mse = ((rec - x) / 2).square().flatten(1).mean(1).clamp_min(1e-12)
            values.append(10 * torch.log10(1 / mse).cpu())
    finally:
        vae.train(was_training)
    return float(torch.cat(values).mean())
