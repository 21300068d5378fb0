"""The source report's efficiency study, measured: DDPM-1000 against DDIM-250/100/50/20/10 and
DPM-Solver++(2M) at 20 and 10 model calls, all with one trained model.

For each sampler ("arm"):

- **timing**: wall time per image from one batch of 64 (after a one-forward warm-up) and the model
  calls actually made, each arm in a FRESH subprocess so that its peak memory is its own. Peak memory
  is ``torch.cuda.max_memory_allocated`` after a reset on CUDA; on the CPU the peak resident set
  (``VmHWM`` of ``/proc/self/status``), reported raw next to the baseline, the same reading in the same
  process after it loaded the model and before any forward pass (imports, weights, allocator);
- **quality**: FID-2k (2,000 samples against the Fashion-MNIST test set's Inception statistics, cached by
  ``metrics.reference_stats``) for the arms with at most ``--fid-max-nfe`` model calls (100 on the CPU,
  every arm on CUDA), and for every arm KID on its first 500 samples against 1,000 test images (labelled
  KID: it is not FID). ``--clip-x0`` clips every step's x̂0 to [-1, 1] as Ho et al.'s sampler (and the
  shipped pixel models' cards) do. Samples and their features are kept in ``--work-dir``, so an
  interrupted run resumes and the study can run in pieces.

The two claims checked (ARCHITECTURE.md, "Facts"): "DDIM-250 is 4x faster than DDPM-1000" (the ratio of model calls,
1000 / 250) and "DDIM uses ~30 % less peak memory" (at equal batch size both samplers hold the same
tensors, so the peak should be equal); ``timing.claims`` in the JSON compares DDPM with the DDIM arm of
T/4 steps.

    python benchmarks/efficiency.py --pretrained fashion_ddpm_linear                    # everything
    python benchmarks/efficiency.py --parts timing --arms ddim10 dpm10 --batch 64       # a piece
    python benchmarks/efficiency.py --parts quality --arms ddim50 --n-fid 2000 --n-kid 500
    python benchmarks/efficiency.py --checkpoint runs/x/checkpoints/ckpt_00001500.pt --threads 1

Every piece merges its arms into ``--out`` (default benchmarks/results/efficiency.json), each with the
machine it ran on; a file made from another checkpoint is refused (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

DEFAULT_ARMS = ("ddpm1000", "ddim250", "ddim100", "ddim50", "ddim20", "ddim10", "dpm20", "dpm10")
SAMPLER_NAMES = {"ddpm": "ddpm", "ddim": "ddim", "dpm": "dpm_solver"}
ARM = re.compile(r"^(ddpm|ddim|dpm)(\d+)?$")
RESULTS = REPO / "benchmarks" / "results" / "efficiency.json"


# ------------------------------------------------------------------------------------------ arms
def parse_arm(name: str, num_timesteps: int) -> dict:
    """"ddim250" -> {"arm", "sampler", "steps", "nfe"}; "ddpm" (or "ddpm<T>") runs all T steps."""
    m = ARM.match(name)
    if not m:
        raise ValueError(f"arm must be ddpm[<T>], ddim<steps> or dpm<steps>, got {name!r}")
    kind, steps = m.group(1), m.group(2)
    if kind == "ddpm":
        if steps is not None and int(steps) != num_timesteps:
            raise ValueError(f"DDPM always takes all T = {num_timesteps} steps; got arm {name!r}")
        return {"arm": name, "sampler": "ddpm", "steps": None, "nfe": num_timesteps}
    if steps is None or not 1 <= int(steps) <= num_timesteps:
        raise ValueError(f"arm {name!r} needs a step count between 1 and T = {num_timesteps}")
    return {"arm": name, "sampler": SAMPLER_NAMES[kind], "steps": int(steps), "nfe": int(steps)}


def sampler_kwargs(arm: dict) -> dict:
    return {} if arm["sampler"] == "ddpm" else {"num_steps": arm["steps"]}


class CallCounter(torch.nn.Module):
    """The model, counting its forward calls (the NFE a sampler really spent)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return self.model(x, t, y)


# ------------------------------------------------------------------------------------------ helpers
def resolve_checkpoint(args) -> Path:
    if args.checkpoint:
        path = Path(args.checkpoint)
    else:
        from diffusion_lib.course.pretrained import find_checkpoint

        path = find_checkpoint(args.pretrained)
        if path is None:
            raise SystemExit(f"no shipped checkpoint {args.pretrained!r} (see issue 8 / configs/README.md); "
                             "pass --checkpoint PATH")
    if not path.is_file():
        raise SystemExit(f"checkpoint {path} does not exist")
    return path


def load(path: Path, device: torch.device):
    from diffusion_lib.checkpoint import load_model

    model, schedule, info = load_model(path, ema=True, device=device)
    return model.float().eval(), schedule, info


# ------------------------------------------------------------------------------------------ timing
def time_one_arm(checkpoint: Path, arm_name: str, batch: int, device: torch.device, seed: int,
                 repeats: int) -> dict:
    """Run in a fresh process (``--child``): load, warm up, sample one batch ``repeats`` times."""
    from diffusion_lib.pipelines.machine import peak_rss_mib
    from diffusion_lib.samplers import sample

    cuda = device.type == "cuda"
    model, schedule, info = load(checkpoint, device)
    if cuda:
        torch.cuda.synchronize()
    baseline = {"rss_mib": peak_rss_mib()}
    if cuda:
        baseline["cuda_allocated_mib"] = torch.cuda.memory_allocated(device) / 2**20
    arm = parse_arm(arm_name, schedule.num_timesteps)
    counted = CallCounter(model)
    shape = (batch, *info["image_shape"])
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.inference_mode():
        counted(x_T, torch.full((batch,), schedule.num_timesteps - 1, device=device))  # warm-up forward
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    walls, cpus = [], []
    for _ in range(repeats):
        counted.calls = 0
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            x0 = sample(counted, schedule, arm["sampler"], x_T=x_T.clone(), prediction_type=info["prediction_type"],
                        **sampler_kwargs(arm))
        if cuda:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    wall = min(walls)
    result = {
        **arm, "batch": batch, "model_calls": counted.calls, "repeats": repeats,
        "wall_seconds": wall, "wall_seconds_all": walls, "cpu_seconds": cpus[walls.index(wall)],
        "seconds_per_image": wall / batch, "ms_per_model_call": 1000 * wall / counted.calls,
        "finite": bool(torch.isfinite(x0).all()),
        "baseline": baseline,
        "peak": {"rss_mib": peak_rss_mib()},
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["peak"]["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def run_child(checkpoint: Path, arm: str, args, device: torch.device) -> dict:
    """``time_one_arm`` in a fresh interpreter; its last stdout line is the JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--checkpoint", str(checkpoint),
           "--batch", str(args.batch), "--device", str(device), "--seed", str(args.seed),
           "--threads", str(args.threads), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"timing child for {arm} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ quality
def samples_for(arm: dict, n: int, model, schedule, info, args, device, folder: Path) -> tuple[torch.Tensor, dict]:
    """``n`` uint8 samples of ``arm`` (seeded; the first k of a larger set equal a run of k), cached, and
    where and how fast they were drawn (``--parts samples`` on a GPU, the scores later on a CPU)."""
    from diffusion_lib.pipelines.machine import machine_info
    from diffusion_lib.metrics import to_uint8
    from diffusion_lib.pipelines.generate import generate

    name = f"samples_{arm['arm']}{'_clip' if args.clip_x0 else ''}_seed{args.seed}_b{args.sample_batch}"
    for path in sorted(folder.glob(f"{name}_n*.pt")):
        cached = torch.load(path, weights_only=True)
        if cached.shape[0] >= n:
            origin = path.with_suffix(".json")
            return cached[:n], json.loads(origin.read_text()) if origin.is_file() else {}
    start = time.perf_counter()
    images = generate(model, schedule, info, sampler=arm["sampler"], steps=arm["steps"], n=n,
                      batch_size=args.sample_batch, seed=args.seed, guidance_scale=1.0, eta=0.0, device=device,
                      progress=True, clip_x0=args.clip_x0)
    origin = {"sampling_seconds": time.perf_counter() - start, "n": n, "machine": machine_info(device)}
    images = to_uint8(images)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(images, folder / f"{name}_n{n}.pt")
    write_results(folder / f"{name}_n{n}.json", origin)
    return images, origin


def features_for(arm: dict, images: torch.Tensor, net, args, folder: Path):
    from diffusion_lib.metrics import FeatureSet, extract_features

    n = images.shape[0]
    clip = "_clip" if args.clip_x0 else ""
    path = folder / f"features_{arm['arm']}{clip}_seed{args.seed}_b{args.sample_batch}_n{n}_{net.name}.pt"
    if path.is_file():
        return FeatureSet(torch.load(path, weights_only=True), net.name)
    feats = extract_features(images, net, batch_size=args.feature_batch, progress=True)
    torch.save(feats.features, path)
    return feats


def sample_count(arm: dict, args) -> int:
    """Samples an arm needs: for FID and KID, or for KID alone above ``--fid-max-nfe`` model calls."""
    return max(args.n_fid, args.n_kid) if arm["nfe"] <= args.fid_max_nfe else args.n_kid


def quality_one_arm(arm: dict, model, schedule, info, args, device, net, folder: Path, refs: dict) -> dict:
    from diffusion_lib.metrics import fid_from_stats, kid_from_features

    with_fid = arm["nfe"] <= args.fid_max_nfe
    n = sample_count(arm, args)
    images, origin = samples_for(arm, n, model, schedule, info, args, device, folder)
    start = time.perf_counter()
    feats = features_for(arm, images, net, args, folder)
    extraction = time.perf_counter() - start
    kid = kid_from_features(feats[:args.n_kid], refs["kid"])
    result = {**arm, "n_samples": n, "sample_batch": args.sample_batch, "seed": args.seed, "clip_x0": args.clip_x0,
              "sampling_seconds": origin.get("sampling_seconds"),
              "sampled_on": origin.get("machine", {}).get("device_name"), "feature_seconds": extraction,
              "kid": {"label": f"KID-{args.n_kid} (x1000: {1000 * kid.kid:.2f})", "value": kid.kid,
                      "std": kid.kid_std, "n": args.n_kid, "n_reference": kid.n_reference,
                      "subsets": kid.subsets, "subset_size": kid.subset_size, "extractor": kid.extractor},
              "fid": None}
    if with_fid:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fid = fid_from_stats(feats[:args.n_fid].stats(), refs["fid"])
        result["fid"] = {"label": f"FID-{args.n_fid // 1000}k" if args.n_fid % 1000 == 0 else f"FID-{args.n_fid}",
                         "value": fid.fid, "n": fid.n_samples, "n_reference": fid.n_reference,
                         "extractor": fid.extractor, "frechet_seconds": fid.seconds,
                         "warnings": [str(w.message) for w in caught]}
    return result


# ------------------------------------------------------------------------------------------ results
def claims(timing: dict) -> dict | None:
    """The report's two claims, from the DDPM arm and the DDIM arm with T/4 steps (DDIM-250) when both exist."""
    ddpm = next((v for v in timing.values() if v["sampler"] == "ddpm"), None)
    ddim = ddpm and next((v for v in timing.values() if v["sampler"] == "ddim" and 4 * v["steps"] == ddpm["nfe"]), None)
    if ddpm is None or ddim is None:
        return None
    key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in ddpm["peak"] else "rss_mib"
    base = "cuda_allocated_mib" if key.startswith("cuda") else "rss_mib"
    above = {"ddpm": ddpm["peak"][key] - ddpm["baseline"][base], "ddim": ddim["peak"][key] - ddim["baseline"][base]}
    return {
        "ddpm_arm": ddpm["arm"], "ddim_arm": ddim["arm"], "batch": ddpm["batch"],
        "model_call_ratio": ddpm["model_calls"] / ddim["model_calls"],
        "wall_time_ratio": ddpm["wall_seconds"] / ddim["wall_seconds"],
        "cpu_time_ratio": ddpm["cpu_seconds"] / ddim["cpu_seconds"],
        "memory_measure": key,
        "peak_memory_mib": {"ddpm": ddpm["peak"][key], "ddim": ddim["peak"][key]},
        "peak_memory_change": ddim["peak"][key] / ddpm["peak"][key] - 1,
        "peak_above_baseline_mib": above,
        "peak_above_baseline_change": above["ddim"] / above["ddpm"] - 1 if above["ddpm"] > 0 else None,
    }


def read_results(path: Path, checkpoint_sha: str, fresh: bool) -> dict:
    if fresh or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    old = data.get("model", {}).get("sha256")
    if old and old != checkpoint_sha:
        raise SystemExit(f"{path} holds results of another checkpoint (sha256 {old[:12]}...); pass --fresh to "
                         "start over or --out for another file")
    return data


def write_results(path: Path, data: dict) -> None:
    from diffusion_lib.checkpoint import atomic_write

    text = json.dumps(data, indent=1, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def describe_model(checkpoint: Path, info: dict, model, schedule, digest: str) -> dict:
    config = info.get("config") or {}
    return {"checkpoint": str(checkpoint.resolve().relative_to(REPO)) if checkpoint.resolve().is_relative_to(REPO)
            else str(checkpoint), "sha256": digest, "step": info.get("step"), "weights": info.get("weights"),
            "parameters": sum(p.numel() for p in model.parameters()), "image_shape": list(info["image_shape"]),
            "num_timesteps": schedule.num_timesteps, "schedule": config.get("schedule"),
            "prediction_type": info["prediction_type"], "dataset": config.get("dataset"),
            "model_preset": config.get("model")}


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None, help="a diffusion checkpoint (.pt)")
    src.add_argument("--pretrained", default="fashion_ddpm_linear", help="a shipped model's name (default)")
    p.add_argument("--parts", nargs="+", default=["timing", "quality"], choices=("timing", "samples", "quality"),
                   help="samples: only draw (and keep) the quality samples, e.g. on a GPU; quality scores them")
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS),
                   help="ddpm[<T>], ddim<steps>, dpm<steps> (DPM-Solver++(2M)); default: %(default)s")
    p.add_argument("--batch", type=int, default=64, help="timing batch (default 64)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per arm; the fastest is reported")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: steadier, and faster on a busy machine)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-fid", type=int, default=2000, help="samples for FID (default 2000: FID-2k)")
    p.add_argument("--n-kid", type=int, default=500, help="samples for KID (default 500)")
    p.add_argument("--kid-reference", type=int, default=1000, help="test images for KID (default 1000)")
    p.add_argument("--fid-reference", type=int, default=None, help="test images for FID statistics (default all)")
    p.add_argument("--fid-max-nfe", type=float, default=None,
                   help="FID only for arms with at most this many model calls (default: 100 on CPU, all on CUDA)")
    p.add_argument("--reference-split", default="test")
    p.add_argument("--extractor", default="auto", help="auto (the standard FID Inception) or random-projection-64 "
                   "(a smoke-test stand-in, NOT FID)")
    p.add_argument("--sample-batch", type=int, default=250, help="batch for generating quality samples")
    p.add_argument("--clip-x0", action="store_true",
                   help="quality samples with each step's x0 clipped to [-1, 1] (Ho et al.; pixel models only)")
    p.add_argument("--feature-batch", type=int, default=50)
    p.add_argument("--work-dir", default=str(REPO / "runs" / "efficiency"), help="samples and features (resumable)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--fresh", action="store_true", help="ignore (and replace) the results already in --out")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from diffusion_lib.device import pick_device
    from diffusion_lib.pipelines.machine import machine_info

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    checkpoint = resolve_checkpoint(args)
    if args.child:
        print(json.dumps(time_one_arm(checkpoint, args.child, args.batch, device, args.seed, args.repeats)))
        return 0
    from diffusion_lib.checkpoint import file_digest

    if args.fid_max_nfe is None:
        args.fid_max_nfe = math.inf if device.type == "cuda" else 100
    digest = file_digest(checkpoint)
    model, schedule, info = load(checkpoint, device)
    arms = [parse_arm(a, schedule.num_timesteps) for a in args.arms]  # fail early on a bad name
    out = Path(args.out)
    data = read_results(out, digest, args.fresh)
    data.update(benchmark="efficiency", model=describe_model(checkpoint, info, model, schedule, digest))
    data.setdefault("timing", {}).setdefault("arms", {})
    data.setdefault("quality", {}).setdefault("arms", {})
    data.setdefault("commands", []).append(" ".join(["python", "benchmarks/efficiency.py", *(argv or sys.argv[1:])]))

    if "timing" in args.parts:
        data["timing"]["method"] = (
            "one batch per arm in a fresh subprocess after one warm-up forward; wall and CPU seconds of the "
            "sampler call; memory: CUDA max_memory_allocated after a reset, or on CPU the process's VmHWM "
            "(peak resident set) next to the baseline read after loading the model, before any forward")
        for arm in arms:
            print(f"timing {arm['arm']} (batch {args.batch}, {arm['nfe']} model calls) ...", flush=True)
            result = run_child(checkpoint, arm["arm"], args, device)
            result["machine"] = machine_info(device)
            data["timing"]["arms"][arm["arm"]] = result
            data["timing"]["claims"] = claims(data["timing"]["arms"])
            write_results(out, data)
            print(f"  {result['wall_seconds']:.1f} s, {result['seconds_per_image']:.3f} s/image, "
                  f"{result['model_calls']} calls, peak {result['peak']}", flush=True)

    folder = Path(args.work_dir) / digest[:12]
    if "samples" in args.parts:
        for arm in arms:
            print(f"samples {arm['arm']} ({sample_count(arm, args)}) ...", flush=True)
            samples_for(arm, sample_count(arm, args), model, schedule, info, args, device, folder)
        write_results(out, data)  # the command, for the record

    if "quality" in args.parts:
        from diffusion_lib.metrics import (
            get_extractor,
            reference_features,
            reference_stats,
        )
        from diffusion_lib.pipelines.evaluate import dataset_options

        net = get_extractor(args.extractor, device)
        dataset = (info.get("config") or {}).get("dataset")
        options = dataset_options(info.get("config") or {})
        ref_kw = dict(extractor=net, batch_size=args.feature_batch, device=device, **options)
        refs = {"kid": reference_features(dataset, args.reference_split, args.kid_reference, **ref_kw)}
        if any(a["nfe"] <= args.fid_max_nfe for a in arms):
            refs["fid"] = reference_stats(dataset, args.reference_split, args.fid_reference, **ref_kw)
        data["quality"]["reference"] = {"dataset": dataset, "split": args.reference_split, "options": options,
                                        "kid_n": refs["kid"].n, "fid_n": refs["fid"].n if "fid" in refs else None,
                                        "extractor": net.name}
        for arm in arms:
            print(f"quality {arm['arm']} ...", flush=True)
            result = quality_one_arm(arm, model, schedule, info, args, device, net, folder, refs)
            result["machine"] = machine_info(device)
            data["quality"]["arms"][arm["arm"]] = result
            write_results(out, data)
            fid = f", {result['fid']['label']} {result['fid']['value']:.2f}" if result["fid"] else ""
            print(f"  {result['kid']['label']}{fid}", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
