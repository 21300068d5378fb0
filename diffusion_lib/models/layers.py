"""Building blocks shared by the UNet and the VAE, and the dict round trip of the models' configs.

The blocks follow Ho et al. (2020, "Denoising Diffusion Probabilistic Models", appendix B and
their `diffusion_tf/models/unet.py`): pre-activation residual blocks with GroupNorm and SiLU, the
time embedding added between the two convolutions, single-head (or multi-head) self-attention
with a residual connection, stride-2 convolution for downsampling and nearest-neighbour
upsampling followed by a convolution.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_EPS = 1e-6  # Ho et al. / LDM use 1e-6 (TensorFlow's group_norm default)


class ConfigDict:
    """``to_dict``/``from_dict`` for the models' config dataclasses: what checkpoints store (tuples as
    lists, so a checkpoint holds plain types), and unknown keys named when a dict is read back."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, shape (N,) -> (N, dim).

    Transformer position encoding (Vaswani et al. 2017, section 3.5) as used by Ho et al. 2020:
    frequencies exp(-log(max_period) * i / (half - 1)), sin half first, then cos.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(max_period) / (half - 1))
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:  # odd widths get a zero column so the shape is always (N, dim)
        emb = F.pad(emb, (0, 1))
    return emb


def check_labels(y, n: int, num_classes: int, device) -> torch.Tensor:
    """Class labels y as a long tensor of shape (n,) (a scalar is repeated); each in [0, num_classes − 1] or
    the null label num_classes (classifier-free guidance's "no condition")."""
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.expand(n)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) (one label per sample) or be a scalar, got {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) > num_classes:
        raise ValueError(f"y must be in [0, {num_classes - 1}] or the null label {num_classes}, "
                         f"got values in [{int(y.min())}, {int(y.max())}]")
    return y.long()


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=GROUP_NORM_EPS)


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters (Ho et al. initialise the last layer of each residual branch to
    zero, so every block starts as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block h = x + conv(drop(silu(norm(conv(silu(norm(x))) + proj(emb))))).

    `emb_channels=None` gives the unconditioned block used in the VAE.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int | None,
                 dropout: float = 0.0, num_groups: int = 32):
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels) if emb_channels is not None else None
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        # 1x1 projection only where the channel count changes (Ho et al.'s "nin_shortcut").
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        # In-place adds are safe here (a convolution's backward does not need its output) and save
        # two full-size allocations per block.
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is not None:
            h += self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h.add_(self.skip(x))


class Attention(nn.Module):
    """Self-attention over the H*W positions, x + proj(softmax(q k^T / sqrt(d)) v).

    q, k, v come from one linear map of the normalised features; with channels_last inputs the
    (N, H*W, C) view needs no copy.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the channel count {channels}")
        self.num_heads = num_heads
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.qkv(h).view(N, H * W, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, d)
        h = self.proj(h.transpose(1, 2).reshape(N, H * W, C))
        return x + h.transpose(1, 2).unflatten(2, (H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (Ho et al.'s `resamp_with_conv`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
