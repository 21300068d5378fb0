"""Small CIFAR-10 and ImageNet-100 copies in their real on-disk formats, for the gpu-profile tests.

`write_cifar10` writes what Krizhevsky's cifar-10-python.tar.gz extracts to (`cifar-10-batches-py/`
with five pickled training batches, `test_batch` and `batches.meta`); `write_imagenet100` writes the
Kaggle layout (`train.X1`, `train.X2`, `val.X`, one folder per WordNet id of JPEG files of any size,
and `Labels.json`). Both go under a data folder as `diffusion_lib.data` looks for them there
(`$DIFFUSION_DATA/cifar-10-batches-py`, `$DIFFUSION_DATA/imagenet100`).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGENET100_CLASSES = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
                       "n01484850": "great white shark, white shark"}


def write_cifar10(data_home: Path, per_batch: int = 8, seed: int = 0) -> Path:
    """`data_home/cifar-10-batches-py` with `per_batch` images in each of the six batches."""
    folder = Path(data_home) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": f"{name} of 6", "labels": (np.arange(per_batch) % 10).tolist(),
                 "data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return folder


def write_imagenet100(data_home: Path, per_class: int = 4, seed: int = 0) -> Path:
    """`data_home/imagenet100` in Kaggle's layout: `per_class` training images of each class (split
    over train.X1 and train.X2) and half as many validation images, JPEGs of assorted sizes."""
    from PIL import Image

    root = Path(data_home) / "imagenet100"
    rng = np.random.default_rng(seed)
    for i, wnid in enumerate(IMAGENET100_CLASSES):
        for split, count in ((f"train.X{1 + i % 2}", per_class), ("val.X", max(per_class // 2, 1))):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                h, w = (int(v) for v in rng.integers(100, 200, 2))
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                    folder / f"{wnid}_{k}.JPEG", quality=90)
    (root / "Labels.json").write_text(json.dumps(IMAGENET100_CLASSES))
    return root
