"""What latent diffusion saves: the pixel-space UNet against the latent UNet + VAE on Fashion-MNIST.

Two arms with the course's networks, each measured in FRESH subprocesses so that peak memory is the
arm's own:

- ``pixel``: ``fashion_small`` (2.2M parameters) on 1x32x32 images;
- ``latent``: ``latent_small`` (4.0M parameters) on the 4x8x8 latents of the ``fashion_f4`` VAE; its
  samples are decoded by the VAE (included in the sampling time), its training latents are encoded
  once and cached (the one-time encoding cost per image is reported separately).

Per arm and phase (``train``: ``--train-steps`` AdamW steps of batch ``--batch``; ``sample``: DDIM with
``--steps`` steps for ``--sample-batch`` images): wall time per image, CPU time per image (process
time: on a machine shared with other jobs this is the stable number), and peak memory: on CUDA
``torch.cuda.max_memory_allocated`` after a reset, on the CPU the peak resident set (VmHWM) next to the
same reading after the model was built (imports, weights). The costs do not depend on the weights, so
fresh networks are used unless ``--pixel-checkpoint`` / ``--latent-checkpoint`` are given.

    python benchmarks/latent_vs_pixel.py --threads 1              # -> benchmarks/results/latent_vs_pixel.json
    python benchmarks/latent_vs_pixel.py --device cuda --batch 256 --sample-batch 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "latent_vs_pixel.json"
ARMS = {"pixel": ("fashion_small", (1, 32, 32)), "latent": ("latent_small", (4, 8, 8))}


def memory(device: torch.device) -> dict:
    from diffusion_lib.pipelines.machine import peak_rss_mib

    if device.type == "cuda":
        return {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"rss_mib": peak_rss_mib()}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(arm: str, device: torch.device, checkpoint: str | None):
    from diffusion_lib import NoiseSchedule, load_model
    from diffusion_lib.models import VAE, UNet, UNetConfig, VAEConfig

    torch.manual_seed(0)
    if checkpoint:
        model, schedule, _ = load_model(checkpoint, device=device)
    else:
        model, schedule = UNet(UNetConfig.preset(ARMS[arm][0], num_classes=None)).to(device), NoiseSchedule.linear(1000)
    vae = None
    if arm == "latent":
        vae = VAE(VAEConfig.preset("fashion_f4")).to(device).eval()
        vae.set_latent_scale(1.0)
    return model, schedule, vae


def child(args) -> dict:
    """One arm, one phase, in this (fresh) process."""
    from diffusion_lib import sample
    from diffusion_lib.objective import diffusion_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    checkpoint = args.pixel_checkpoint if args.arm == "pixel" else args.latent_checkpoint
    model, schedule, vae = build(args.arm, device, checkpoint)
    shape = ARMS[args.arm][1]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = memory(device)
    g = torch.Generator(device).manual_seed(0)
    result = {"arm": args.arm, "phase": args.phase, "params": sum(p.numel() for p in model.parameters()),
              "baseline": baseline}
    if args.phase == "train":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x0 = torch.randn(args.batch, *shape, generator=g, device=device)
        model.train()

        def step():
            loss = diffusion_loss(model, schedule, x0, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.train_steps):
            step()
        sync(device)
        n = args.train_steps * args.batch
        result.update(images=n, images_per_s=n / (time.perf_counter() - wall),
                      cpu_ms_per_image=1000 * (time.process_time() - cpu) / n)
        if vae is not None:  # the one-time cost of caching a training image's latent
            x = torch.rand(args.batch, 1, 32, 32, generator=g, device=device) * 2 - 1
            with torch.no_grad():
                vae.encode(x)
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                vae.encode(x)
                sync(device)
            result.update(encode_ms_per_image=1000 * (time.perf_counter() - wall) / args.batch,
                          encode_cpu_ms_per_image=1000 * (time.process_time() - cpu) / args.batch)
    else:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *shape, device=device), torch.zeros(2, dtype=torch.long, device=device))
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            z = sample(model, schedule, "ddim", shape=(args.sample_batch, *shape), generator=g, num_steps=args.steps)
            images = vae.decode_scaled(z) if vae is not None else z
            sync(device)
        n = args.sample_batch
        result.update(images=n, output_shape=list(images.shape[1:]), ddim_steps=args.steps,
                      seconds_per_image=(time.perf_counter() - wall) / n,
                      cpu_ms_per_image=1000 * (time.process_time() - cpu) / n)
    result["peak"] = memory(device)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--pixel-checkpoint")
    p.add_argument("--latent-checkpoint")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--arm", choices=tuple(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--phase", choices=("train", "sample"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    from diffusion_lib.pipelines.machine import machine_info

    args = parse_args(argv)
    if args.arm:  # a child: print one JSON line
        print(json.dumps(child(args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--out")]
    results = []
    for arm in ARMS:
        for phase in ("train", "sample"):
            out = subprocess.run([sys.executable, __file__, *forwarded, "--arm", arm, "--phase", phase],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]))
    by = {(r["arm"], r["phase"]): r for r in results}
    ratios = {"train_cpu_per_image_pixel_over_latent": by["pixel", "train"]["cpu_ms_per_image"]
              / by["latent", "train"]["cpu_ms_per_image"],
              "sample_cpu_per_image_pixel_over_latent": by["pixel", "sample"]["cpu_ms_per_image"]
              / by["latent", "sample"]["cpu_ms_per_image"]}
    data = {"machine": machine_info(torch.device(args.device)), "command": " ".join(["benchmarks/latent_vs_pixel.py",
            *(argv if argv is not None else sys.argv[1:])]), "results": results, "ratios": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(ratios, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
