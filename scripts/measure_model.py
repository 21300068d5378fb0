#!/usr/bin/env python
"""Measure a shipped diffusion or flow-matching model for its model card (checkpoints/<name>.json, key "measured").

    python scripts/measure_model.py fashion_ddpm_linear --fp32 runs/book/fashion_linear/checkpoints/ckpt_00001500.pt
    python scripts/measure_model.py fashion_cfg --fp32 runs/fashion_latent_cfg/checkpoints/ckpt_00002000.pt
    python scripts/measure_model.py fashion_ddpm_linear --fid      (adds FID-2k against the test set)
    python scripts/measure_model.py fashion_flow --fp32 runs/fashion_flow_cpu/checkpoints/ckpt_00003000.pt --fid

What it measures, from the EMA weights with the shipped classifier, and with one sampler per kind of model:
- diffusion models: DDIM (50 steps, η = 0), pixel models with x̂0 clipped to [-1, 1] at every step, as
  Ho et al. sample (latents are not clipped);
- flow-matching models (``fashion_flow``): Euler on the flow ODE, 50 steps (50 model calls, as many as
  DDIM-50), without clipping: the flow samplers have none (the final images are clamped to [-1, 1] as
  every model's are). Euler rather than Heun-25 (also 50 calls) because it is the first-order solver,
  like DDIM, and what the trainer's sample grids use; chapter 11 compares the solvers at every budget.

Measured:
- unconditional models: the classifier's class assignments of the samples (every class should get
  at least 5 %: the model covers the data set, no mode is lost);
- class-conditional models: class accuracy of the samples guided at w = ``--scale`` (default 3),
  the classes in turn;
- ``--fp32``: the fp16 check. The same noise through the shipped (fp16-stored) weights and the run's
  float32 EMA weights: max pixel difference in 8-bit levels, and how often the classifier agrees;
- ``--fid``: FID of the samples against the whole Fashion-MNIST test set (standard Inception; the test
  set's features are computed once and cached, about 20 minutes on 2 cores): FID-2k of the first
  2,000 samples, and FID-10k as well when there are 10,000 or more.

The samples: ``--n`` (default 1,000), or with ``--fid`` ``--fid-n`` (default 2,000): the same samples
are classified and scored. Sampling on a GPU and scoring on a CPU (the FID Inception stays here):

    python scripts/measure_model.py fashion_ddpm_linear --device cuda --n 10000 --save-samples s.pt --fp32 CKPT
    python scripts/measure_model.py fashion_ddpm_linear --samples s.pt --fid     (classifies and scores them)

``--save-samples`` keeps the images (uint8) with where and how they were drawn; ``--samples`` reads them
back and refuses samples of another checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from diffusion_lib.checkpoint import file_digest, load_classifier, load_model
from diffusion_lib.course import pretrained, recipes
from diffusion_lib.data.images import to_float, to_uint8
from diffusion_lib.latent import decode_latents
from diffusion_lib.metrics import extract_features, fid_from_stats, get_extractor, reference_stats
from diffusion_lib.pipelines.evaluate import dataset_options
from diffusion_lib.pipelines.generate import generate
from diffusion_lib.pipelines.machine import machine_info
from diffusion_lib.metrics.scores import model_outputs

REPO = Path(__file__).resolve().parents[1]

STEPS = 50


def protocol(info: dict) -> tuple[str, str, bool]:
    """(sampler, its description for the card, clip x̂0): flow Euler for a flow-matching model, else DDIM."""
    if info.get("objective") == "flow":
        return "flow_euler", f"flow_euler, {STEPS} steps ({STEPS} model calls), EMA weights, no clipping", False
    clip = not info.get("vae")
    return "ddim", f"ddim, {STEPS} steps, eta 0, EMA weights" + (", x0 clipped to [-1, 1]" if clip else ""), clip


def draw(model, schedule, info, n: int, scale: float, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` images in [-1, 1] on the CPU with :func:`protocol`'s sampler, 50 steps, from noise fixed by
    ``seed`` (and the device), classes in turn when conditional."""
    vae = recipes.find_vae_for(info)
    sampler, _, clip = protocol(info)
    model = model.to(device, memory_format=torch.channels_last)  # 1.2x images/s on a CPU too
    images = generate(model, schedule, info, sampler=sampler, steps=STEPS, n=n, seed=seed, guidance_scale=scale,
                      batch_size=1000 if device.type == "cuda" else 250, eta=0.0, device=device,
                      progress=True, clip_x0=clip)
    return decode_latents(images, vae) if vae is not None else images


def read_samples(path: Path, checkpoint: Path) -> dict:
    """Samples written by ``--save-samples``, checked to come from ``checkpoint``."""
    saved = torch.load(path, weights_only=True)
    if saved["checkpoint_sha256"] != file_digest(checkpoint):
        raise SystemExit(f"{path} holds samples of another checkpoint (sha256 {saved['checkpoint_sha256'][:12]}...), "
                         f"not of {checkpoint}")
    return saved


def predicted_classes(classifier, images: torch.Tensor) -> torch.Tensor:
    return model_outputs(classifier, images, batch_size=250).argmax(1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="a shipped diffusion or flow model (e.g. fashion_ddpm_linear, fashion_flow), found "
                                "as <name>.pt in $DIFFUSION_CHECKPOINTS, checkpoints/ or the cache")
    p.add_argument("--n", type=int, default=1000, help="samples for class coverage / accuracy")
    p.add_argument("--scale", type=float, default=3.0, help="guidance scale w of a conditional model")
    p.add_argument("--fp32", type=Path, default=None, help="the run's checkpoint, for the fp16 check")
    p.add_argument("--fp16-n", type=int, default=100, help="samples of the fp16 check")
    p.add_argument("--fid", action="store_true", help="also FID against the test set (slow on a CPU)")
    p.add_argument("--fid-n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", type=torch.device, default="cpu", help="where to sample: cpu or cuda[:i]")
    p.add_argument("--save-samples", type=Path, default=None, help="also write the samples (uint8) to this .pt file")
    p.add_argument("--samples", type=Path, default=None,
                   help="classify and score these saved samples instead of drawing")
    p.add_argument("--first", type=int, default=None, help="with --samples: only the first this many")
    args = p.parse_args(argv)
    if args.name in ("fashion_vae", "fashion_classifier"):
        p.error(f"name must be a diffusion or flow model; {args.name} is not one")
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)

    path = pretrained.find_checkpoint(args.name)
    if path is None:
        raise SystemExit(f"no shipped {args.name}.pt: train and ship it first (Makefile target checkpoints)")
    classifier_path = pretrained.find_checkpoint("fashion_classifier")
    if classifier_path is None:
        raise SystemExit("no shipped fashion_classifier.pt: it scores the samples")
    classifier = load_classifier(classifier_path)
    model, schedule, info = pretrained.load_pretrained(args.name)
    conditional = info["num_classes"] is not None
    scale = args.scale if conditional else 1.0
    measured = {"sampler": protocol(info)[1], "seed": args.seed,
                "classifier": f"fashion_classifier (test accuracy {pretrained.read_card(classifier_path)['test_accuracy']})"}

    if args.samples is not None:
        saved = read_samples(args.samples, path)
        images = to_float(saved["images"][:args.first])
        n = len(images)
        measured.update(seed=saved["seed"], sampling_seconds=saved["sampling_seconds"],
                        sampled_on=saved["machine"]["device_name"])
    else:
        n = args.fid_n if args.fid else args.n
        start = time.perf_counter()
        images = draw(model, schedule, info, n, scale, args.seed, device)
        measured.update(sampling_seconds=round(time.perf_counter() - start, 1),
                        sampled_on=machine_info(device)["device_name"])
        if args.save_samples is not None:
            torch.save({"images": to_uint8(images), "checkpoint_sha256": file_digest(path), "seed": args.seed,
                        "sampler": measured["sampler"], "guidance_scale": scale,
                        "sampling_seconds": measured["sampling_seconds"],
                        "machine": machine_info(device)},
                       args.save_samples)
    predicted = predicted_classes(classifier, images)
    num_classes = classifier.config.num_classes
    shares = torch.bincount(predicted, minlength=num_classes).double() / len(predicted)
    if conditional:
        asked = torch.arange(n) % info["num_classes"]
        correct = predicted == asked
        measured["guided"] = {
            "scale": scale, "n": n, "class_accuracy": round(float(correct.double().mean()), 4),
            "per_class_accuracy": [round(float(correct[asked == c].double().mean()), 3) for c in range(num_classes)]}
    else:
        measured["coverage"] = {"n": n, "class_shares": [round(float(s), 4) for s in shares],
                                "min_share": round(float(shares.min()), 4)}

    if args.fp32 is not None:
        reference, _, reference_info = load_model(args.fp32, ema=True)
        n_check = args.fp16_n
        shipped_images, fp32_images = (draw(m, schedule, i, n_check, scale, args.seed + 1, device)
                                       for m, i in ((model, info), (reference, reference_info)))
        difference = (to_uint8(shipped_images).int() - to_uint8(fp32_images).int()).abs()
        shipped_classes, fp32_classes = (predicted_classes(classifier, x) for x in (shipped_images, fp32_images))
        check = {"n": n_check, "device": machine_info(device)["device_name"],
                 "max_pixel_difference_8bit": int(difference.max()),
                 "mean_pixel_difference_8bit": round(float(difference.double().mean()), 4),
                 "classifier_agreement": round(float((shipped_classes == fp32_classes).double().mean()), 4)}
        if conditional:
            asked = torch.arange(n_check) % info["num_classes"]
            check.update(class_accuracy_shipped=round(float((shipped_classes == asked).double().mean()), 4),
                         class_accuracy_fp32=round(float((fp32_classes == asked).double().mean()), 4))
        measured["fp16_check"] = check

    if args.fid:
        net = get_extractor("auto")
        start = time.perf_counter()
        features = extract_features(images, net, batch_size=50)
        feature_seconds = time.perf_counter() - start
        reference = reference_stats(info["config"]["dataset"], "test", None, extractor=net,
                                    **dataset_options(info["config"]))
        for key, count in (("fid", args.fid_n), ("fid_10k", 10_000)):
            if key == "fid_10k" and n < count:
                continue
            fid = fid_from_stats(features[:count].stats(), reference)
            measured[key] = {"fid": round(fid.fid, 2), "n": fid.n_samples, "n_reference": fid.n_reference,
                             "split": "test", "extractor": fid.extractor, "guidance_scale": scale,
                             "feature_seconds": round(feature_seconds, 1), "frechet_seconds": round(fid.seconds, 1)}
    measured["machine"] = machine_info()

    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["measured"] = {**card.get("measured", {}), **measured}
    if args.fid and "fid_10k" not in measured:
        card["measured"].pop("fid_10k", None)  # an older FID-10k belongs to other samples
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    if card_path.parent.resolve() == (REPO / "checkpoints").resolve():  # the card's sha256 is in the manifest
        pretrained.write_manifest(REPO / "checkpoints", REPO / "diffusion_lib" / "course" / "shipped_models.json")
    print(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
