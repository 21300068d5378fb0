"""Training throughput: our UNet's training step next to diffusers' UNet2DModel, in the same run.

For each UNet preset we build diffusers' ``UNet2DModel`` with the same architecture (channels,
multipliers, residual blocks, attention levels, GroupNorm groups, dropout, one attention head);
its parameter count must lie within 5 % of ours (it is equal for every preset we have). Both take
the same step: x_t = q_sample(x0, t, ε), MSE to ε, backward, AdamW (lr 1e-4, wd 1e-4), on the same
batch and resolution, timed in alternating rounds so that a busy machine slows both alike.
On CUDA both run with bf16 autocast and channels_last.

Then the real ``Trainer`` (data order, EMA, clipping, logging) runs the CPU Fashion-MNIST config
for a number of steps; seconds per epoch are extrapolated from the measured steps (stated in the
results as such).

    python benchmarks/train_throughput.py                      # CPU, fashion_small, batch 64
    python benchmarks/train_throughput.py --device cuda --presets fashion_small ddpm_cifar10 --batch 128

Results: benchmarks/results/train_throughput.json (machine described).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffusion_lib.models import UNet, UNetConfig
from diffusion_lib.pipelines.machine import machine_info
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


def diffusers_twin(cfg: UNetConfig):
    """diffusers' UNet2DModel with the architecture of our UNetConfig."""
    from diffusers import UNet2DModel

    levels = range(len(cfg.channel_mult))
    return UNet2DModel(
        sample_size=cfg.image_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels)),
        norm_num_groups=cfg.num_groups, dropout=cfg.dropout, attention_head_dim=None,
        time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=0)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def make_step(model, forward, schedule, x0, device, autocast_dtype):
    """One training step (ε-MSE, AdamW) as a closure; both models get exactly this."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4,
                            fused=True if device.type == "cuda" else None)
    g = torch.Generator(device).manual_seed(0)
    n = x0.shape[0]

    def step():
        t = torch.randint(0, schedule.num_timesteps, (n,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        x_t = schedule.q_sample(x0, t, noise)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = torch.nn.functional.mse_loss(forward(x_t, t).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def timed(step, n_steps, device) -> float:
    """Seconds per step over n_steps."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n_steps


def compare(preset: str, batch: int, device: torch.device, precision: str, rounds: int, steps: int) -> dict:
    cfg = UNetConfig.preset(preset)
    torch.manual_seed(0)
    ours, theirs = UNet(cfg), diffusers_twin(cfg)
    n_ours, n_theirs = count(ours), count(theirs)
    if abs(n_theirs / n_ours - 1) > 0.05:
        raise RuntimeError(f"{preset}: diffusers twin has {n_theirs} parameters, ours {n_ours} (> 5 % apart)")
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    schedule = NoiseSchedule.linear(1000)
    x0 = (torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device) * 2 - 1)
    x0 = x0.contiguous(memory_format=memory_format)
    steps_fn = {}
    for name, model, forward in (("diffusion_lib", ours, lambda m: (lambda x, t: m(x, t))),
                                 ("diffusers", theirs, lambda m: (lambda x, t: m(x, t).sample))):
        model.to(device, memory_format=memory_format).train()
        steps_fn[name] = make_step(model, forward(model), schedule, x0, device, autocast_dtype)
        timed(steps_fn[name], 3, device)  # warm-up: allocator, oneDNN/cuDNN kernels
    per_round = {name: [] for name in steps_fn}
    for r in range(rounds):  # alternate, so that load from other processes hits both
        order = list(steps_fn) if r % 2 == 0 else list(reversed(steps_fn))
        for name in order:
            per_round[name].append(batch / timed(steps_fn[name], steps, device))
    result = {"preset": preset, "device": str(device), "precision": precision, "batch": batch,
              "resolution": cfg.image_size, "channels": cfg.in_channels, "params_ours": n_ours,
              "params_diffusers": n_theirs, "rounds": rounds, "steps_per_round": steps}
    for name, values in per_round.items():
        result[f"images_per_s_{name}"] = statistics.median(values)
        result[f"images_per_s_{name}_all_rounds"] = [round(v, 2) for v in values]
    ratios = [a / b for a, b in zip(per_round["diffusion_lib"], per_round["diffusers"])]
    result["speed_ratio_ours_over_diffusers"] = statistics.median(ratios)
    return result


def trainer_epoch_time(config_path: Path, steps: int, device: str) -> dict:
    """Run the real Trainer on the config for 2·steps steps; time the second half; extrapolate."""
    from diffusion_lib.training import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config_path, [f"output_dir={tmp}/run", f"max_steps={2 * steps}", f"log_every={steps}",
                                        "checkpoint_every=1000000", "sample_every=0", "progress=false",
                                        f"device={device}"])
        result = train(cfg)
    images_per_s = result["images_per_s"]
    cfg = load_config(config_path, [f"device={device}"])  # the config as shipped, for its max_steps
    from diffusion_lib.data import load_dataset
    n = len(load_dataset(cfg.dataset, "train", root=cfg.data_root, download=False))
    steps_per_epoch = n // cfg.batch_size
    return {"config": str(config_path.relative_to(REPO)), "device": device, "batch": cfg.batch_size,
            "measured_steps": steps, "images_per_s": images_per_s,
            "seconds_per_epoch_extrapolated": steps_per_epoch * cfg.batch_size / images_per_s,
            "config_max_steps": cfg.max_steps,
            "config_minutes_extrapolated": cfg.max_steps * cfg.batch_size / images_per_s / 60,
            "note": f"timed {steps} steps after {steps} warm-up steps (EMA, clipping, data order included); "
                    f"an epoch ({steps_per_epoch} steps of {cfg.batch_size}) is extrapolated, not run"}


def _load() -> list[float] | None:
    """1, 5 and 15-minute load averages: other processes share the CPU and slow both models alike."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine() -> dict:
    info = machine_info("cpu")
    try:
        import diffusers
        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "all"))
    p.add_argument("--presets", nargs="+", default=["fashion_small"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--gpu-batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--trainer-config", default="configs/fashion_cpu.yaml")
    p.add_argument("--trainer-steps", type=int, default=20, help="0 skips the Trainer measurement")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_throughput.json"))
    p.add_argument("--threads", type=int, nargs="+", default=[0],
                   help="torch CPU threads, one run each (0: torch's default)")
    args = p.parse_args(argv)

    results = {"machine": machine(), "command": " ".join(sys.argv), "runs": []}
    default_threads = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads or default_threads)
        run = {"threads": torch.get_num_threads(), "load_average_at_start": _load(), "comparisons": [], "trainer": []}
        devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
        for dev in devices:
            device = torch.device(dev)
            batch, steps = (args.batch, args.steps) if dev == "cpu" else (args.gpu_batch, 5 * args.steps)
            for preset in args.presets:
                precision = "fp32" if dev == "cpu" else "bf16"
                r = compare(preset, batch, device, precision, args.rounds, steps)
                print(json.dumps({k: v for k, v in r.items() if not k.endswith("all_rounds")}), flush=True)
                run["comparisons"].append(r)
            if args.trainer_steps:
                t = trainer_epoch_time(REPO / args.trainer_config, args.trainer_steps, dev)
                print(json.dumps(t), flush=True)
                run["trainer"].append(t)
        run["load_average_at_end"] = _load()
        results["runs"].append(run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
