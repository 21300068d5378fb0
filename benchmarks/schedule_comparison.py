"""Linear against cosine noise schedule: sample quality against training steps, same model, same budget.

Two training runs that differ only in the schedule (Ho et al.'s linear β 1e-4 → 0.02 against Nichol &
Dhariwal's cosine, s = 0.008): same UNet, data order, seed, batch, learning rate and steps, each saving a
checkpoint every ``checkpoint_every`` steps. Every checkpoint's EMA model then draws the same noise
through DDIM-50 (η = 0), and the samples are scored against the Fashion-MNIST test set with the standard
FID Inception: KID (on the CPU, labelled KID) or FID (``--metric fid``, the default on CUDA; KID is
reported too, from the same features).

Sizes: ``small`` (CPU, minutes to train: fashion_small at half width, batch 32) and ``full``
(configs/fashion_cpu.yaml and fashion_cpu_cosine.yaml, batch 128, 6,000 steps: minutes on one GPU).

    python benchmarks/schedule_comparison.py --size small                      # train both, then score
    python benchmarks/schedule_comparison.py --size small --parts train        # in pieces: train ...
    python benchmarks/schedule_comparison.py --size small --parts eval --n 500  # ... then score
    python benchmarks/schedule_comparison.py --size full --metric fid --n 2000 # on a GPU

Runs live in ``--runs-dir`` (default runs/schedule_comparison/<size>/{linear,cosine}); training resumes,
and checkpoints already scored with the same settings are skipped, so the study can run in pieces.
Results: benchmarks/results/schedule_comparison_<size>.json (machine and date with every point).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SCHEDULES = ("linear", "cosine")
CONFIGS = {"linear": REPO / "configs" / "fashion_cpu.yaml", "cosine": REPO / "configs" / "fashion_cpu_cosine.yaml"}
# What the two runs share, per size. small: the notebooks' cpu-profile model (pretrained._CPU_MODEL).
SIZES = {
    "small": ["model_overrides={base_channels: 16, channel_mult: [1, 2, 2], attention_levels: [2], dropout: 0.0}",
              "batch_size=32", "lr=2e-3", "warmup_steps=50", "ema_decay=0.995", "max_steps=1200",
              "checkpoint_every=200", "device=cpu", "num_threads=1", "log_every=25"],
    "full": ["batch_size=128", "lr=5e-4", "warmup_steps=200", "ema_decay=0.999", "max_steps=6000",
             "checkpoint_every=1000", "log_every=50"],
}
COMMON = ["keep_last=1000", "sample_every=0", "tensorboard=false", "seed=0"]


def run_config(size: str, schedule: str, runs_dir: Path, extra: list[str]):
    from diffusion_lib.training.config import load_config

    overrides = SIZES[size] + COMMON + [f"output_dir={runs_dir / schedule}"] + extra
    return load_config(CONFIGS[schedule], overrides)


def train_runs(args, runs_dir: Path) -> dict:
    from diffusion_lib.training import train

    summaries = {}
    for schedule in args.schedules:
        config = run_config(args.size, schedule, runs_dir, args.set)
        print(f"training {schedule}: {config.max_steps} steps into {config.output_dir}", flush=True)
        summary = train(config, resume=True)
        summaries[schedule] = {"steps": summary.get("step"), "wall_time_s": summary.get("wall_time_s")}
    return summaries


def evaluate_checkpoint(path: Path, args, device, net, refs: dict) -> dict:
    from diffusion_lib.checkpoint import load_model
    from diffusion_lib.metrics import (
        extract_features,
        fid_from_stats,
        kid_from_features,
    )
    from diffusion_lib.pipelines.generate import generate

    model, schedule, info = load_model(path, ema=True, device=device)
    start = time.perf_counter()
    images = generate(model, schedule, info, sampler="ddim", steps=args.sampler_steps, n=args.n,
                      batch_size=args.sample_batch, seed=args.seed, guidance_scale=1.0, eta=0.0, device=device,
                      progress=True)
    sampling = time.perf_counter() - start
    feats = extract_features(images, net, batch_size=args.feature_batch, progress=True)
    kid = kid_from_features(feats, refs["kid"])
    point = {"step": info["step"], "checkpoint": path.name, "n": args.n, "sampling_seconds": sampling,
             "kid": kid.kid, "kid_std": kid.kid_std, "kid_n_reference": kid.n_reference,
             "kid_subset_size": kid.subset_size}
    if "fid" in refs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the small-sample warning: recorded as n below
            fid = fid_from_stats(feats.stats(), refs["fid"])
        point.update(fid=fid.fid, fid_n_reference=fid.n_reference)
    return point


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="default: full on CUDA, small on CPU")
    p.add_argument("--parts", nargs="+", default=["train", "eval"], choices=("train", "eval"))
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="training overrides applied to both runs (keep them equal), e.g. max_steps=2000")
    p.add_argument("--runs-dir", default=None, help="default runs/schedule_comparison/<size>")
    p.add_argument("--metric", choices=("kid", "fid"), default=None, help="default: fid on CUDA, kid on CPU")
    p.add_argument("--n", type=int, default=None, help="samples per checkpoint (default: 2000 for fid, 500 for kid)")
    p.add_argument("--kid-reference", type=int, default=1000, help="test images for KID")
    p.add_argument("--fid-reference", type=int, default=None, help="test images for FID statistics (default all)")
    p.add_argument("--every", type=int, default=1, help="score every k-th checkpoint (the last always)")
    p.add_argument("--sampler-steps", type=int, default=50, help="DDIM steps (eta 0) for the samples")
    p.add_argument("--sample-batch", type=int, default=250)
    p.add_argument("--feature-batch", type=int, default=50)
    p.add_argument("--extractor", default="auto", help="auto (the FID Inception) or random-projection-64 (tests)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: the same noise for both schedules")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="default benchmarks/results/schedule_comparison_<size>.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from diffusion_lib.checkpoint import list_checkpoints
    from diffusion_lib.metrics import get_extractor, reference_features, reference_stats
    from diffusion_lib.device import pick_device
    from diffusion_lib.pipelines.evaluate import dataset_options
    from diffusion_lib.pipelines.machine import machine_info

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    args.metric = args.metric or ("fid" if device.type == "cuda" else "kid")
    args.n = args.n or (2000 if args.metric == "fid" else 500)
    runs_dir = Path(args.runs_dir or REPO / "runs" / "schedule_comparison" / args.size)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"schedule_comparison_{args.size}.json")
    data = json.loads(out.read_text()) if out.is_file() else {}
    data.update(benchmark="schedule_comparison", size=args.size,
                shared_settings=SIZES[args.size] + COMMON + list(args.set))
    data.setdefault("runs", {})
    data.setdefault("commands", []).append(" ".join(["python", "benchmarks/schedule_comparison.py",
                                                     *(sys.argv[1:] if argv is None else argv)]))
    if "train" in args.parts:
        for schedule, summary in train_runs(args, runs_dir).items():
            data["runs"].setdefault(schedule, {}).update(training=summary, training_machine=machine_info(device))
    if "eval" in args.parts:
        net = get_extractor(args.extractor, device)
        configs = {s: run_config(args.size, s, runs_dir, args.set) for s in args.schedules}
        first = configs[args.schedules[0]]
        options = dataset_options({"image_size": first.image_size, "dataset_kwargs": first.dataset_kwargs,
                                    "data_root": first.data_root})
        ref_kw = dict(extractor=net, batch_size=args.feature_batch, device=device, **options)
        refs = {"kid": reference_features(first.dataset, "test", args.kid_reference, **ref_kw)}
        if args.metric == "fid":
            refs["fid"] = reference_stats(first.dataset, "test", args.fid_reference, **ref_kw)
        data["evaluation"] = {"sampler": f"ddim{args.sampler_steps} eta=0", "n": args.n, "metric": args.metric,
                              "extractor": net.name, "reference": f"{first.dataset} test", "seed": args.seed,
                              "kid_reference": refs["kid"].n,
                              "fid_reference": refs["fid"].n if "fid" in refs else None}
        for schedule in args.schedules:
            ckpts = list_checkpoints(configs[schedule].output_dir)
            chosen = [c for i, c in enumerate(ckpts) if i % args.every == args.every - 1 or c == ckpts[-1]]
            run = data["runs"].setdefault(schedule, {})
            points = {p["checkpoint"]: p for p in run.get("points", [])}
            for path in chosen:
                old = points.get(path.name)
                if old and old["n"] == args.n and old.get("extractor") == net.name and (
                        args.metric == "kid" or "fid" in old):
                    continue
                print(f"scoring {schedule} {path.name} ...", flush=True)
                point = evaluate_checkpoint(path, args, device, net, refs)
                point.update(extractor=net.name, machine=machine_info(device))
                points[path.name] = point
                run["points"] = sorted(points.values(), key=lambda p: p["step"])
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(data, indent=1, default=str) + "\n")
                fid = f", FID {point['fid']:.2f}" if "fid" in point else ""
                print(f"  step {point['step']}: KID x1000 {1000 * point['kid']:.2f}{fid}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if all(math.isfinite(p.get("kid", 0)) for r in data["runs"].values() for p in r.get("points", [])) else 1


if __name__ == "__main__":
    sys.exit(main())
