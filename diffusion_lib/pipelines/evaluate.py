"""Sample from a checkpoint, score the samples, write JSON (its command line, in cli.py, is
``python -m diffusion_lib evaluate``):

    python -m diffusion_lib evaluate --checkpoint runs/x/checkpoints/ckpt_00010000.pt \\
        --sampler ddim --steps 50 --n 10000 [--metrics fid kid] [--out eval.json]
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import torch

from ..checkpoint import check_writable, load_model, load_vae
from ..data.datasets import DATASETS, dataset_info
from ..device import pick_device
from ..latent import check_vae_file, decode_latents
from ..metrics.cache import reference_features, reference_stats
from ..metrics.features import extract_features, get_extractor
from ..metrics.fid import fid_from_features, fid_from_stats, kid_from_features
from .generate import check_generate_options, generate
from .machine import machine_info

METRICS = ("fid", "kid")


def dataset_options(config: dict) -> dict:
    """load_dataset options that make the reference look like the training data (no augmentation)."""
    options = dict(config.get("dataset_kwargs") or {})
    for key, name in (("image_size", "image_size"), ("data_root", "root")):
        if config.get(key) is not None:
            options[name] = config[key]
    return options


def reference_options(config: dict, dataset: str, checkpoint) -> dict:
    """The load_dataset options of the reference ``dataset``: the training data's own for the checkpoint's
    dataset; for another dataset only the image size, after checking it has the model's channels."""
    trained_on = config.get("dataset")
    if dataset == trained_on:
        return dataset_options(config)
    info = dataset_info(dataset)
    if trained_on in DATASETS:
        trained = dataset_info(trained_on)
        if info.channels != trained.channels:
            raise ValueError(f"dataset {dataset!r} has {info.channels}-channel images but {checkpoint} was trained "
                             f"on {trained_on!r} ({trained.channels} channels): its samples cannot be compared "
                             f"with {dataset!r}; pass a dataset with {trained.channels}-channel images, or none "
                             f"(the checkpoint's own, {trained_on!r})")
        return {"image_size": config.get("image_size") or trained.image_size}
    return {"image_size": config["image_size"]} if config.get("image_size") else {}


def run_evaluation(checkpoint: str | Path, *, sampler: str = "ddim", steps: int | None = 50, n: int = 10_000,
                   metrics: tuple[str, ...] = ("fid",), dataset: str | None = None, split: str = "train",
                   n_reference: int | None = None, extractor: str = "auto", batch_size: int = 256,
                   feature_batch_size: int = 50, guidance_scale: float = 1.0, eta: float = 0.0, seed: int = 0,
                   clip_x0: bool = False, ema: bool = True, device: str | torch.device | None = None,
                   cache_dir: str | Path | None = None, out: str | Path | None = None, progress: bool = True,
                   vae: str | Path | None = None) -> dict:
    """Sample ``n`` images from ``checkpoint`` and score them against ``n_reference`` (default ``n``) images
    of the training dataset (or ``dataset``); returns the results and writes them as JSON to ``out``.

    Latent-diffusion samples are decoded by the checkpoint's VAE first: ``vae``, else the file recorded at
    training time, either checked against the sha256 the checkpoint records. The reference statistics are
    cached. Everything that can fail on bad input (the output path, the device, the checkpoint, its VAE, the
    reference dataset, its split and size) is checked, and the reference prepared, before the first sample
    is drawn.
    """
    unknown = set(metrics) - set(METRICS)
    if not metrics or unknown:
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {tuple(metrics)}")
    if sampler == "ddpm" and steps is not None:
        steps = None  # DDPM always runs all T steps
    elif sampler != "ddpm" and (steps is None or steps < 1):
        raise ValueError(f"steps must be >= 1 for sampler {sampler!r}, got {steps!r}")
    if n < 2 or batch_size < 1:
        raise ValueError(f"n must be >= 2 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    if n_reference is not None and n_reference < 2:
        raise ValueError(f"n_reference must be >= 2 (or None: n), got {n_reference}")
    if out is not None:
        check_writable(out, "out")
    device = pick_device(device)
    model, schedule, info = load_model(checkpoint, ema=ema, device=device)
    decoder = None
    if info.get("vae"):  # latent diffusion: the VAE that decodes the samples, found and checked first
        decoder = load_vae(check_vae_file(vae if vae is not None else info["vae"], info), device=device)
    elif vae is not None:
        raise ValueError(f"vae: {checkpoint} is a pixel-space model, which takes no VAE; got {str(vae)!r}")
    model = model.to(memory_format=torch.channels_last)  # 1.2x images/s on a CPU too, and what CUDA wants
    config = info.get("config") or {}
    dataset = dataset or config.get("dataset")
    if not dataset:
        raise ValueError(f"{checkpoint} does not name its dataset: pass dataset=")
    check_generate_options(info, guidance_scale=guidance_scale, clip_x0=clip_x0, sampler=sampler)
    n_reference = n if n_reference is None else n_reference
    net = get_extractor(extractor, device)
    ref_kw = dict(extractor=net, cache_dir=cache_dir, batch_size=feature_batch_size, device=device,
                  progress=progress, **reference_options(config, dataset, checkpoint))
    # The reference first: a bad split, size or missing dataset fails before any sampling.
    if "kid" in metrics:  # KID needs the reference features, which then serve FID too
        ref = reference_features(dataset, split, n_reference, **ref_kw)
    else:
        ref = reference_stats(dataset, split, n_reference, **ref_kw)

    start = time.perf_counter()
    images = generate(model, schedule, info, sampler=sampler, steps=steps, n=n, batch_size=batch_size, seed=seed,
                      guidance_scale=guidance_scale, eta=eta, device=device, progress=progress, clip_x0=clip_x0)
    if decoder is not None:  # latent diffusion: the samples are latents of this VAE; score the decoded images
        images = decode_latents(images, decoder, batch_size=batch_size, device=device)
    sampling_seconds = time.perf_counter() - start
    start = time.perf_counter()
    features = extract_features(images, net, batch_size=feature_batch_size, progress=progress)
    feature_seconds = time.perf_counter() - start

    result = {
        "checkpoint": str(checkpoint), "step": info.get("step"), "weights": info.get("weights"),
        "sampler": sampler, "steps": steps, "eta": eta if sampler == "ddim" else None,
        "guidance_scale": guidance_scale, "clip_x0": clip_x0, "n": n, "seed": seed,
        "vae": str(vae) if vae is not None else info.get("vae"), "vae_sha256": info.get("vae_sha256"),
        "dataset": dataset, "split": split, "n_reference": n_reference, "extractor": net.name,
        "sampling_seconds": sampling_seconds, "images_per_second": n / sampling_seconds,
        "feature_seconds": feature_seconds,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if "kid" in metrics:
            kid = kid_from_features(features, ref)
            result.update(kid=kid.kid, kid_std=kid.kid_std, kid_subset_size=kid.subset_size)
            fid = fid_from_features(features, ref) if "fid" in metrics else None
        else:
            fid = fid_from_stats(features.stats(), ref)
        if fid is not None:
            result.update(fid=fid.fid, fid_method=fid.method, frechet_seconds=fid.seconds)
    result["warnings"] = [str(w.message) for w in caught]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    result["machine"] = machine_info(device)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result
