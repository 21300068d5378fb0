"""Stable Diffusion's VAE behind this library's VAE interface (online only, e.g. on Colab).

Rombach et al. 2022: f = 8, 4 latent channels, latent scale 0.18215 (the config's ``scaling_factor``).
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from pathlib import Path

import torch
from torch import nn

SD_VAE_SCALE = 0.18215  # Stable Diffusion's latent scale (Rombach et al. 2022, appendix)
SD_VAE_NAME = "stabilityai/sd-vae-ft-mse"
HUB_TIMEOUT_S = 10.0  # huggingface_hub's default per-request timeout (HF_HUB_ETAG_TIMEOUT)


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an answer: the probe is done
        return None


def _hub_answers(url: str, timeout: float) -> str | None:
    """None if the server at ``url`` answers a HEAD request within ``timeout`` seconds (any HTTP status),
    else why not."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "diffusion_lib"})
    try:
        urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timed out
        reason = getattr(e, "reason", e)
        return f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else f"{reason}"
    return None


def load_sd_vae(name: str = SD_VAE_NAME, *, image_size: int = 128, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, timeout: float | None = None) -> StableDiffusionVAE:
    """Stable Diffusion's pretrained VAE from the Hugging Face Hub (online, e.g. on Colab), or from a
    local folder when ``name`` is one (what ``save_pretrained`` or ``hf download`` wrote).

    Needs ``pip install diffusers``. Before huggingface_hub is asked (its retries on a silent server
    last minutes), one HEAD request checks that the Hub answers within ``timeout`` seconds (default
    HUB_TIMEOUT_S, huggingface_hub's own per-request timeout); if not, the copy in the Hugging Face
    cache is used when there is one, else a ConnectionError says how to provide the files offline.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("load_sd_vae needs the diffusers package (pip install diffusers) and an internet "
                          "connection for the weights; the course's own VAE (chapter 7) works offline") from e
    from huggingface_hub import constants

    timeout = HUB_TIMEOUT_S if timeout is None else timeout
    if Path(name).is_dir():
        autoencoder = AutoencoderKL.from_pretrained(name, torch_dtype=dtype)
    else:
        why = "$HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _hub_answers(
            f"{constants.ENDPOINT}/{name}/resolve/main/config.json", timeout)
        try:
            autoencoder = AutoencoderKL.from_pretrained(name, torch_dtype=dtype, local_files_only=why is not None)
        except OSError as e:
            if why is None:
                raise
            raise ConnectionError(
                f"Stable Diffusion's VAE {name!r} could not be fetched from {constants.ENDPOINT} ({why}) "
                f"and is not in the Hugging Face cache {constants.HF_HUB_CACHE}; to work offline, run "
                f"`hf download {name}` on a connected machine and copy that cache, or pass the path of a "
                f"folder holding its config.json and diffusion_pytorch_model.safetensors as name") from e
    return StableDiffusionVAE(autoencoder, image_size).to(device).eval()
