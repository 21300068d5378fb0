"""Networks: the denoising UNet, the KL autoencoder for latent diffusion and a small classifier."""

from .unet import PRESETS, UNet, UNetConfig
