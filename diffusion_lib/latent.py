"""Latent diffusion (Rombach et al. 2022): VAE checkpoints, cached latents, decoding.

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
interface via :func:`load_sd_vae`, online only (Colab); nothing here needs it.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, file_digest, load_checkpoint

CACHE_ENV = "DIFFUSION_CACHE"
CACHE_VERSION = 1
SD_VAE_SCALE = 0.18215  # Stable Diffusion's latent scale (Rombach et al. 2022, appendix)
SD_VAE_NAME = "stabilityai/sd-vae-ft-mse"

__all__ = ["LatentDataset", "StableDiffusionVAE", "check_latent_shape", "decode_latents", "encode_dataset",
           "file_sha256", "latent_unet_config", "load_sd_vae", "load_vae", "reconstruction_psnr"]


# --------------------------------------------------------------------------------- VAE files
def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (the key of cached latents, and the model cards' checksum)."""
    return file_digest(path, "sha256")


def load_vae(path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu",
             require_scale: bool = True):
    """The VAE of a checkpoint written by ``python -m diffusion_lib train`` with ``task: vae``
    (a training checkpoint or the exported ``vae.pt``), in eval mode on ``device``.

    EMA weights by default. With ``require_scale`` (the default) a checkpoint whose latent scale was
    never measured is refused: latents would silently have the wrong variance.
    """
    from .models import VAE, VAEConfig

    state = load_checkpoint(path)
    if "vae_config" not in state:
        raise CheckpointError(f"checkpoint file {str(path)!r} has no 'vae_config': it is not a VAE checkpoint "
                              f"(a UNet checkpoint loads with diffusion_lib.load_model)")
    which = "ema" if ema and "ema" in state else "model"
    if which not in state:
        raise CheckpointError(f"checkpoint file {str(path)!r} holds no {which!r} weights")
    vae = VAE(VAEConfig.from_dict(state["vae_config"]))
    vae.load_state_dict(state[which])  # fp16 weights are copied into float32 parameters
    if require_scale and not vae.has_latent_scale:
        raise CheckpointError(
            f"VAE checkpoint {str(path)!r} has no latent scale: it was saved before the scale was measured "
            f"(an intermediate training checkpoint). Use the run's vae.pt or final checkpoint, or measure it: "
            f"diffusion_lib.vae_training.store_latent_scale({str(path)!r}, dataset)")
    return vae.to(device).eval()


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


def default_cache_dir() -> Path:
    """``$DIFFUSION_CACHE/latents``, else ``~/.cache/diffusion_lib/latents``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) / "latents" if root else Path.home() / ".cache" / "diffusion_lib" / "latents"


def dataset_fingerprint(dataset) -> str | None:
    """A sha256 identifying a dataset's images and labels, or None when it cannot be computed cheaply.

    In-memory images (Fashion-MNIST, CIFAR-10, shapes) hash their bytes; an image folder hashes its
    file names, sizes, modification times and the image size.
    """
    from .data import ImageFolderDataset, ImageTensorDataset

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


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)  # a reader never sees half a file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@torch.inference_mode()
def encode_images(vae, images, *, batch_size: int = 256, device=None, progress: bool = False) -> torch.Tensor:
    """Scaled posterior-mean latents of ``images`` ((N, C, H, W) in [-1, 1], or an iterable of
    batches or (images, labels) pairs), as one float32 CPU tensor."""
    from .metrics.images import count_images, iter_batches, to_float

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
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / \
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
        _atomic_save({"version": CACHE_VERSION, "latents": latents, "labels": labels, "latent_scale": scale,
                      "vae_sha256": sha, "dataset_fingerprint": fingerprint, "mode": "posterior mean"}, path)
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


# --------------------------------------------------------------------- Stable Diffusion's VAE
class StableDiffusionVAE(nn.Module):
    """diffusers' ``AutoencoderKL`` behind this library's VAE interface (encode_scaled, decode_scaled,
    latent_shape, latent_scale), so encode_dataset, decode_latents and latent_unet_config take it.

    Stable Diffusion's VAE downsamples by f = 8 into 4 channels, with latent scale 0.18215 (its
    config's ``scaling_factor``): 128×128 images become 4×16×16 latents.
    """

    def __init__(self, autoencoder: nn.Module, image_size: int):
        super().__init__()
        self.autoencoder = autoencoder
        cfg = autoencoder.config
        self.downsampling_factor = 2 ** (len(cfg.block_out_channels) - 1)
        if image_size % self.downsampling_factor:
            raise ValueError(f"image_size={image_size} must be a multiple of the VAE's downsampling factor "
                             f"{self.downsampling_factor}")
        self.image_size = image_size
        self.in_channels = cfg.in_channels
        self.register_buffer("latent_scale", torch.tensor(float(cfg.scaling_factor)))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.downsampling_factor
        return (self.autoencoder.config.latent_channels, side, side)

    @property
    def has_latent_scale(self) -> bool:
        return True

    def encode_scaled(self, x: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = True) -> torch.Tensor:
        posterior = self.autoencoder.encode(x.to(self.autoencoder.dtype)).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        return z.float() * self.latent_scale

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode((z / self.latent_scale).to(self.autoencoder.dtype)).sample.float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(z.to(self.autoencoder.dtype)).sample.float()

    def encode(self, x: torch.Tensor):
        return self.autoencoder.encode(x.to(self.autoencoder.dtype)).latent_dist


def load_sd_vae(name: str = SD_VAE_NAME, *, image_size: int = 128, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> StableDiffusionVAE:
    """Stable Diffusion's pretrained VAE from the Hugging Face Hub (online, e.g. on Colab).

    Needs ``pip install diffusers`` and a connection the first time; the course never needs it offline.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("load_sd_vae needs the diffusers package (pip install diffusers) and an internet "
                          "connection for the weights; the course's own VAE (chapter 7) works offline") from e
    autoencoder = AutoencoderKL.from_pretrained(name, torch_dtype=dtype)
    return StableDiffusionVAE(autoencoder, image_size).to(device).eval()
