"""``python -m diffusion_lib evaluate``: sample from a checkpoint, score the samples, write JSON.

    python -m diffusion_lib evaluate --checkpoint runs/x/checkpoints/ckpt_00010000.pt \\
        --sampler ddim --steps 50 --n 10000 [--metrics fid kid] [--out eval.json]
"""

from __future__ import annotations

import argparse
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
    check_generate_options(info, guidance_scale=guidance_scale, clip_x0=clip_x0)
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a training checkpoint (.pt) or a shipped model's name (fashion_cfg, ...: found or fetched)")
    p.add_argument("--vae", default=None,
                   help="latent models: the VAE file (or shipped name) that decodes the samples; default: the one "
                        "the checkpoint names by sha256, found or fetched like a shipped model. A VAE with another "
                        "sha256 is refused")
    p.add_argument("--sampler", default="ddim", choices=("ddpm", "ddim", "dpm_solver"))
    p.add_argument("--steps", type=int, default=50, help="network calls (ddim, dpm_solver); ddpm uses all T")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")
    p.add_argument("--n", type=int, default=10_000, help="number of samples (FID warns below 10 000)")
    p.add_argument("--metrics", nargs="+", default=["fid"], choices=METRICS)
    p.add_argument("--dataset", default=None, help="reference dataset (default: the checkpoint's)")
    p.add_argument("--split", default="train", help="reference split")
    p.add_argument("--n-reference", type=int, default=None, help="reference images (default: --n)")
    p.add_argument("--extractor", default="auto", help="auto, inception-v3-fid-torchscript (offline), "
                   "inception-v3-fid-torchmetrics (online) or random-projection-64 (smoke, not FID)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per sampler call")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance s (1: conditional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-x0", action="store_true", help="clamp each step's x0 estimate to [-1, 1] (pixel models)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default: $DIFFUSION_CACHE/fid "
                   "or ~/.cache/diffusion_lib/fid)")
    p.add_argument("--out", default=None, help="JSON file (default: eval_<sampler><steps>_n<n>.json next to "
                   "the checkpoint)")


def run_from_args(args: argparse.Namespace) -> int:
    # The command line finds shipped models by name like the book does (course.pretrained).
    from ..course.pretrained import resolve_checkpoint, resolve_vae

    checkpoint = resolve_checkpoint(args.checkpoint)
    _, _, info = load_model(checkpoint)
    vae = resolve_vae(info, args.vae)
    steps = None if args.sampler == "ddpm" else args.steps
    out = args.out or Path(args.checkpoint).with_name(
        f"eval_{args.sampler}{steps or ''}_n{args.n}_{Path(args.checkpoint).stem}.json")
    check_writable(out, "--out")
    result = run_evaluation(checkpoint, sampler=args.sampler, steps=steps, n=args.n, metrics=tuple(args.metrics),
                            dataset=args.dataset, split=args.split, n_reference=args.n_reference,
                            extractor=args.extractor, batch_size=args.batch_size,
                            guidance_scale=args.guidance_scale, eta=args.eta, seed=args.seed, clip_x0=args.clip_x0,
                            ema=not args.no_ema,
                            device=None if args.device == "auto" else args.device, cache_dir=args.cache_dir,
                            out=out, vae=vae)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=str))
    print(f"wrote {out}")
    return 0


def register_cli(register) -> None:
    """Called by diffusion_lib.cli: adds the ``evaluate`` subcommand."""
    register("evaluate", "sample from a checkpoint and compute FID/KID against the training data (JSON)",
             add_arguments, run_from_args)
