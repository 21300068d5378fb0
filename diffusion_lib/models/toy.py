"""A small MLP denoiser for low-dimensional data (2-D toy distributions), trained in seconds on a CPU.

Same interface as the UNet: ``forward(x, t, y=None)`` returns a tensor of x's shape, t are integer
timesteps embedded with the UNet's sinusoidal embedding (Ho et al. 2020, following Vaswani et al.
2017), and an optional class label gets an embedding table with one extra row, the null label used
for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_labels, timestep_embedding


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class ToyMLP(nn.Module):
    """x (N, dim), t (N,) [, y (N,)] -> prediction (N, dim).

    Architecture: the timestep's sinusoidal embedding (width ``time_dim``) goes through a 2-layer
    MLP to a conditioning vector c (plus a learned label embedding when ``num_classes`` is set);
    the input then passes through ``depth`` hidden layers h ← SiLU(W h + U·SiLU(c)) of width ``hidden``
    (every layer sees the noise level), and a final linear layer maps back to ``dim``.

    Args:
        dim: data dimension (2 for the toy distributions).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        time_dim: width of the sinusoidal time embedding.
        num_classes: None (unconditional) or the number of real classes; the embedding has one more
            row, ``null_label == num_classes``, which is also used when y is None.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
            _check_positive_int(name, value)
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim, num_classes=num_classes)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.cond = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    @property
    def null_label(self) -> int | None:
        """The label meaning "no class" (classifier-free guidance), or None for an unconditional model."""
        return self.config["num_classes"]

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, dim) float; t: (N,) timesteps (integer indices, or floats) or a scalar;
        y: (N,) labels in [0, num_classes] (num_classes = null label) or None."""
        dim, num_classes = self.config["dim"], self.config["num_classes"]
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"x must have shape (N, {dim}), got {tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise ValueError(f"t must be timestep indices (integers) or floats, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t must have shape (N,) = ({n},) or be a scalar, got {tuple(t.shape)}")

        c = self.time_mlp(timestep_embedding(t, self.config["time_dim"]).to(x.dtype))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((n,), num_classes, dtype=torch.long, device=x.device)
            c = c + self.label_embed(check_labels(y, n, num_classes, x.device))
        elif y is not None:
            raise ValueError("y was given but this ToyMLP is unconditional; build it with num_classes=...")

        c = F.silu(c)
        h = x
        for layer, cond in zip(self.layers, self.cond):
            h = F.silu(layer(h) + cond(c))
        return self.out(h)
