"""Stable Diffusion's VAE behind this library's VAE interface (online only, e.g. on Colab).

Rombach et al. 2022: f = 8, 4 latent channels, latent scale 0.18215 (the config's ``scaling_factor``).
"""

from __future__ import annotations

import torch
from torch import nn

SD_VAE_SCALE = 0.18215  # Stable Diffusion's latent scale (Rombach et al. 2022, appendix)
SD_VAE_NAME = "stabilityai/sd-vae-ft-mse"


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
