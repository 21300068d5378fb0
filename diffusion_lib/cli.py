"""Command line: ``python -m diffusion_lib train | sample | evaluate``.

    python -m diffusion_lib train --config configs/fashion_cpu.yaml [--set key=value ...] [--resume [CKPT]]
    torchrun --nproc_per_node=2 -m diffusion_lib train --config ...        (DistributedDataParallel)
    python -m diffusion_lib sample --checkpoint runs/x/checkpoints/ckpt_00010000.pt \\
        --sampler ddim --steps 50 --n 64 --out grid.png [--guidance-scale 3 --class 7] [--seed 0]
    python -m diffusion_lib sample --checkpoint fashion_cfg --guidance-scale 3 --class 3   (a shipped model)
    python -m diffusion_lib sample --checkpoint runs/fashion_flow_cpu/checkpoints/ckpt_00003000.pt \
        --sampler flow_heun --steps 10                                       (a flow-matching model)

Subcommands live in a small registry: ``register_subcommand(name, help, add_arguments, run)``. Each
command's arguments and its run function are here; the work is done by the library (``training.run``,
``pipelines.generate``, ``pipelines.evaluate``), imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

# samplers.SAMPLERS' names, spelled out so that --help does not import torch
SAMPLER_NAMES = ("ddpm", "ddim", "dpm_solver", "flow_euler", "flow_heun")

@dataclass
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, help: str, add_arguments: Callable, run: Callable) -> None:
    """Add (or replace) subcommand ``name``; ``run(args)`` returns an exit code or None."""
    SUBCOMMANDS[name] = Subcommand(help, add_arguments, run)


# ------------------------------------------------------------------------------------------ train
def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/); omitted: the TrainConfig defaults")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config key (value parsed as YAML; model_overrides.dropout=0 sets "
                        "one entry of a dict key); repeatable")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from the latest checkpoint in output_dir (or from CKPT); "
                        "starts fresh when there is none yet")


def _train(args: argparse.Namespace) -> int:
    from .training import load_config, train

    overrides = [item for group in args.overrides for item in group]
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in result.items() if k != "history"}
        print(json.dumps(summary, indent=1))
    return 0


# ----------------------------------------------------------------------------------------- sample
def _model_arguments(p: argparse.ArgumentParser) -> None:
    """--checkpoint and --vae, the same for sample and evaluate."""
    p.add_argument("--checkpoint", required=True,
                   help="a training checkpoint (.pt) or a shipped model's name (fashion_cfg, ...: found or fetched)")
    p.add_argument("--vae", default=None,
                   help="latent models: the VAE file (or shipped name) that decodes the samples; default: the one "
                        "the checkpoint names by sha256, found or fetched like a shipped model. A VAE with another "
                        "sha256 is refused")


def _sampler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", default=None, choices=SAMPLER_NAMES,
                   help="ddpm, ddim, dpm_solver for a diffusion checkpoint; flow_euler, flow_heun for a "
                        "flow-matching one (objective: flow); default ddim, or flow_euler for a flow checkpoint")
    p.add_argument("--steps", type=int, default=50, help="solver steps: one network call each (ddim, dpm_solver, "
                   "flow_euler), two (flow_heun); ddpm uses all T")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM η (0: deterministic)")


def _default_sampler(args: argparse.Namespace, info: dict) -> None:
    """No --sampler: the first-order ODE solver of the checkpoint's kind (ddim, or flow_euler for a flow model)."""
    if args.sampler is None:
        args.sampler = "flow_euler" if info.get("objective") == "flow" else "ddim"


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    _model_arguments(p)
    _sampler_arguments(p)
    p.add_argument("--clip-x0", action="store_true", help="clamp each step's x0 estimate to [-1, 1] (pixel models)")
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: --n)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write")
    p.add_argument("--nrow", type=int, default=None,
                   help="images per grid row (default: one class per column, or ~sqrt(n))")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale w (1: conditional, 0: unconditional; Ho & Salimans' "
                        "weight is w - 1)")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class of every image (conditional models; default: classes in turn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")


def _sample(args: argparse.Namespace) -> int:
    import math

    import torch

    from .checkpoint import check_writable, load_model, load_vae
    from .course.pretrained import resolve_checkpoint, resolve_vae
    from .device import pick_device
    from .latent import decode_latents
    from .pipelines.generate import generate
    from .viz import save_grid

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    batch_size = args.batch_size or args.n
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    check_writable(args.out, "--out")
    device = pick_device(args.device)
    model, schedule, info = load_model(resolve_checkpoint(args.checkpoint), ema=not args.no_ema, device=device)
    _default_sampler(args, info)
    vae_file = resolve_vae(info, args.vae)  # found and checked before any sampling
    vae = load_vae(vae_file, device=device) if vae_file is not None else None
    num_classes = info["num_classes"]
    labels = None
    if num_classes is None:
        if args.class_label is not None or args.guidance_scale != 1.0:
            raise ValueError("--class and --guidance-scale need a class-conditional model; "
                             f"{args.checkpoint} is unconditional")
    elif args.class_label is not None:
        if not 0 <= args.class_label < num_classes:
            raise ValueError(f"--class must be in [0, {num_classes - 1}] for this model, got {args.class_label}")
        labels = torch.full((args.n,), args.class_label)
    if args.clip_x0 and info["vae"]:
        raise ValueError("--clip-x0 clamps x0 to the pixel range [-1, 1]; this checkpoint samples VAE latents, "
                         "which are not bounded")
    images = generate(model, schedule, info, sampler=args.sampler, steps=args.steps, n=args.n, batch_size=batch_size,
                      seed=args.seed, guidance_scale=args.guidance_scale, eta=args.eta, device=device, progress=True,
                      clip_x0=args.clip_x0, labels=labels)
    if vae is not None:  # a latent-diffusion model: its samples are decoded by the VAE
        images = decode_latents(images, vae, device=device)
    one_class_per_column = num_classes is not None and args.class_label is None
    nrow = args.nrow or (num_classes if one_class_per_column else math.ceil(math.sqrt(args.n)))
    path = save_grid(images, args.out, nrow=nrow)
    print(f"wrote {args.n} samples ({args.sampler}, {info['weights']} weights, step {info['step']}) to {path}")
    return 0


# --------------------------------------------------------------------------------------- evaluate
def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from .pipelines.evaluate import METRICS

    _model_arguments(p)
    _sampler_arguments(p)
    p.add_argument("--n", type=int, default=10_000, help="number of samples (FID warns below 10 000)")
    p.add_argument("--metrics", nargs="+", default=["fid"], choices=METRICS)
    p.add_argument("--dataset", default=None, help="reference dataset (default: the checkpoint's)")
    p.add_argument("--split", default="train", help="reference split")
    p.add_argument("--n-reference", type=int, default=None, help="reference images (default: --n)")
    p.add_argument("--extractor", default="auto", help="auto, inception-v3-fid-torchscript (offline), "
                   "inception-v3-fid-torchmetrics (online) or random-projection-64 (smoke, not FID)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per sampler call")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale w (1: conditional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clip-x0", action="store_true", help="clamp each step's x0 estimate to [-1, 1] (pixel models)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default: $DIFFUSION_CACHE/fid "
                   "or ~/.cache/diffusion_lib/fid)")
    p.add_argument("--out", default=None, help="JSON file (default: eval_<sampler><steps>_n<n>.json next to "
                   "the checkpoint)")


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import check_writable, load_model
    from .course.pretrained import resolve_checkpoint, resolve_vae
    from .pipelines.evaluate import run_evaluation

    checkpoint = resolve_checkpoint(args.checkpoint)
    _, _, info = load_model(checkpoint)
    _default_sampler(args, info)
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


register_subcommand("train", "train a diffusion (or flow-matching: objective flow) model from a YAML config",
                    _train_arguments, _train)
register_subcommand("sample", "sample an image grid from a checkpoint", _sample_arguments, _sample)
register_subcommand("evaluate", "sample from a checkpoint and compute FID/KID against the training data (JSON)",
                    _evaluate_arguments, _evaluate)


# --------------------------------------------------------------------------------------- dispatch
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib",
                                     description="Train, sample and evaluate diffusion models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .training.trainer import NonFiniteLossError

    try:
        return SUBCOMMANDS[args.command].run(args) or 0
    except NonFiniteLossError as e:
        _print_error(args.command, e)
        return 1
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: its traceback is what a report needs
        _print_error(args.command, e)
        return 2


# Files the user named that are missing, unwritable or of the wrong kind; the message names them.
_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is bad input (printed as one line, exit 2) rather than a bug (traceback).

    Bad input is a file error, a checkpoint that cannot be used, a download that failed (offline, no
    answer), or a ValueError/TypeError raised by this library's own checks, which name the argument, the
    bad value and what is allowed. The same classes raised inside torch or another library are not
    checks of ours: they keep their traceback.
    """
    from .checkpoint import CheckpointError
    from .download import DownloadError

    if isinstance(e, (*_FILE_ERRORS, CheckpointError, DownloadError)):
        return True
    if not isinstance(e, (ValueError, TypeError)):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE + os.sep)


def _print_error(command: str, e: BaseException) -> None:
    """One line, as argparse reports a bad option: ``diffusion_lib <command>: error: <message>``."""
    message = " ".join(line.strip() for line in str(e).splitlines())
    print(f"diffusion_lib {command}: error: {message}", file=sys.stderr)
