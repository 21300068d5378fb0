"""The denoising UNet eps_theta(x_t, t, y) of Ho et al. (2020), with optional class conditioning.

Architecture (Ho et al. 2020, appendix B; the PixelCNN++ backbone): a 3x3 input convolution,
`len(channel_mult)` resolution levels of `num_res_blocks` residual blocks (self-attention after each
block at the levels in `attention_levels`) separated by stride-2 downsampling, a middle
block-attention-block, and a mirrored decoder whose levels have one extra block and concatenate
the matching encoder activations (the skip connections). The timestep enters through a sinusoidal
embedding and a two-layer MLP (width 4 x base_channels) added inside every residual block.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022) adds a learned label
embedding to the time embedding. The table has `num_classes + 1` rows: the last one,
`model.null_label`, is the "no label" class that training substitutes with probability p_uncond and
that the guided sampler uses for the unconditional prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Attention, ConfigDict, Downsample, ResBlock, Upsample, group_norm, timestep_embedding, zero_


@dataclass
class UNetConfig(ConfigDict):
    """Hyperparameters of :class:`UNet`. Level i works at resolution image_size / 2**i with
    base_channels * channel_mult[i] channels."""

    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels (eps, x0 and v all have x's shape)
    image_size: int = 32
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)
    dropout: float = 0.1
    num_groups: int = 32
    num_heads: int = 1
    num_classes: int | None = None  # real classes; the embedding has one more row, the null label

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(self.attention_levels)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        for name in ("in_channels", "out_channels", "image_size", "base_channels", "num_res_blocks",
                     "num_groups", "num_heads"):
            _check_positive_int(name, getattr(self, name))
        if self.num_classes is not None:
            _check_positive_int("num_classes", self.num_classes)
        if not self.channel_mult:
            raise ValueError("channel_mult must have at least one level")
        for m in self.channel_mult:
            _check_positive_int("channel_mult entries", m)
        levels = len(self.channel_mult)
        for level in self.attention_levels:
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < levels:
                raise ValueError(f"attention_levels={self.attention_levels}: each entry must be a level "
                                 f"index in 0..{levels - 1} (channel_mult has {levels} levels)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for m in self.channel_mult:
            channels = self.base_channels * m
            if channels % self.num_groups:
                raise ValueError(f"num_groups={self.num_groups} must divide every level's channel count; "
                                 f"base_channels * {m} = {channels} is not divisible")
            if channels % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide every level's channel count "
                                 f"({channels})")
        factor = 2 ** (levels - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} cannot be halved {levels - 1} times "
                             f"(channel_mult has {levels} levels): it must be a multiple of {factor}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def preset(cls, name: str, **overrides) -> "UNetConfig":
        """A named configuration (see PRESETS), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}; available: {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


PRESETS: dict[str, dict] = {
    # Ho et al. 2020, CIFAR-10: 35.7M parameters.
    "ddpm_cifar10": dict(in_channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2),
                         num_res_blocks=2, attention_levels=(1,), dropout=0.1),
    # Source report, Table III (CIFAR-10 baseline, unconditional).
    "seed_cifar10": dict(in_channels=3, image_size=32, base_channels=64, channel_mult=(1, 2, 4, 4),
                         num_res_blocks=3, attention_levels=(2, 3), dropout=0.1),
    # Source report, Table IV: 32x32x3 VAE latents of 128x128 ImageNet-100, 100 classes + the null
    # class (the report's "num_classes 101").
    "seed_imagenet100_latent": dict(in_channels=3, image_size=32, base_channels=128,
                                    channel_mult=(1, 2, 2, 4, 4), num_res_blocks=3,
                                    attention_levels=(1, 2, 3, 4), dropout=0.1, num_classes=100),
    # Small models for CPU runs: Ho et al.'s CIFAR-10 network at a quarter of the width (1/16 of
    # the parameters).
    "fashion_small": dict(in_channels=1, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2),
                          num_res_blocks=2, attention_levels=(1,), dropout=0.1, num_groups=8),
    "cifar_small": dict(in_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2),
                        num_res_blocks=2, attention_levels=(1,), dropout=0.1, num_groups=8),
    # 4x8x8 latents of the `fashion_f4` VAE, class-conditional on the 10 Fashion-MNIST classes.
    "latent_small": dict(in_channels=4, image_size=8, base_channels=64, channel_mult=(1, 2),
                         num_res_blocks=2, attention_levels=(1,), dropout=0.1, num_groups=16,
                         num_classes=10),
}


class UNetBlock(nn.Module):
    """A residual block, followed by self-attention at the attention levels."""

    def __init__(self, in_channels, out_channels, emb_channels, dropout, num_groups, attention, num_heads):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_channels, dropout, num_groups)
        self.attn = Attention(out_channels, num_heads, num_groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


#: The largest timestep a UNet that was not told its schedule's T accepts (exclusive): the period
#: scale of the sinusoidal embedding (``timestep_embedding``'s max_period), the range it is made for.
MAX_TIMESTEPS = 10_000


class UNet(nn.Module):
    """eps_theta(x_t, t, y): maps (N, C, H, W) noisy images, (N,) timesteps and optional (N,)
    labels to an (N, out_channels, H, W) prediction (eps, x0 or v, as the trainer chooses).

    ``num_timesteps``: the T of the noise schedule the model is trained or sampled with; timesteps
    must lie in [0, T). The configuration does not record T (the schedule does), so the trainer and
    ``checkpoint.load_model`` pass it; a UNet built without it accepts [0, MAX_TIMESTEPS).
    """

    def __init__(self, config: UNetConfig, num_timesteps: int | None = None):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        if num_timesteps is not None:
            _check_positive_int("num_timesteps", num_timesteps)
        self.num_timesteps = num_timesteps
        self.config = c = config
        ch = c.base_channels
        emb_channels = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))
        self.label_embed = nn.Embedding(c.num_classes + 1, emb_channels) if c.num_classes is not None else None

        block = dict(emb_channels=emb_channels, dropout=c.dropout, num_groups=c.num_groups, num_heads=c.num_heads)
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [ch]
        channels = ch
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.down.append(UNetBlock(channels, ch * mult, attention=level in c.attention_levels, **block))
                channels = ch * mult
                skip_channels.append(channels)
            if level != len(c.channel_mult) - 1:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)

        self.mid = nn.ModuleList([UNetBlock(channels, channels, attention=True, **block),
                                  UNetBlock(channels, channels, attention=False, **block)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for _ in range(c.num_res_blocks + 1):
                self.up.append(UNetBlock(channels + skip_channels.pop(), ch * mult,
                                         attention=level in c.attention_levels, **block))
                channels = ch * mult
            if level != 0:
                self.up.append(Upsample(channels))

        self.norm_out = group_norm(channels, c.num_groups)
        self.conv_out = zero_(nn.Conv2d(channels, c.out_channels, 3, padding=1))

    @property
    def null_label(self) -> int | None:
        """Label index of the unconditional ("null") class, or None for an unconditional model."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """x: (N, in_channels, image_size, image_size); t: (N,) timestep indices (or one number);
        y: (N,) labels in [0, num_classes] (num_classes = null label), or None for the null label."""
        t, y = self._check_inputs(x, t, y)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.label_embed is not None:
            emb = emb + self.label_embed(y)

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, UNetBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, UNetBlock) else layer(h)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))

    def _check_inputs(self, x, t, y):
        """Validate shapes and labels before any compute; returns t and y as (N,) tensors."""
        c = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a 4-D tensor (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        N, C, H, W = x.shape
        if C != c.in_channels:
            raise ValueError(f"x has {C} channels but the UNet expects in_channels={c.in_channels}")
        if (H, W) != (c.image_size, c.image_size):
            factor = c.downsampling_factor
            hint = (f"; {H}x{W} cannot be halved {len(c.channel_mult) - 1} times (needs multiples of {factor})"
                    if H % factor or W % factor else "")
            raise ValueError(f"x is {H}x{W} but the UNet was built for image_size={c.image_size} "
                             f"({c.image_size}x{c.image_size}){hint}")

        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, device=x.device)
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must be integer timestep indices (or floats), got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(N)
        t = t.to(x.device)
        if t.shape != (N,):
            raise ValueError(f"t must have shape (N,) = ({N},) or be a scalar, got {tuple(t.shape)}")
        T = self.num_timesteps or MAX_TIMESTEPS
        bad_t = ~((t >= 0) & (t < T))  # also true for NaN

        if self.label_embed is None:
            if y is not None:
                raise ValueError("y was given but this UNet is unconditional (num_classes=None); "
                                 "build it with UNetConfig(num_classes=...) for class conditioning")
            if bad_t.any():
                self._raise_bad_t(t, bad_t)
            return t, None
        if y is None:
            if bad_t.any():
                self._raise_bad_t(t, bad_t)
            return t, torch.full((N,), c.num_classes, dtype=torch.long, device=x.device)
        if not isinstance(y, torch.Tensor):
            y = torch.tensor(y, device=x.device)
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        if y.ndim == 0:
            y = y.expand(N)
        y = y.to(x.device)
        if y.shape != (N,):
            raise ValueError(f"y must have shape (N,) = ({N},) or be a scalar, got {tuple(y.shape)}")
        out_of_range = (y < 0) | (y > c.num_classes)
        if torch.stack([bad_t.any(), out_of_range.any()]).any():  # one device sync for both checks
            if bad_t.any():
                self._raise_bad_t(t, bad_t)
            bad = y[out_of_range][0].item()
            raise ValueError(f"label {bad} out of range: y must be in [0, {c.num_classes - 1}] "
                             f"or the null label {c.num_classes}")
        return t, y

    def _raise_bad_t(self, t, bad_t):
        bound = (f"num_timesteps={self.num_timesteps}, the schedule's T" if self.num_timesteps
                 else f"MAX_TIMESTEPS={MAX_TIMESTEPS}; pass UNet(config, num_timesteps=T) for the schedule's T")
        raise ValueError(f"timestep t={t[bad_t][0].item()} out of range: t must lie in "
                         f"[0, {(self.num_timesteps or MAX_TIMESTEPS) - 1}] ({bound})")
