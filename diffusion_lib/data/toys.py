"""Synthetic data made from a seed: coloured shapes (smoke runs, no files) and the 2-D toy distributions."""

from __future__ import annotations

import math

import torch


# ----------------------------------------------------------------------------------------------
# Synthetic coloured shapes


def make_shapes(num_samples: int, image_size: int = 32, *, seed: int = 0, split: str = "train"):
    """`num_samples` uint8 images (N, 3, S, S) of one bright shape (circle, square, triangle, cross)
    on a dark background, random colours, sizes and positions; labels are the shape index.
    The same (seed, split) always gives the same images."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    g = torch.Generator().manual_seed(2 * int(seed) + (split != "train"))
    n, s = num_samples, image_size
    labels = torch.randint(0, 4, (n,), generator=g)
    r = (0.2 + 0.15 * torch.rand(n, generator=g)) * s  # shape "radius" in pixels
    centre = r[:, None] + torch.rand(n, 2, generator=g) * (s - 2 * r[:, None])  # fully inside
    fg = torch.randint(110, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)
    bg = torch.randint(0, 80, (n, 3, 1, 1), generator=g, dtype=torch.uint8)

    coords = torch.arange(s, dtype=torch.float32) + 0.5
    dy = (coords[None, :, None] - centre[:, 1, None, None]) / r[:, None, None]  # (n, s, 1)
    dx = (coords[None, None, :] - centre[:, 0, None, None]) / r[:, None, None]  # (n, 1, s)
    ax, ay = dx.abs(), dy.abs()
    masks = torch.stack([
        dx ** 2 + dy ** 2 <= 1.0,                                              # circle
        torch.maximum(ax, ay) <= 0.8,                                          # square
        (ay <= 0.8) & (ax <= 0.55 * (dy + 0.8)),                               # triangle, apex up
        ((ax <= 0.3) & (ay <= 0.9)) | ((ay <= 0.3) & (ax <= 0.9)),             # cross
    ])  # (4, n, s, s)
    mask = masks[labels, torch.arange(n)][:, None]  # (n, 1, s, s)
    images = torch.where(mask, fg, bg)
    return images, labels


# ----------------------------------------------------------------------------------------------
# 2-D toy distributions


def _generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _two_moons(n, g):
    labels = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    lower = labels == 1
    x[lower] = torch.stack([1 - torch.cos(angle[lower]), 0.5 - torch.sin(angle[lower])], 1)
    x = x + 0.05 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.5, labels


def _gaussian_mixture(n, g, num_components=8, radius=2.0, std=0.1):
    labels = torch.randint(0, num_components, (n,), generator=g)
    angle = 2 * math.pi * labels.float() / num_components
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return means + std * torch.randn(n, 2, generator=g), labels


def _swiss_roll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5.0
    return x + 0.05 * torch.randn(n, 2, generator=g), torch.zeros(n, dtype=torch.long)


def _ring(n, g, radius=1.5, std=0.05):
    angle = 2 * math.pi * torch.rand(n, generator=g)
    rho = radius + std * torch.randn(n, generator=g)
    return torch.stack([rho * torch.cos(angle), rho * torch.sin(angle)], 1), torch.zeros(n, dtype=torch.long)


def _checkerboard(n, g):
    # 4x4 board on [-2, 2]^2, points in the 8 "black" cells; label = cell index 0..7
    labels = torch.randint(0, 8, (n,), generator=g)
    row = labels // 2
    col = 2 * (labels % 2) + (row % 2)
    x = torch.stack([col.float(), row.float()], 1) + torch.rand(n, 2, generator=g) - 2.0
    return x, labels


TOY_2D = {"two_moons": _two_moons, "gaussian_mixture": _gaussian_mixture, "swiss_roll": _swiss_roll,
          "ring": _ring, "checkerboard": _checkerboard}


def toy_2d(name: str, n: int, generator=None, *, return_labels: bool = False, **kw):
    """n points (float32, shape (n, 2)) of a 2-D toy distribution, of scale about 1-2.

    names: two_moons, gaussian_mixture (kw: num_components=8, radius=2, std=0.1), swiss_roll,
    ring (kw: radius=1.5, std=0.05), checkerboard. generator: torch.Generator, int seed or None.
    return_labels: also return (n,) long labels (moon, mixture component or checkerboard cell; 0 for
    swiss_roll and ring), e.g. for class-conditional toys.
    """
    if name not in TOY_2D:
        raise ValueError(f"unknown 2-D toy {name!r}; available: {list(TOY_2D)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    x, labels = TOY_2D[name](n, _generator(generator), **kw)
    x = x.float()
    return (x, labels) if return_labels else x
