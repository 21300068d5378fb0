"""KL-regularised convolutional autoencoder for latent diffusion.

A variational autoencoder (Kingma & Welling 2013) with a diagonal Gaussian posterior
q(z|x) = N(mu(x), diag sigma^2(x)) and the convolutional encoder/decoder of latent diffusion
(Rombach et al. 2022, "AutoencoderKL"): residual blocks, len(channel_mult) - 1 stride-2
downsamplings (downsampling factor f = 2**(len(channel_mult) - 1)) and self-attention in the middle.
The loss is the beta-weighted negative ELBO, reconstruction + beta * KL(q(z|x) || N(0, I)).

Latent diffusion trains on z * latent_scale, where latent_scale = 1 / std of the training latents
(Rombach et al. 2022, section 4.3.2 and appendix G; 0.18215 for Stable Diffusion's VAE) so that the
diffusion model sees roughly unit variance, as its noise schedule assumes. The scale is a buffer,
so it travels with the state dict; it is NaN until measure_latent_scale() sets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import Attention, ConfigDict, Downsample, ResBlock, Upsample, group_norm


@dataclass
class VAEConfig(ConfigDict):
    """Hyperparameters of :class:`VAE`; images (in_channels, image_size, image_size) map to latents
    (latent_channels, image_size / f, image_size / f) with f = 2**(len(channel_mult) - 1)."""

    in_channels: int = 3
    image_size: int = 32
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    num_groups: int = 32
    attention: bool = True  # self-attention in the middle of encoder and decoder, as in LDM

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        for name in ("in_channels", "image_size", "base_channels", "num_res_blocks", "latent_channels",
                     "num_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.channel_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                        for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        for m in self.channel_mult:
            if (self.base_channels * m) % self.num_groups:
                raise ValueError(f"num_groups={self.num_groups} must divide every level's channel count "
                                 f"(base_channels * {m} = {self.base_channels * m})")
        if self.image_size % self.downsampling_factor:
            raise ValueError(f"image_size={self.image_size} is not a multiple of the downsampling factor "
                             f"f={self.downsampling_factor}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.downsampling_factor
        return (self.latent_channels, side, side)

    @classmethod
    def preset(cls, name: str, **overrides) -> "VAEConfig":
        if name not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; available: {sorted(VAE_PRESETS)}")
        return cls.from_dict({**VAE_PRESETS[name], **overrides})


VAE_PRESETS: dict[str, dict] = {
    # Fashion-MNIST 1x32x32 -> 4x8x8 (f = 4): 16x fewer values for the diffusion model to model.
    "fashion_f4": dict(in_channels=1, image_size=32, base_channels=32, channel_mult=(1, 2, 2),
                       num_res_blocks=1, latent_channels=4, num_groups=8),
    # The source report's setting, 3x128x128 -> 3x32x32 (f = 4), with LDM's KL-f4 architecture.
    "report_imagenet100": dict(in_channels=3, image_size=128, base_channels=128, channel_mult=(1, 2, 4),
                               num_res_blocks=2, latent_channels=3, num_groups=32),
}


class DiagonalGaussian:
    """q(z|x) = N(mean, diag exp(logvar)), the VAE posterior."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)  # as in LDM: keeps exp() finite early in training
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick, Kingma & Welling eq. 10)."""
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, shape (N,): 1/2 sum(mean^2 + var - 1 - logvar)
        (Kingma & Welling 2013, appendix B)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).flatten(1).sum(1)


@dataclass
class VAEOutput:
    reconstruction: torch.Tensor
    posterior: DiagonalGaussian


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.base_channels
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        layers, channels = [], ch
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(channels, ch * mult, None, 0.0, c.num_groups))
                channels = ch * mult
            if level != len(c.channel_mult) - 1:
                layers.append(Downsample(channels))
        layers += _middle(channels, c)
        self.layers = nn.Sequential(*layers)
        self.norm_out = group_norm(channels, c.num_groups)
        self.conv_out = nn.Conv2d(channels, 2 * c.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x):
        return self.conv_out(nn.functional.silu(self.norm_out(self.layers(self.conv_in(x)))))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.base_channels
        channels = ch * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, channels, 3, padding=1)
        layers = _middle(channels, c)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResBlock(channels, ch * mult, None, 0.0, c.num_groups))
                channels = ch * mult
            if level != 0:
                layers.append(Upsample(channels))
        self.layers = nn.Sequential(*layers)
        self.norm_out = group_norm(channels, c.num_groups)
        self.conv_out = nn.Conv2d(channels, c.in_channels, 3, padding=1)

    def forward(self, z):
        return self.conv_out(nn.functional.silu(self.norm_out(self.layers(self.conv_in(z)))))


def _middle(channels: int, c: VAEConfig) -> list[nn.Module]:
    attention = [Attention(channels, 1, c.num_groups)] if c.attention else []
    return [ResBlock(channels, channels, None, 0.0, c.num_groups), *attention,
            ResBlock(channels, channels, None, 0.0, c.num_groups)]


class VAE(nn.Module):
    """encode(x) -> q(z|x); decode(z) -> reconstruction; forward(x) -> VAEOutput.

    encode_scaled / decode_scaled work in the diffusion model's space z * latent_scale.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("latent_scale", torch.tensor(float("nan")))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config.latent_shape

    @property
    def has_latent_scale(self) -> bool:
        return bool(torch.isfinite(self.latent_scale))

    def set_latent_scale(self, scale: float) -> None:
        """Set the scale by hand (e.g. 0.18215 for Stable Diffusion's VAE)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"latent_scale must be a positive finite number, got {scale}")
        self.latent_scale.fill_(scale)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        c = self.config
        _check_4d("x", x, c.in_channels, "in_channels")
        f = c.downsampling_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"x is {x.shape[-2]}x{x.shape[-1]}: the VAE downsamples by f={f}, "
                             f"so height and width must be multiples of {f}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        _check_4d("z", z, self.config.latent_channels, "latent_channels")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                sample_posterior: bool = True) -> VAEOutput:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return VAEOutput(self.decode(z), posterior)

    def encode_scaled(self, x: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = True) -> torch.Tensor:
        """Latents for the diffusion model: a posterior sample (LDM's default; sample=False takes
        the mean) times latent_scale."""
        scale = self._scale()
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * scale

    def decode_scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Images from diffusion-space latents: decode(z / latent_scale)."""
        return self.decode(z / self._scale())

    def _scale(self) -> torch.Tensor:
        if not self.has_latent_scale:
            raise RuntimeError("this VAE has no latent scale: it was never measured (or the checkpoint was "
                               "saved before measuring it). Run measure_latent_scale(vae, batches) on "
                               "training images after training the VAE, or vae.set_latent_scale(value).")
        return self.latent_scale


def _check_4d(name, tensor, channels, field):
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a 4-D tensor (N, C, H, W), got {shape}")
    if tensor.shape[1] != channels:
        raise ValueError(f"{name} has {tensor.shape[1]} channels but the VAE expects {field}={channels}")


def vae_loss(x: torch.Tensor, out: VAEOutput, beta: float) -> dict[str, torch.Tensor]:
    """beta-VAE loss (Higgins et al. 2017): ||x - x_hat||^2 + beta * KL(q(z|x) || N(0, I)).

    Both terms are summed over dimensions and averaged over the batch; with beta = 1 this is the
    negative ELBO of a Gaussian decoder with variance 1/2, up to a constant. Latent diffusion wants
    a small beta (sharp reconstructions, latents only loosely pulled toward N(0, I)).
    Returns {"loss", "reconstruction", "kl"}.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if out.reconstruction.shape != x.shape:
        raise ValueError(f"reconstruction shape {tuple(out.reconstruction.shape)} differs from x {tuple(x.shape)}")
    reconstruction = (out.reconstruction.float() - x.float()).square().flatten(1).sum(1).mean()
    kl = out.posterior.kl().float().mean()
    return {"loss": reconstruction + beta * kl, "reconstruction": reconstruction, "kl": kl}


@torch.no_grad()
def measure_latent_scale(vae: VAE, batches, *, generator: torch.Generator | None = None,
                         max_batches: int | None = None, sample: bool = True) -> float:
    """Set vae.latent_scale to 1 / std of the latents of `batches` (tensors or (x, label) pairs)
    and return it. Rombach et al. (2022) measure it on training data once the VAE is trained."""
    was_training = vae.training
    vae.eval()
    device = vae.latent_scale.device
    total = total_sq = 0.0
    count = 0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            posterior = vae.encode(x.to(device))
            z = (posterior.sample(generator) if sample else posterior.mode()).double()
            total += z.sum().item()
            total_sq += z.square().sum().item()
            count += z.numel()
    finally:
        vae.train(was_training)
    if count < 2:
        raise ValueError("measure_latent_scale needs at least one batch of images")
    mean = total / count
    var = (total_sq - count * mean ** 2) / (count - 1)
    scale = 1.0 / math.sqrt(var)
    vae.set_latent_scale(scale)
    return scale
