"""A small CNN classifier for 1x32x32 images in [-1, 1] (Fashion-MNIST), used to score guided samples.

Two uses in the classifier-free guidance chapter: the class accuracy of samples generated for class
c (fidelity to the condition), and the mean pairwise distance of `features(x)` within a class
(diversity). A VGG-style stack of 3x3 convolutions with batch norm (Ioffe & Szegedy 2015) reaches
about 92-93 % test accuracy on Fashion-MNIST after a few epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConfigDict


@dataclass
class ClassifierConfig(ConfigDict):
    in_channels: int = 1
    image_size: int = 32
    num_classes: int = 10
    channels: tuple[int, ...] = (32, 64, 128)  # one stage per entry, each halving the resolution
    dropout: float = 0.3

    def __post_init__(self):
        self.channels = tuple(self.channels)
        for name in ("in_channels", "image_size", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {self.channels}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size={self.image_size} must be a multiple of 2**len(channels) = "
                             f"{2 ** len(self.channels)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def feature_dim(self) -> int:
        return self.channels[-1]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Classifier(nn.Module):
    """logits = forward(x); features(x) = the (N, feature_dim) globally pooled penultimate layer."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = c = config if config is not None else ClassifierConfig()
        layers, c_in = [], c.in_channels
        for c_out in c.channels:  # two convolutions, then 2x2 max-pooling, per stage
            layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out) + [nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.feature_dim, c.num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (N, {c.in_channels}, {c.image_size}, {c.image_size}) "
                             f"with values in [-1, 1], got {shape}")
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
