"""FID and KID from images, features or statistics; every result records the extractor that made it.

FID (Heusel et al. 2017) is biased: its expected value falls as the sample count grows, so it is only
comparable at equal counts and is noisy below 10 000 images. KID (Bińkowski et al. 2018, the squared
MMD with the kernel k(x, y) = (x·y / D + 1)³) is unbiased and suits small sample counts.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..data.images import iter_batches, to_uint8
from .features import FeatureSet, device_of, extract_features, get_extractor
from .frechet import FeatureStats, frechet_distance, frechet_distance_features, frechet_distance_sqrtm

MIN_FID_SAMPLES = 10_000
FID_METHODS = ("auto", "eigh", "svd", "sqrtm", "torchmetrics")


class SmallSampleWarning(UserWarning):
    """FID computed from fewer than MIN_FID_SAMPLES images on one side."""


@dataclass(frozen=True)
class FIDResult:
    fid: float
    extractor: str
    n_samples: int
    n_reference: int
    seconds: float  # the Fréchet distance alone, not the feature extraction
    method: str = "eigh"  # "eigh", "svd", "sqrtm" or "torchmetrics"

    def __float__(self) -> float:
        return self.fid

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KIDResult:
    kid: float
    kid_std: float
    extractor: str
    n_samples: int
    n_reference: int
    subsets: int
    subset_size: int

    def __float__(self) -> float:
        return self.kid

    def to_dict(self) -> dict:
        return asdict(self)


def _extractor_for(inputs, extractor) -> str | nn.Module:
    """The extractor to use for any raw images among ``inputs``: the one their precomputed features came
    from, checked against an explicit ``extractor``; "auto" if nothing says otherwise."""
    names = {x.extractor for x in inputs if isinstance(x, (FeatureStats, FeatureSet))}
    if len(names) > 1:
        raise ValueError(f"samples and reference were computed with different extractors: {sorted(names)}")
    if not names:
        return "auto" if extractor is None else extractor
    name = names.pop()
    if extractor is not None:
        given = getattr(extractor, "name", extractor)
        if given not in ("auto", name):
            raise ValueError(f"extractor {given!r} differs from {name!r}, which the given features came from")
        if isinstance(extractor, nn.Module):
            return extractor
    return name


def _features(x, extractor, **kw) -> FeatureSet:
    if isinstance(x, FeatureStats):
        raise TypeError("KID needs features, not statistics: pass images or a FeatureSet")
    return x if isinstance(x, FeatureSet) else extract_features(x, extractor, **kw)


def warn_small_sample(n_samples: int, n_reference: int) -> None:
    if min(n_samples, n_reference) < MIN_FID_SAMPLES:
        warnings.warn(f"FID from {n_samples} samples and {n_reference} reference images: below {MIN_FID_SAMPLES} "
                      "FID is biased upwards and noisy, comparable only at equal counts; prefer KID for small "
                      "sample counts", SmallSampleWarning, stacklevel=3)


def fid_from_stats(samples: FeatureStats, reference: FeatureStats, *, method: str = "eigh",
                   warn: bool = True) -> FIDResult:
    """FID of two precomputed statistics; ``method`` "eigh" (ours) or "sqrtm" (scipy, slow, the reference)."""
    if method not in ("eigh", "sqrtm"):
        raise ValueError(f"method must be 'eigh' or 'sqrtm' for statistics, got {method!r}")
    name = _extractor_for((samples, reference), None)
    if warn:
        warn_small_sample(samples.n, reference.n)
    distance = frechet_distance if method == "eigh" else frechet_distance_sqrtm
    start = time.perf_counter()
    value = distance(samples.mu, samples.sigma, reference.mu, reference.sigma)
    return FIDResult(value, name, samples.n, reference.n, time.perf_counter() - start, method)


def torchmetrics_fid(extractor: str | nn.Module = "auto", device=None, **kwargs):
    """torchmetrics' ``FrechetInceptionDistance`` fed by our extractor module (uint8 input, ``normalize=False``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    net = get_extractor(extractor, device)
    return FrechetInceptionDistance(feature=net, **kwargs).to(device_of(net))


def _torchmetrics_fid(samples, reference, extractor, batch_size, device) -> FIDResult:
    if any(isinstance(x, (FeatureStats, FeatureSet)) for x in (samples, reference)):
        raise ValueError("method='torchmetrics' takes images on both sides; use 'eigh' for features or statistics")
    metric = torchmetrics_fid(extractor, device)
    dev = metric.real_features_sum.device
    counts = {}
    with torch.inference_mode():
        for real, images in ((True, reference), (False, samples)):
            for batch in iter_batches(images, batch_size):
                metric.update(to_uint8(batch.to(dev)), real=real)
            counts[real] = int(metric.real_features_num_samples if real else metric.fake_features_num_samples)
    warn_small_sample(counts[False], counts[True])
    start = time.perf_counter()
    value = float(metric.compute())
    return FIDResult(value, metric.inception.name, counts[False], counts[True], time.perf_counter() - start,
                     "torchmetrics")


def fid_from_features(samples: FeatureSet, reference: FeatureSet, *, method: str = "auto",
                      warn: bool = True) -> FIDResult:
    """FID of two feature sets; "auto" takes the n × n "svd" route when both sets are smaller than the
    feature dimension, else the statistics ("eigh")."""
    if method not in ("auto", "eigh", "svd", "sqrtm"):
        raise ValueError(f"method must be 'auto', 'eigh', 'svd' or 'sqrtm' for features, got {method!r}")
    if method == "auto":
        method = "svd" if max(samples.n, reference.n) < samples.features.shape[1] else "eigh"
    if method != "svd":
        return fid_from_stats(samples.stats(), reference.stats(), method=method, warn=warn)
    name = _extractor_for((samples, reference), None)
    if warn:
        warn_small_sample(samples.n, reference.n)
    start = time.perf_counter()
    value = frechet_distance_features(samples.features, reference.features)
    return FIDResult(value, name, samples.n, reference.n, time.perf_counter() - start, "svd")


def fid(samples, reference, *, extractor: str | nn.Module | None = None, method: str = "auto",
        batch_size: int = 50, device=None, progress: bool = True) -> FIDResult:
    """FID between ``samples`` and ``reference``, each images (tensor or iterable of batches, uint8 or
    [-1, 1] floats), a FeatureSet or FeatureStats (e.g. ``reference_stats(...)``).

    Images are run through ``extractor`` (default: the one precomputed inputs came from, else "auto").
    ``method``: "eigh" (our Fréchet distance of the statistics), "svd" (from features, for fewer images
    than dimensions), "auto" (whichever is cheaper), "sqrtm" (scipy's, slow) or "torchmetrics" (its
    ``FrechetInceptionDistance`` on images, fed by the same extractor). Warns below 10 000 images.
    """
    if method not in FID_METHODS:
        raise ValueError(f"method must be one of {FID_METHODS}, got {method!r}")
    net = _extractor_for((samples, reference), extractor)
    if method == "torchmetrics":
        return _torchmetrics_fid(samples, reference, net, batch_size, device)
    if method == "svd" and any(isinstance(x, FeatureStats) for x in (samples, reference)):
        raise ValueError("method='svd' needs features on both sides, not statistics")
    kw = dict(batch_size=batch_size, device=device, progress=progress)
    samples, reference = (x if isinstance(x, FeatureStats) else _features(x, net, **kw) for x in (samples, reference))
    if isinstance(samples, FeatureSet) and isinstance(reference, FeatureSet):
        return fid_from_features(samples, reference, method=method)
    as_stats = (x if isinstance(x, FeatureStats) else x.stats() for x in (samples, reference))
    return fid_from_stats(*as_stats, method="eigh" if method == "auto" else method)


def poly_mmd(f1: torch.Tensor, f2: torch.Tensor, degree: int = 3, gamma: float | None = None,
             coef: float = 1.0) -> float:
    """Unbiased squared MMD of two equal-size feature sets, kernel (γ x·y + coef)^degree, γ = 1/D by default."""
    m = f1.shape[0]
    if f2.shape[0] != m or m < 2:
        raise ValueError(f"poly_mmd needs two sets of equal size >= 2, got {f1.shape[0]} and {f2.shape[0]}")
    f1, f2 = f1.double(), f2.double()
    gamma = 1.0 / f1.shape[1] if gamma is None else gamma
    k11 = (f1 @ f1.T * gamma + coef) ** degree
    k22 = (f2 @ f2.T * gamma + coef) ** degree
    k12 = (f1 @ f2.T * gamma + coef) ** degree
    within = (k11.sum() - k11.diagonal().sum() + k22.sum() - k22.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * k12.sum() / m ** 2)


def kid_from_features(samples: FeatureSet, reference: FeatureSet, *, subsets: int = 100,
                      subset_size: int = 1000, degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                      generator: torch.Generator | None = None) -> KIDResult:
    """KID: mean and std of ``poly_mmd`` over ``subsets`` random subsets (capped at the smaller set's size).

    ``generator`` None means seed 0, so the metric is deterministic. Often reported × 1000.
    """
    name = _extractor_for((samples, reference), None)
    size = min(subset_size, samples.n, reference.n)
    if subsets < 1 or size < 2:
        raise ValueError(f"KID needs subsets >= 1 and at least 2 images per side, got subsets={subsets}, "
                         f"{samples.n} samples, {reference.n} reference images")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = torch.tensor([
        poly_mmd(samples.features[torch.randperm(samples.n, generator=g)[:size]],
                 reference.features[torch.randperm(reference.n, generator=g)[:size]], degree, gamma, coef)
        for _ in range(subsets)], dtype=torch.float64)
    std = float(values.std()) if subsets > 1 else 0.0
    return KIDResult(float(values.mean()), std, name, samples.n, reference.n, subsets, size)


def kid(samples, reference, *, extractor: str | nn.Module | None = None, subsets: int = 100,
        subset_size: int = 1000, generator: torch.Generator | None = None, batch_size: int = 50, device=None,
        progress: bool = True, **kernel) -> KIDResult:
    """KID between ``samples`` and ``reference`` (images or FeatureSets), on the same features as FID."""
    net = _extractor_for((samples, reference), extractor)
    kw = dict(batch_size=batch_size, device=device, progress=progress)
    return kid_from_features(_features(samples, net, **kw), _features(reference, net, **kw), subsets=subsets,
                             subset_size=subset_size, generator=generator, **kernel)
