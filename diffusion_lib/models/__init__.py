"""Networks: the denoising UNet, the KL autoencoder for latent diffusion and a small classifier."""

from .classifier import Classifier, ClassifierConfig
from .unet import PRESETS, UNet, UNetConfig
from .vae import VAE, VAE_PRESETS, DiagonalGaussian, VAEConfig, VAEOutput, measure_latent_scale, vae_loss
