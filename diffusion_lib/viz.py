"""Figures for the book: image grids, trajectories, schedule curves, a frame player and a slider widget.

Images come in as the library's float tensors in [-1, 1], shape (N, C, H, W); they leave as uint8.
Every plotting function returns its matplotlib ``Figure``. In a notebook assign it
(``fig = show_images(x)``): a figure left as a cell's value is shown twice, and a trailing ``;`` does
not help under nbval, which runs cells without history, where IPython looks for the ``;``.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from .data.images import to_uint8


def image_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one uint8 array of shape (H, W, 3), ``nrow`` images per row.

    ``x``: (N, C, H, W) or (C, H, W) in [-1, 1] with C = 1 or 3; ``pad_value`` is in [-1, 1]
    (1 = white lines between images). A single image comes back without padding.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (N, C, H, W) or (C, H, W) with C 1 or 3; got {tuple(x.shape)}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1; got {nrow}")
    images = to_uint8(x.cpu()).float().expand(-1, 3, -1, -1)
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=(pad_value + 1) * 127.5)
    return grid.permute(1, 2, 0).to(torch.uint8).numpy()


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, figsize=None):
    """Show a grid of images (see :func:`image_grid`) on ``ax`` or a new figure; returns the figure."""
    import matplotlib.pyplot as plt

    grid = image_grid(x, nrow=nrow)
    if ax is None:
        if figsize is None:
            scale = 4.0 / max(grid.shape[:2])
            figsize = (max(2.0, grid.shape[1] * scale * 1.5), max(2.0, grid.shape[0] * scale * 1.5))
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def save_grid(x: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write the grid of ``x`` as a PNG file (parents created); returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(x, nrow=nrow)).save(path)
    return path


def plot_trajectory(
    frames,
    timesteps: Sequence[int] | None = None,
    num_columns: int = 8,
    max_rows: int = 4,
    title: str | None = None,
):
    """Rows: samples; columns: ``num_columns`` evenly spaced steps of a sampling trajectory.

    ``frames`` is a sampler's ``Trajectory`` (its ``x_t`` and ``timesteps`` are used) or a sequence of
    (N, C, H, W) tensors, one per step, with optional ``timesteps`` for the column titles.
    """
    import matplotlib.pyplot as plt

    if hasattr(frames, "x_t"):
        timesteps = list(frames.timesteps) if timesteps is None else timesteps
        frames = frames.x_t
    frames = list(frames)
    if not frames:
        raise ValueError("frames must hold at least one (N, C, H, W) tensor")
    if timesteps is not None and len(timesteps) != len(frames):
        raise ValueError(f"timesteps has {len(timesteps)} entries for {len(frames)} frames")
    columns = np.unique(np.linspace(0, len(frames) - 1, min(num_columns, len(frames))).round().astype(int))
    rows = min(max_rows, frames[0].shape[0])
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.3 * rows), squeeze=False)
    for j, k in enumerate(columns):
        for i in range(rows):
            axes[i, j].imshow(image_grid(frames[k][i : i + 1], nrow=1, padding=0), interpolation="nearest")
            axes[i, j].set_axis_off()
        if timesteps is not None:
            axes[0, j].set_title(f"t = {int(timesteps[k])}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_schedules(
    schedules: Mapping[str, object],
    quantities: Sequence[str] = ("alpha_bar", "log_snr"),
    axes=None,
):
    """One panel per quantity (an attribute of shape (T,), e.g. ``alpha_bar``, ``betas``, ``log_snr``),
    one curve per named schedule, against the timestep index t."""
    import matplotlib.pyplot as plt

    if not schedules:
        raise ValueError("schedules must name at least one schedule")
    if axes is None:
        fig, axes = plt.subplots(1, len(quantities), figsize=(4.5 * len(quantities), 3.2), squeeze=False)
        axes = axes[0]
    if len(axes) != len(quantities):
        raise ValueError(f"got {len(axes)} axes for {len(quantities)} quantities")
    for ax, quantity in zip(axes, quantities):
        for name, schedule in schedules.items():
            if not hasattr(schedule, quantity):
                raise ValueError(f"schedule {name!r} has no attribute {quantity!r}")
            values = torch.as_tensor(getattr(schedule, quantity)).detach().cpu().double().numpy()
            ax.plot(np.arange(len(values)), values, label=name)
        ax.set_xlabel("t")
        ax.set_title(quantity)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig = axes[0].figure
    fig.tight_layout()
    return fig


def slider(fn: Callable, name: str, values: Sequence, value=None, description: str | None = None):
    """An ipywidgets slider that calls ``fn(**{name: v})`` for the chosen value ``v``.

    ``values``: a ``range`` gives an integer slider with its step; any other sequence a slider over
    its items. Works with ipywidgets 7 (Colab) and 8. Returns the widget; make it the cell's last
    expression to display it. It needs a running kernel: a saved notebook or the static book shows
    nothing of it (the notebook rules refuse a saved widget), so chapters use :class:`FramePlayer`.
    """
    import ipywidgets as widgets

    values = values if isinstance(values, range) else list(values)
    if len(values) == 0:
        raise ValueError("values must not be empty")
    value = values[0] if value is None else value
    if value not in values:
        raise ValueError(f"value {value!r} is not one of values")
    description = name if description is None else description
    if isinstance(values, range) and values.step > 0:
        control = widgets.IntSlider(
            value=value, min=values.start, max=values[-1], step=values.step,
            description=description, continuous_update=False,
        )
    else:
        control = widgets.SelectionSlider(
            options=list(values), value=value, description=description, continuous_update=False
        )
    return widgets.interactive(fn, **{name: control})


_player_ids = itertools.count()

_PLAYER_SCRIPT = """
(function () {
  var root = document.getElementById("%(id)s");
  var frames = JSON.parse(root.querySelector("script.frame-player-data").textContent);
  var img = root.querySelector("img"), range = root.querySelector("input[type=range]");
  var label = root.querySelector(".frame-player-label"), button = root.querySelector("button"), timer = null;
  function show(i) { range.value = i; img.src = "data:image/png;base64," + frames.images[i]; label.textContent = frames.labels[i]; }
  function stop() { clearInterval(timer); timer = null; button.textContent = "\u25B6 play"; }
  range.addEventListener("input", function () { stop(); show(+range.value); });
  button.addEventListener("click", function () {
    if (timer) { stop(); return; }
    button.textContent = "\u275A\u275A pause";
    timer = setInterval(function () { show((+range.value + 1) %% frames.images.length); }, %(interval)d);
  });
})();
"""


def _png_base64(frame) -> str:
    """A matplotlib Figure (closed afterwards) or an image array/tensor as a base64 PNG."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    if hasattr(frame, "savefig"):
        frame.savefig(buffer, format="png", dpi=frame.dpi)
        plt.close(frame)
    else:
        image = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
        if image.dtype != np.uint8:
            raise TypeError(f"an image frame must be uint8 (H, W) or (H, W, C), got dtype {image.dtype}")
        # vmin/vmax: grey levels are absolute, not stretched per frame
        plt.imsave(buffer, image, format="png", cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class FramePlayer:
    """Precomputed frames behind a slider and a play button, as self-contained HTML and JavaScript.

    It needs no kernel: the published book, a saved notebook, Colab and Jupyter all show it and
    scrub through it. Displayed as a cell's value (``_repr_html_``); :attr:`html` is the markup.
    """

    def __init__(self, frames: Sequence, labels: Sequence[str], *, title: str = "", interval_ms: int = 400,
                 start: int = 0):
        frames, labels = list(frames), [str(label) for label in labels]
        if not frames:
            raise ValueError("frames must not be empty")
        if len(labels) != len(frames):
            raise ValueError(f"labels must give one label per frame: {len(frames)} frames, {len(labels)} labels")
        if not 0 <= start < len(frames):
            raise ValueError(f"start must be a frame index in [0, {len(frames) - 1}], got {start!r}")
        self.images = [_png_base64(frame) for frame in frames]
        self.labels = labels
        self.start = start
        self.id = f"frame-player-{next(_player_ids)}"
        data = json.dumps({"images": self.images, "labels": labels}).replace("</", "<\\/")
        self.html = (
            f'<div class="frame-player" id="{self.id}">'
            + (f'<div class="frame-player-title">{html.escape(title)}</div>' if title else "")
            + f'<img style="max-width:100%" alt="{html.escape(title or "frame")}" '
            f'src="data:image/png;base64,{self.images[start]}">'
            # the label on its own line and a button as wide as "pause": the slider never moves or shrinks
            f'<div class="frame-player-controls" style="display:flex;align-items:center;gap:0.6em;max-width:40em">'
            f'<button type="button" style="white-space:nowrap;flex:none;min-width:6.5em">\u25B6 play</button>'
            f'<input type="range" min="0" max="{len(frames) - 1}" value="{start}" step="1" style="flex:1;min-width:0" '
            f'aria-label="{html.escape(title or "frame")}"></div>'
            f'<div class="frame-player-label" style="font-family:monospace">{html.escape(labels[start])}</div>'
            f'<script type="application/json" class="frame-player-data">{data}</script>'
            f'<script>{_PLAYER_SCRIPT % {"id": self.id, "interval": int(interval_ms)}}</script></div>'
        )

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"FramePlayer({len(self.images)} frames: {self.labels[0]} … {self.labels[-1]})"

    def __len__(self) -> int:
        return len(self.images)
