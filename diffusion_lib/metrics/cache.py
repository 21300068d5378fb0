"""Reference features and statistics of a dataset, cached on disk.

A file is keyed by kind (stats or features), dataset, split, image count, extractor name and a hash of
the dataset options (e.g. ``image_size``), and it stores the extractor's fingerprint: a file made by a
different extractor, or by a changed copy of the same one, is recomputed, never reused.
The folder is ``$DIFFUSION_CACHE/fid`` if that variable is set, else ``~/.cache/diffusion_lib/fid``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..checkpoint import atomic_write, cache_dir
from .features import FeatureSet, extract_features, get_extractor
from .frechet import FeatureStats

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$DIFFUSION_CACHE/fid``, else ``~/.cache/diffusion_lib/fid``."""
    return cache_dir("fid")


def _load_dataset(name: str, split: str, **kwargs):
    from ..data import load_dataset
    return load_dataset(name, split, **kwargs)


def cache_path(kind: str, dataset_name: str, split: str, n: int | None, extractor: str,
               dataset_kwargs: dict | None = None, cache_dir: str | Path | None = None) -> Path:
    options = hashlib.sha1(json.dumps(dataset_kwargs or {}, sort_keys=True, default=str).encode()).hexdigest()[:8]
    count = "all" if n is None else str(n)
    return Path(cache_dir or default_cache_dir()) / f"{kind}-{dataset_name}-{split}-n{count}-{extractor}-{options}.npz"


def _read(path: Path, meta: dict) -> dict | None:
    try:
        with np.load(path) as z:
            if json.loads(str(z["meta"])) != meta:
                log.info("cache file %s was made differently (extractor changed?): recomputing", path)
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as e:
        log.warning("unreadable cache file %s (%s): recomputing", path, e)
        return None


def _write(path: Path, meta: dict, arrays: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, meta=json.dumps(meta), **arrays))


def _features_of_more_images(count: int, meta: dict, dataset_kwargs: dict, cache_dir) -> np.ndarray | None:
    """Cached features of at least ``count`` images made the way ``meta`` asks, else None.

    Every reference is the first images in order, so the test set's features (≈ 15 min on 2 cores) serve
    each smaller reference and its statistics without running the Inception again.
    """
    every = cache_path("features", meta["dataset"], meta["split"], None, meta["extractor"], dataset_kwargs, cache_dir)
    before, after = every.name.split("-nall-")
    name = re.compile(rf"{re.escape(before)}-n(all|\d+)-{re.escape(after)}")
    for candidate in sorted(every.parent.iterdir() if every.parent.is_dir() else []):
        match = name.fullmatch(candidate.name)
        if match is None:
            continue
        stored = match.group(1)
        arrays = _read(candidate, {**meta, "kind": "features", "n": None if stored == "all" else int(stored)})
        if arrays is not None and len(arrays["features"]) >= count:
            log.info("reference %s of %d images from the features in %s", meta["kind"], count, candidate)
            return arrays["features"]
    return None


def _reference(kind: str, dataset_name: str, split: str, n: int | None, extractor, cache_dir, batch_size,
               device, progress, refresh, dataset_kwargs) -> tuple[dict, dict]:
    net = get_extractor(extractor, device)
    meta = {"kind": kind, "dataset": dataset_name, "split": split, "n": n, "extractor": net.name,
            "fingerprint": getattr(net, "fingerprint", net.name), "dataset_kwargs": dataset_kwargs,
            "version": FORMAT_VERSION}
    meta = json.loads(json.dumps(meta, default=str))  # as it reads back from the file
    path = cache_path(kind, dataset_name, split, n, net.name, dataset_kwargs, cache_dir)
    arrays = None if refresh or not path.is_file() else _read(path, meta)
    if arrays is not None:
        log.info("reference %s from cache %s", kind, path)
        return arrays, meta
    dataset = _load_dataset(dataset_name, split, **dataset_kwargs)
    count = len(dataset) if n is None else n
    if not 2 <= count <= len(dataset):
        raise ValueError(f"n must be between 2 and the {len(dataset)} images of {dataset_name!r} ({split}), got {n} "
                         f"(n: the number of reference images, evaluate's --n-reference)")
    stored = None if refresh else _features_of_more_images(count, meta, dataset_kwargs, cache_dir)
    if stored is not None:
        feats = FeatureSet(torch.from_numpy(stored[:count]), net.name)
    else:
        loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
        feats = extract_features(loader, net, batch_size=batch_size, device=device, progress=progress)
    if kind == "features":
        arrays = {"features": feats.features.numpy()}
    else:
        stats = feats.stats()
        arrays = {"mu": stats.mu, "sigma": stats.sigma, "n": np.array(stats.n)}
    _write(path, meta, arrays)
    return arrays, meta


def reference_stats(dataset_name: str, split: str = "train", n: int | None = None, *,
                    extractor: str | nn.Module = "auto", cache_dir: str | Path | None = None, batch_size: int = 50,
                    device: str | torch.device | None = None, progress: bool = True, refresh: bool = False,
                    **dataset_kwargs) -> FeatureStats:
    """FID statistics of the first ``n`` images (all if None) of ``diffusion_lib.data.load_dataset(dataset_name,
    split, **dataset_kwargs)``, computed once and then read from the cache (``refresh`` recomputes).

    Pass the same dataset options (e.g. ``image_size``) the model was trained with: the reference must be
    preprocessed like the samples.
    """
    arrays, meta = _reference("stats", dataset_name, split, n, extractor, cache_dir, batch_size, device,
                                 progress, refresh, dataset_kwargs)
    return FeatureStats(arrays["mu"], arrays["sigma"], int(arrays["n"]), meta["extractor"])


def reference_features(dataset_name: str, split: str = "train", n: int | None = 1000, *,
                       extractor: str | nn.Module = "auto", cache_dir: str | Path | None = None, batch_size: int = 50,
                       device: str | torch.device | None = None, progress: bool = True, refresh: bool = False,
                       **dataset_kwargs) -> FeatureSet:
    """Features of the first ``n`` images, cached like ``reference_stats``: for KID (and FID via ``.stats()``)."""
    arrays, meta = _reference("features", dataset_name, split, n, extractor, cache_dir, batch_size, device,
                                 progress, refresh, dataset_kwargs)
    return FeatureSet(torch.from_numpy(arrays["features"]), meta["extractor"])
