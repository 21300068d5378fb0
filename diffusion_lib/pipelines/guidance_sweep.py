"""The guidance sweep of the classifier-free guidance chapter: fidelity and diversity against the scale w.

For each guidance scale w, :func:`guidance_sweep` draws the same number of samples of every class
with ε̃ = ε_u + w·(ε_c − ε_u) (:func:`~diffusion_lib.samplers.classifier_free_guidance`; w = 0 is
unconditional, w = 1 conditional; Ho & Salimans' own weight is w − 1), from the *same* initial noise
at every scale, and measures with a trained classifier:

- class accuracy: the fraction of samples of class y that the classifier assigns to y (fidelity to
  the condition; it rises with w);
- diversity: the mean pairwise distance of the classifier's penultimate features within a class,
  averaged over classes (it falls with w);
- optionally FID against reference statistics (``fid_reference``, e.g. ``metrics.reference_stats``)
  at the scales in ``fid_scales``.

Latent models pass ``decode`` (e.g. ``lambda z: latent.decode_latents(z, vae)``); the classifier
sees decoded images. Notebooks and ``benchmarks/guidance_sweep.py`` both call this function.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..metrics import class_accuracy, classifier_features, fid, within_class_diversity
from ..samplers import classifier_free_guidance
from .generate import sample_in_batches, sampler_options

DEFAULT_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5)


@dataclass
class GuidanceSweepResult:
    """One row per scale (``rows``), a grid of samples per scale (``grids``: ``grid_per_class`` rows,
    one class per column, [-1, 1] images) and the settings that produced them.

    A row's ``scale`` is the guidance scale w and its ``ho_salimans_weight`` is Ho & Salimans' own
    weight, w − 1."""

    rows: list[dict]
    grids: dict[float, torch.Tensor] = field(repr=False)
    settings: dict

    @property
    def scales(self) -> list[float]:
        return [row["scale"] for row in self.rows]

    def column(self, key: str) -> list:
        return [row.get(key) for row in self.rows]

    def to_dict(self) -> dict:
        """Plain JSON-able values (the grids are left out)."""
        return {"settings": self.settings, "rows": self.rows}

    def table(self) -> str:
        """A Markdown table (for consoles and Markdown files): see :func:`sweep_table`."""
        head, body = sweep_table(self)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)

    def table_html(self) -> str:
        """The same table as HTML, which Jupyter, Colab and the book all render as a table
        (``IPython.display.HTML(result.table_html())``)."""
        return table_html(*sweep_table(self))


def sweep_table(result: GuidanceSweepResult | dict) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows: w, Ho & Salimans' w − 1, class accuracy, diversity, and FID where
    measured (with its sample size). ``result``: a sweep or its JSON form (``to_dict``)."""
    rows = result.rows if isinstance(result, GuidanceSweepResult) else result["rows"]
    fid_n = _fid_samples(rows)
    head = ["w", "w − 1 (Ho & Salimans)", "class accuracy", "diversity"]
    if fid_n is not None:
        head.append(f"FID ({fid_n:,} samples)")
    body = []
    for row in rows:
        cells = [f"{row['scale']:g}", f"{row['scale'] - 1:g}", f"{row['class_accuracy']:.3f}",
                 f"{row['diversity']:.3f}"]
        if fid_n is not None:
            cells.append(f"{row['fid']:.1f}" if row.get("fid") is not None else "")
        body.append(cells)
    return head, body


def table_html(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A plain HTML table (numbers right-aligned), escaped."""
    def cells(tag, values):
        return "".join(f'<{tag} style="text-align:right">{html.escape(v)}</{tag}>' for v in values)

    rows = "".join(f"<tr>{cells('td', row)}</tr>" for row in body)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{rows}</tbody></table>"


def _fid_samples(rows: Sequence[dict]) -> int | None:
    """The number of generated samples the FID values were computed from (each row's ``fid_n``, not the
    sweep's ``n``: the benchmark computes FID from a larger run); None without FID."""
    sizes = {row.get("fid_n") for row in rows if row.get("fid") is not None}
    if not sizes:
        return None
    if len(sizes) > 1 or None in sizes:
        raise ValueError(f"every row with an FID must give its sample size as fid_n, one size for the sweep; "
                         f"got {sorted(map(str, sizes))}")
    return sizes.pop()


def _check_scales(scales) -> list[float]:
    scales = [float(w) for w in scales]
    if not scales or any(not math.isfinite(w) or w < 0 for w in scales):
        raise ValueError(f"scales must be finite numbers >= 0, got {scales}")
    return scales


@torch.no_grad()
def sample_classes(model, schedule, labels: torch.Tensor, *, guidance_scale: float, null_label: int,
                   shape: Sequence[int], sampler: str = "ddim", batch_size: int = 250, seed: int = 0,
                   decode: Callable | None = None, device=None, progress: bool = False,
                   **sampler_kwargs) -> torch.Tensor:
    """Guided samples of the given labels, batched; the noise is a function of ``seed`` only, so every
    scale starts from the same x_T. Returns images in [-1, 1] on the CPU (decoded when ``decode``)."""
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D tensor of integer class labels, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    classes = _num_classes(model)
    if classes is not None and len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must be in [0, {classes - 1}], the model's classes (the null label {null_label} "
                         f"is the unconditional half of guidance), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    device = torch.device(device) if device is not None else _device_of(model)
    guided = classifier_free_guidance(model, guidance_scale, null_label)
    generator = torch.Generator(device).manual_seed(seed)

    def decode_batch(x):
        return (decode(x) if decode is not None else x).float().clamp(-1, 1)

    return sample_in_batches(guided, schedule, sampler, shape=shape, n=len(labels), labels=labels,
                             batch_size=batch_size, generator=generator, decode=decode_batch, progress=progress,
                             **sampler_kwargs)


def _num_classes(model) -> int | None:
    """The number of real classes of a UNet (config.num_classes) or an analytic model (num_classes)."""
    config = getattr(model, "config", None)
    return getattr(config, "num_classes", None) if config is not None else getattr(model, "num_classes", None)


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def guidance_sweep(model, schedule, classifier, *, scales: Sequence[float] = DEFAULT_SCALES,
                   samples_per_class: int = 100, num_classes: int | None = None, null_label: int | None = None,
                   image_shape: Sequence[int] | None = None, sampler: str = "ddim", num_steps: int = 50,
                   prediction_type: str = "epsilon", decode: Callable | None = None, grid_per_class: int = 4,
                   batch_size: int = 250, seed: int = 0, fid_scales: Sequence[float] = (),
                   fid_reference=None, fid_extractor=None, device=None, progress: bool = False,
                   **sampler_kwargs) -> GuidanceSweepResult:
    """Sample every class at every guidance scale and measure class accuracy, diversity and (optionally) FID.

    Args:
        model: a class-conditional model(x_t, t, y) trained with label dropout; its ``null_label``
            (and ``config``) give the null class, the number of classes and the sample shape unless
            passed as ``null_label``, ``num_classes``, ``image_shape`` (the shape the sampler draws:
            latents for a latent model).
        classifier: scores decoded images (``models.Classifier``: logits and ``features``).
        scales: guidance scales w >= 0 (w = 0 unconditional, 1 conditional; Ho & Salimans' weight w − 1).
        samples_per_class: samples of each class per scale (the issue's 1,000 per scale = 100 × 10).
        sampler, num_steps, sampler_kwargs: the sampler by name ("ddpm" ignores num_steps).
        decode: latents -> images in [-1, 1], for latent models.
        grid_per_class: samples per class kept for the grid of each scale.
        fid_scales, fid_reference, fid_extractor: FID of that scale's samples against
            ``fid_reference`` (FeatureStats, FeatureSet or images), e.g. FID-2k at w = 0, 1, 3. A row
            with FID records its sample size as ``fid_n``.
    """
    scales = _check_scales(scales)
    fid_scales = _check_scales(fid_scales) if fid_scales else []
    if fid_scales and fid_reference is None:
        raise ValueError("fid_scales needs fid_reference (e.g. metrics.reference_stats('fashion_mnist', 'test'))")
    null_label = getattr(model, "null_label", None) if null_label is None else null_label
    if null_label is None:
        raise ValueError("guidance needs a class-conditional model trained with a null class (label dropout): "
                         "this model has no null_label; train it with class_conditional: true, or pass null_label")
    config = getattr(model, "config", None)
    num_classes = num_classes if num_classes is not None else _num_classes(model)
    if num_classes is None:
        raise ValueError("num_classes is unknown: pass num_classes")
    if image_shape is None:
        if config is None:
            raise ValueError("image_shape is unknown: pass image_shape (C, H, W) of what the sampler draws")
        image_shape = (config.in_channels, config.image_size, config.image_size)
    if samples_per_class < 2:
        raise ValueError(f"samples_per_class must be >= 2 (diversity needs pairs), got {samples_per_class}")
    grid_per_class = min(grid_per_class, samples_per_class)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)  # class-major
    settings_kwargs = dict(sampler_kwargs)
    sampler_kwargs = {**sampler_options(sampler, steps=num_steps, prediction_type=prediction_type), **sampler_kwargs}
    grid_index = torch.tensor([c * samples_per_class + r for r in range(grid_per_class) for c in range(num_classes)])

    rows, grids = [], {}
    for w in scales:
        start = time.perf_counter()
        images = sample_classes(model, schedule, labels, guidance_scale=w, null_label=null_label,
                                shape=tuple(image_shape), sampler=sampler, batch_size=batch_size, seed=seed,
                                decode=decode, device=device, progress=progress, **sampler_kwargs)
        seconds = time.perf_counter() - start
        logits_kw = dict(batch_size=batch_size)
        accuracy = class_accuracy(images, labels, classifier, **logits_kw)
        diversity = within_class_diversity(classifier_features(classifier, images, **logits_kw), labels)
        row = {"scale": w, "ho_salimans_weight": w - 1, "class_accuracy": accuracy, "diversity": diversity["mean"],
               "diversity_per_class": diversity["per_class"], "n": len(labels), "sampling_seconds": seconds,
               "fid": None}
        if w in fid_scales:
            result = fid(images, fid_reference, extractor=fid_extractor, progress=progress)
            row.update(fid=result.fid, fid_extractor=result.extractor, fid_n=len(images),
                       fid_reference_n=result.n_reference)
        rows.append(row)
        grids[w] = images[grid_index]
    settings = {"samples_per_class": samples_per_class, "num_classes": num_classes, "null_label": null_label,
                "sampler": sampler, "num_steps": num_steps if sampler != "ddpm" else schedule.num_timesteps,
                "prediction_type": prediction_type, "seed": seed, "latent": decode is not None,
                "image_shape": list(image_shape), **{k: v for k, v in settings_kwargs.items() if k != "num_steps"}}
    return GuidanceSweepResult(rows, grids, settings)


def plot_guidance_sweep(result: GuidanceSweepResult | dict, ax=None):
    """Class accuracy and diversity (and FID where measured, with the number of samples it used)
    against the guidance scale w; returns the Figure."""
    import matplotlib.pyplot as plt

    rows = result.rows if isinstance(result, GuidanceSweepResult) else result["rows"]
    w = [r["scale"] for r in rows]
    fid_n = _fid_samples(rows)
    with_fid = [r for r in rows if r.get("fid") is not None]
    if ax is None:
        fig, axes = plt.subplots(1, 2 if with_fid else 1, figsize=(9 if with_fid else 5, 3.2), squeeze=False)
        ax = axes[0, 0]
    else:
        fig, axes = ax.figure, None
    ax.plot(w, [r["class_accuracy"] for r in rows], "o-", color="C0", label="class accuracy")
    ax.set_xlabel("guidance scale w")
    ax.set_ylabel("class accuracy", color="C0")
    ax.set_ylim(0, 1.02)
    twin = ax.twinx()
    twin.plot(w, [r["diversity"] for r in rows], "s--", color="C1", label="diversity")
    twin.set_ylabel("within-class feature distance", color="C1")
    if with_fid and axes is not None:
        axes[0, 1].plot([r["scale"] for r in with_fid], [r["fid"] for r in with_fid], "o-", color="C2")
        axes[0, 1].set_xlabel("guidance scale w")
        axes[0, 1].set_ylabel(f"FID ({fid_n:,} samples)")
    fig.tight_layout()
    return fig

