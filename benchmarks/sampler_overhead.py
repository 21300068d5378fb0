"""Per-step sampler overhead outside the model, next to diffusers' schedulers and a UNet forward.

For each sampler, the time per step with a model that costs nothing (it returns a fixed tensor), on
CPU, at batch 1 and 64 of 1×32×32 images; diffusers' DDIMScheduler.step (and its DDPM and
DPM-Solver++ schedulers) timed on the same tensors in the same run; and the UNet forward of the
"fashion_small" preset, so the overhead can be read as a fraction of a real step.

    python benchmarks/sampler_overhead.py [--out benchmarks/results/sampler_overhead.json]

diffusers is a benchmark-only dependency (pip install diffusers); it is imported only here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from diffusion_lib import NoiseSchedule, ddim_invert, ddim_sample, ddpm_sample, dpm_solver_sample
from diffusion_lib.pipelines.machine import machine_info

T = 1000
STEPS = 50
SHAPE = (1, 32, 32)


def timed(fn, repeats: int) -> dict:
    """Median and min wall time of fn() over `repeats` runs (after one warm-up run), in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times)}


def per_step_us(t: dict, steps: int) -> dict:
    return {k: round(v / steps * 1e6, 2) for k, v in t.items()}


def ours(batch: int, repeats: int) -> dict:
    schedule = NoiseSchedule.linear(T)
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = torch.randn_like(x) * 0.1

    def model(x_t, t, y=None):  # costs nothing: the overhead is all that is timed
        return out

    g = torch.Generator()
    runs = {
        "ddpm (1000 steps)": (lambda: ddpm_sample(model, schedule, x, generator=g), T),
        "ddim eta=0": (lambda: ddim_sample(model, schedule, x, num_steps=STEPS), STEPS),
        "ddim eta=1": (lambda: ddim_sample(model, schedule, x, num_steps=STEPS, eta=1.0, generator=g), STEPS),
        "ddim eta=0, v_prediction, clip_x0": (lambda: ddim_sample(model, schedule, x, num_steps=STEPS,
                                                                  prediction_type="v_prediction", clip_x0=True), STEPS),
        "dpm_solver++(2M)": (lambda: dpm_solver_sample(model, schedule, x, num_steps=STEPS), STEPS),
        "ddim_invert (0 iterations)": (lambda: ddim_invert(model, schedule, x, num_steps=STEPS, num_iterations=0), STEPS),
    }
    return {name: per_step_us(timed(fn, repeats), steps) for name, (fn, steps) in runs.items()}


def diffusers_steps(batch: int, repeats: int) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    out = torch.randn_like(x) * 0.1
    common = dict(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    g = torch.Generator()
    results = {}

    def loop(scheduler, steps, **step_kwargs):
        def run():
            scheduler.set_timesteps(steps)
            sample = x
            for t in scheduler.timesteps:
                sample = scheduler.step(out, t, sample, **step_kwargs).prev_sample
        return run

    ddim = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    results["DDIMScheduler.step eta=0"] = per_step_us(timed(loop(ddim, STEPS), repeats), STEPS)
    results["DDIMScheduler.step eta=1"] = per_step_us(timed(loop(ddim, STEPS, eta=1.0, generator=g), repeats), STEPS)
    ddpm = DDPMScheduler(**common, clip_sample=False)
    results["DDPMScheduler.step (1000 steps)"] = per_step_us(timed(loop(ddpm, T, generator=g), repeats), T)
    dpm = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    results["DPMSolverMultistepScheduler.step (2M)"] = per_step_us(timed(loop(dpm, STEPS), repeats), STEPS)
    return results


def agreement_with_diffusers() -> dict:
    """Max |ours − diffusers| after 50 DDIM steps (float64 inputs, a smooth stand-in model). diffusers
    keeps ᾱ in float32, so ~1e-5 is agreement; it also takes the previous timestep as t − T // S,
    which departs from the "linspace" timestep array (ARCHITECTURE.md: take it from the array)."""
    from diffusers import DDIMScheduler

    x = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def model(x_t, t, y=None):
        return torch.tanh(0.5 * x_t + t[:, None, None, None] / T)

    result = {}
    for spacing in ("leading", "trailing", "linspace"):
        scheduler = DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True, timestep_spacing=spacing)
        scheduler.set_timesteps(STEPS)
        sample = x
        for t in scheduler.timesteps:
            sample = scheduler.step(model(sample, torch.full((4,), int(t))), t, sample).prev_sample
        ours = ddim_sample(model, NoiseSchedule.linear(T), x, num_steps=STEPS, spacing=spacing)
        result[f"ddim {spacing}"] = float((ours - sample).abs().max())
    return result


def unet_forward(batch: int, repeats: int) -> dict:
    try:
        from diffusion_lib.models import UNet, UNetConfig

        model, label = UNet(UNetConfig.preset("fashion_small")), 'diffusion_lib UNet, preset "fashion_small"'
    except (ImportError, AttributeError, KeyError, ValueError):
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.SiLU(),
                                    torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
                                    torch.nn.Conv2d(64, 1, 3, padding=1))
        label = "stand-in 3-layer conv net (diffusion_lib UNet unavailable)"
    model.eval()
    x = torch.randn(batch, *SHAPE)
    t = torch.full((batch,), 500, dtype=torch.long)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        fn = (lambda: model(x, t)) if "UNet" in label else (lambda: model(x))
        res = timed(fn, repeats)
    return {"model": label, "parameters": params, "forward_ms": {k: round(v * 1e3, 3) for k, v in res.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampler_overhead.json"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for everything timed (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import diffusers

    report = {
        "machine": {**machine_info("cpu"), "diffusers": diffusers.__version__},
        "setup": {"num_train_timesteps": T, "num_steps": STEPS, "image_shape": list(SHAPE), "dtype": "float32",
                  "device": "cpu", "timing": f"per step = loop wall time / steps; median and min of {args.repeats} runs "
                  "after a warm-up; ours include the per-call setup (coefficients, timestep tensors)"},
        "results": {},
    }
    report["agreement_max_abs_diff_vs_diffusers_ddim"] = agreement_with_diffusers()
    for batch in (1, 64):
        print(f"batch {batch} ...", flush=True)
        unet = unet_forward(batch, repeats=max(3, args.repeats // (2 if batch > 1 else 1)))
        entry = {"ours_us_per_step": ours(batch, args.repeats), "diffusers_us_per_step": diffusers_steps(batch, args.repeats),
                 "unet": unet}
        fwd_us = unet["forward_ms"]["median"] * 1e3
        entry["ours_fraction_of_unet_forward"] = {k: round(v["median"] / fwd_us, 6) for k, v in entry["ours_us_per_step"].items()}
        report["results"][f"batch_{batch}"] = entry
        print(json.dumps(entry, indent=1), flush=True)
    report["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
