"""Datasets by name: images as float (C, H, W) tensors in [-1, 1] with integer labels.

:func:`load_dataset` finds the files of a named dataset (:mod:`.formats`) or makes the synthetic
shapes (:mod:`.toys`), and serves them as (image, label) items: uint8 images held in memory
(:class:`ImageTensorDataset`) or read from an image folder (:class:`ImageFolderDataset`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .formats import OFFLINE_ENV, check_root, imagenet100_files, load_cifar10, load_idx_dataset
from .images import to_float
from .toys import TOY_2D, make_shapes

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
# load_dataset's options beyond the common ones, per dataset
DATASET_OPTIONS = {"shapes": ("num_samples", "seed")}


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    image_size: int  # the default size load_dataset returns
    num_classes: int
    class_names: tuple[str, ...]


_INFO = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 32, 10, (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
    "mnist": DatasetInfo("mnist", 1, 32, 10, tuple(str(i) for i in range(10))),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "imagenet100": DatasetInfo("imagenet100", 3, 128, 100, ()),  # names come from the folder
    "shapes": DatasetInfo("shapes", 3, 32, 4, ("circle", "square", "triangle", "cross")),
}
DATASETS = tuple(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Channels, default image size, number and names of classes of a named dataset."""
    if name not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; available: {list(DATASETS)} "
                         f"(2-D toys come from toy_2d: {list(TOY_2D)})")
    return _INFO[name]


# ----------------------------------------------------------------------------------------------
# In-memory datasets


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) held in memory; items are (float image in [-1, 1], int label).

    `images` and `labels` stay available (e.g. uint8 images for FID statistics).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names=(), hflip: bool = False):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.class_names = tuple(class_names)
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = to_float(self.images[i])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])

    @property
    def can_index_batches(self) -> bool:
        """Whether :meth:`batches` gives what a DataLoader would (not with per-item random flips)."""
        return not self.hflip

    def batches(self, batch_sampler, device: torch.device):
        """(x, y) batches of the index lists ``batch_sampler`` yields, indexed whole (on the GPU when training
        there) instead of collated item by item; the same values as the DataLoader path."""
        images, labels = self.images, self.labels
        on_gpu = device.type == "cuda" and images.numel() < 2**31
        if on_gpu:
            images, labels = images.to(device), labels.to(device)
        for indices in batch_sampler:
            idx = torch.tensor(indices)
            if on_gpu:  # pinned + non_blocking: the copy does not wait for the previous step's kernels
                idx = idx.pin_memory().to(device, non_blocking=True)
            yield to_float(images[idx]), labels[idx]


class ImageFolderDataset(Dataset):
    """Image files decoded on access: shorter side resized to `image_size` (bicubic, antialiased),
    centre-cropped square, as float in [-1, 1].

    A file that cannot be decoded (a corrupt JPEG among 130,000) does not end the run: it is logged
    with the running count, listed in ``skipped``, and the next readable file in the folder order
    takes its place (with its own label). With DataLoader workers each worker keeps its own list;
    the log has every file.
    """

    def __init__(self, files: list[Path], labels: list[int], class_names, image_size: int, hflip: bool = False):
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.class_names = tuple(class_names)
        self.image_size = image_size
        self.hflip = hflip
        self.skipped: list[Path] = []

    def __len__(self) -> int:
        return len(self.files)

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image
        import torchvision.transforms.functional as TF

        with Image.open(path) as img:
            img = TF.resize(img.convert("RGB"), self.image_size,
                            interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            img = TF.center_crop(img, self.image_size)
            return to_float(TF.pil_to_tensor(img))

    def __getitem__(self, i):
        for j in (*range(i, len(self)), *range(i)):
            try:
                x = self._decode(self.files[j])
                break
            except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for damaged image data
                if self.files[j] not in self.skipped:
                    self.skipped.append(self.files[j])
                    log.warning("skipped unreadable image %s (%s: %s); %d skipped so far",
                                self.files[j], type(e).__name__, e, len(self.skipped))
        else:
            raise ValueError(f"none of the {len(self)} images of this folder could be read "
                             f"(first: {self.files[0] if self.files else None})")
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[j])


# ----------------------------------------------------------------------------------------------
# load_dataset


def load_dataset(name: str, split: str = "train", *, root=None, image_size: int | None = None,
                 hflip: bool = False, download: bool | None = None, limit: int | None = None, **kw) -> Dataset:
    """A dataset of (image float (C, H, W) in [-1, 1], int label).

    name: one of DATASETS. split: "train" or "test" ("val" is an alias of "test").
    root: the folder holding the files; when given, it must exist and is the only place looked in
        (and downloaded into), so a mistyped path fails instead of finding another copy.
    image_size: None for the dataset's default (dataset_info(name).image_size; 28-pixel MNIST-style
        images are zero-padded to 32, which a UNet can halve three times); other sizes are resized.
    hflip: random horizontal flip per item (torch's global RNG).
    download: False never downloads; True or None (default) download when no local copy is found,
        unless $DIFFUSION_OFFLINE is set and download is None.
    limit: keep only the first `limit` items (smoke runs).
    kw: for "shapes", num_samples (default 4096 train / 1024 test) and seed (default 0).
    """
    info = dataset_info(name)
    if split == "val":
        split = "test"
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (or 'val'), got {split!r}")
    if image_size is None:
        image_size = info.image_size
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    allowed_kw = set(DATASET_OPTIONS.get(name, ()))
    if set(kw) - allowed_kw:
        raise TypeError(f"load_dataset({name!r}) got unexpected arguments {sorted(set(kw) - allowed_kw)}; "
                        f"it takes root, image_size, hflip, download, limit"
                        + (f" and {sorted(allowed_kw)}" if allowed_kw else ""))
    if download is None:
        download = not os.environ.get(OFFLINE_ENV)
    root = Path(root).expanduser() if root is not None else None
    if name != "shapes":
        check_root(name, root)

    if name == "imagenet100":
        files, labels, class_names = imagenet100_files(root, split)
        if limit is not None:
            files, labels = files[:limit], labels[:limit]
        return ImageFolderDataset(files, labels, class_names, image_size, hflip)

    if name in ("fashion_mnist", "mnist"):
        images, labels = load_idx_dataset(name, split, root, download)
    elif name == "cifar10":
        images, labels = load_cifar10(split, root, download)
    else:  # shapes
        images, labels = make_shapes(kw.get("num_samples", 4096 if split == "train" else 1024),
                                     image_size, seed=kw.get("seed", 0), split=split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ImageTensorDataset(_fit_size(images, image_size), labels, info.class_names, hflip)


def _fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) -> (N, C, size, size): zero-pad 28 -> 32 (as is usual for MNIST-style data:
    the background is 0), otherwise an antialiased bilinear resize."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if (h, w) == (28, 28) and size == 32:
        return F.pad(images, (2, 2, 2, 2))
    out = torch.empty(images.shape[:2] + (size, size), dtype=torch.uint8)
    for i in range(0, len(images), 4096):  # chunks keep the float copy small
        x = F.interpolate(images[i:i + 4096].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + 4096] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out
