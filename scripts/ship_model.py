#!/usr/bin/env python
"""Copy a finished run's exported model into checkpoints/ with its model card (diffusion_lib.course.pretrained).

    python scripts/ship_model.py fashion_classifier runs/fashion_classifier/classifier.pt \
        --command "python -m diffusion_lib train --config configs/fashion_classifier.yaml"
    python scripts/ship_model.py fashion_vae runs/fashion_vae/vae.pt --command "..." [--fp16]
    python scripts/ship_model.py --manifest      # only rewrite the manifest (after editing a card)

The shipped file keeps only what loading needs (the EMA weights, the model's config, step, training
config and the run's measurements; no optimiser state); ``--fp16`` stores floating-point weights in
half precision (they are loaded back into float32). The card ``checkpoints/<name>.json`` records the
command, config, steps, wall time (summed over resumed segments of the run's log.csv), hardware, seed,
the file's sha256 and the measurements (test accuracy, reconstruction PSNR, latent scale, ...).
Shipping into the repository's checkpoints/ also rewrites the package's manifest
(diffusion_lib/course/shipped_models.json: each model's file, size and sha256, and its card's), from which
installs without checkpoints/ fetch and verify the models; tests/test_download.py checks it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from diffusion_lib.checkpoint import load_checkpoint, save_checkpoint
from diffusion_lib.course.pretrained import write_manifest
from diffusion_lib.latent import file_sha256

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "diffusion_lib" / "course" / "shipped_models.json"  # this checkout's, not an installed copy

DROP = ("optimizer", "scaler", "rng", "data_order", "model", "format", "version")
MEASUREMENTS = ("test_accuracy", "test_images", "latent_scale", "report")


def wall_time_s(log: Path) -> float | None:
    """Training wall time from a run's log.csv: elapsed_s restarts at each resume, so sum the segments."""
    if not log.is_file():
        return None
    total, last = 0.0, 0.0
    with open(log, newline="") as f:
        for row in csv.DictReader(f):
            elapsed = float(row["elapsed_s"])
            if elapsed < last:  # a new segment (resumed run)
                total += last
            last = elapsed
    return total + last


def update_manifest() -> None:
    """Rewrite the package's manifest from the repository's checkpoints/."""
    out = write_manifest(REPO / "checkpoints", MANIFEST)
    print(f"wrote {out.relative_to(REPO)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="checkpoint name (diffusion_lib.course.pretrained.NAMES)")
    p.add_argument("source", nargs="?", type=Path,
                   help="the run's exported file (vae.pt, classifier.pt) or a checkpoint")
    p.add_argument("--manifest", action="store_true", help="only rewrite the manifest from checkpoints/")
    p.add_argument("--command", help="the command that trained it (required to ship)")
    p.add_argument("--fp16", action="store_true", help="store floating-point weights in float16")
    p.add_argument("--hardware", default=None, help="a description of the machine (default: this one)")
    p.add_argument("--out-dir", type=Path, default=REPO / "checkpoints")
    args = p.parse_args()
    if args.manifest:
        update_manifest()
        return 0
    if args.name is None or args.source is None or args.command is None:
        p.error("shipping needs NAME, SOURCE and --command (or --manifest alone)")

    state = load_checkpoint(args.source)
    weights = state["ema"] if "ema" in state else state["model"]
    if args.fp16:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    slim = {k: v for k, v in state.items() if k not in DROP and k != "ema"}
    slim["ema"] = weights
    out = save_checkpoint(args.out_dir / f"{args.name}.pt", slim)
    run_dir = args.source.parent.parent if args.source.parent.name == "checkpoints" else args.source.parent
    config = state.get("config", {})
    card = {
        "name": args.name,
        "command": args.command,
        "config": config,
        "steps": state.get("step"),
        "wall_time_s": wall_time_s(run_dir / "log.csv"),
        "hardware": args.hardware or f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
                                     f"(torch threads: {config.get('num_threads') or 'default'}), "
                                     f"{platform.platform()}",
        "torch": state.get("torch_version", torch.__version__),
        "seed": config.get("seed"),
        "sha256": file_sha256(out),
        "size_bytes": out.stat().st_size,
        "weights": "EMA, " + ("float16" if args.fp16 else "float32"),
        "shipped": time.strftime("%Y-%m-%d"),
        **{k: state[k] for k in MEASUREMENTS if k in state},
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({k: v for k, v in card.items() if k != "config"}, indent=1))
    if args.out_dir.resolve() == (REPO / "checkpoints").resolve():
        update_manifest()
    return 0


if __name__ == "__main__":
    sys.exit(main())
