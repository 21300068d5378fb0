"""Datasets by name: images as float (C, H, W) tensors in [-1, 1] with integer labels, and 2-D toys.

Where each dataset is looked for, in order:
- fashion_mnist / mnist: `root` if given, the system copy (`/usr/share/datasets/fashion-mnist`, from the
  Debian package `dataset-fashion-mnist`), the user data folder (`$DIFFUSION_DATA`, default
  `~/.cache/diffusion_lib/data`), then a torchvision download into the user data folder.
  The four original `*-idx?-ubyte(.gz)` files are parsed directly (LeCun's IDX format).
- cifar10: the `cifar-10-batches-py` pickles under `root` or the user data folder, then torchvision.
- imagenet100: an ImageFolder tree under `root` or `<user data folder>/imagenet100` (`train/<wnid>/*`,
  `val/<wnid>/*`, or Kaggle's `train.X1..X4` / `val.X` layout); never downloaded.
- shapes: synthetic coloured shapes generated from a seed (smoke runs, no files).
Downloads happen only when `download` is not False, with a connection check and a socket timeout,
so an offline machine fails in seconds with a message saying how to get the data.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DATA_ENV = "DIFFUSION_DATA"
OFFLINE_ENV = "DIFFUSION_OFFLINE"  # set to 1 to never download, whatever `download` says by default
DOWNLOAD_TIMEOUT_S = 20.0
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not (or may not) be downloaded."""


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


def data_home() -> Path:
    """The user data folder: $DIFFUSION_DATA, else ~/.cache/diffusion_lib/data."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "diffusion_lib" / "data").expanduser()


# ----------------------------------------------------------------------------------------------
# In-memory datasets


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


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


class ImageFolderDataset(Dataset):
    """Image files decoded on access: shorter side resized to `image_size` (bicubic, antialiased),
    centre-cropped square, as float in [-1, 1]."""

    def __init__(self, files: list[Path], labels: list[int], class_names, image_size: int, hflip: bool = False):
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.class_names = tuple(class_names)
        self.image_size = image_size
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image
        import torchvision.transforms.functional as TF

        with Image.open(self.files[i]) as img:
            img = TF.resize(img.convert("RGB"), self.image_size,
                            interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            img = TF.center_crop(img, self.image_size)
            x = to_float(TF.pil_to_tensor(img))
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])


# ----------------------------------------------------------------------------------------------
# load_dataset


def load_dataset(name: str, split: str = "train", *, root=None, image_size: int | None = None,
                 hflip: bool = False, download: bool | None = None, limit: int | None = None, **kw) -> Dataset:
    """A dataset of (image float (C, H, W) in [-1, 1], int label).

    name: one of DATASETS. split: "train" or "test" ("val" is an alias of "test").
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
    allowed_kw = {"shapes": {"num_samples", "seed"}}.get(name, set())
    if set(kw) - allowed_kw:
        raise TypeError(f"load_dataset({name!r}) got unexpected arguments {sorted(set(kw) - allowed_kw)}; "
                        f"it takes root, image_size, hflip, download, limit"
                        + (f" and {sorted(allowed_kw)}" if allowed_kw else ""))
    if download is None:
        download = not os.environ.get(OFFLINE_ENV)
    root = Path(root).expanduser() if root is not None else None

    if name == "imagenet100":
        files, labels, class_names = _imagenet100_files(root, split)
        if limit is not None:
            files, labels = files[:limit], labels[:limit]
        return ImageFolderDataset(files, labels, class_names, image_size, hflip)

    if name in ("fashion_mnist", "mnist"):
        images, labels = _load_idx_dataset(name, split, root, download)
    elif name == "cifar10":
        images, labels = _load_cifar10(split, root, download)
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


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_SOURCES = {
    "fashion_mnist": dict(system="/usr/share/datasets/fashion-mnist", folders=("fashion-mnist", "fashion_mnist"),
                          torchvision="FashionMNIST"),
    "mnist": dict(system="/usr/share/datasets/mnist", folders=("mnist",), torchvision="MNIST"),
}


def read_idx(path) -> np.ndarray:
    """Parse one IDX file (LeCun et al.'s MNIST format), gzipped or not, into a numpy array.

    Header: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32 sizes.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(data)} bytes, header says {expected}")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def _find_idx(dirs, prefix: str) -> tuple[Path, Path] | None:
    for d in dirs:
        pair = []
        for kind in ("images-idx3", "labels-idx1"):
            base = Path(d) / f"{prefix}-{kind}-ubyte"
            found = next((p for p in (base.with_name(base.name + ".gz"), base) if p.is_file()), None)
            pair.append(found)
        if all(pair):
            return pair[0], pair[1]
    return None


def _load_idx_dataset(name, split, root, download):
    src = _IDX_SOURCES[name]
    prefix = "train" if split == "train" else "t10k"

    def candidates(base: Path):
        return [base] + [base / f for f in src["folders"]] + [base / src["torchvision"] / "raw"]

    dirs = (candidates(root) if root is not None else []) + [Path(src["system"])] + candidates(data_home())
    found = _find_idx(dirs, prefix)
    if found is None and download:
        import torchvision.datasets

        target = root if root is not None else data_home()
        tv_class = getattr(torchvision.datasets, src["torchvision"])
        _download(name, tv_class.mirrors[0], lambda: tv_class(str(target), train=split == "train", download=True))
        found = _find_idx(candidates(target), prefix)
    if found is None:
        raise DatasetNotFoundError(_not_found_message(name, dirs, download))
    images, labels = (read_idx(p) for p in found)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{found[0]} / {found[1]}: expected N x 28 x 28 images and N labels, "
                         f"got {images.shape} and {labels.shape}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (python pickles of Krizhevsky's cifar-10-python.tar.gz)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _read_cifar_batch(path: Path):
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    get = lambda key: entry[key] if key in entry else entry[key.encode()]  # noqa: E731  (str or bytes keys)
    data = np.asarray(get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected an N x 3072 'data' array, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(get("labels"), dtype=np.int64)


def _load_cifar10(split, root, download):
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    home = data_home()
    dirs = ([root, root / "cifar-10-batches-py"] if root is not None else []) + [
        home / "cifar-10-batches-py", home / "cifar10" / "cifar-10-batches-py"]
    found = next((d for d in dirs if all((d / f).is_file() for f in files)), None)
    if found is None and download:
        import torchvision.datasets

        target = root if root is not None else home
        _download("cifar10", CIFAR10_URL,
                  lambda: torchvision.datasets.CIFAR10(str(target), train=split == "train", download=True))
        found = target / "cifar-10-batches-py"
    if found is None or not all((found / f).is_file() for f in files):
        raise DatasetNotFoundError(_not_found_message("cifar10", dirs, download))
    batches = [_read_cifar_batch(found / f) for f in files]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(images), torch.from_numpy(labels)


# ----------------------------------------------------------------------------------------------
# ImageNet-100 (an ImageFolder tree)

_IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


def _imagenet100_files(root, split):
    candidates = [root] if root is not None else [data_home() / "imagenet100", data_home() / "ImageNet100"]
    base = next((c for c in candidates if c.is_dir()), None)
    if base is None:
        raise DatasetNotFoundError(_not_found_message("imagenet100", candidates, False))
    # torchvision layout train/ + val/, or Kaggle's train.X1..train.X4 + val.X
    train_dirs = sorted(d for d in base.iterdir() if d.is_dir() and (d.name == "train" or d.name.startswith("train.")))
    test_dirs = sorted(d for d in base.iterdir() if d.is_dir() and d.name in ("val", "test", "val.X"))
    split_dirs = train_dirs if split == "train" else test_dirs
    if not split_dirs:
        raise DatasetNotFoundError(f"imagenet100: no {'train' if split == 'train' else 'val'} folder in {base} "
                                   f"(expected train/ and val/, or train.X1.. and val.X)\n" + _how_to("imagenet100"))
    # Class indices from the training folders, so that both splits agree.
    wnids = sorted({c.name for d in (train_dirs or test_dirs) for c in d.iterdir() if c.is_dir()})
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for d in split_dirs:
        for c in sorted(p for p in d.iterdir() if p.is_dir()):
            if c.name not in index:
                raise ValueError(f"imagenet100: class folder {c} is not among the training classes")
            for f in sorted(c.iterdir()):
                if f.suffix.lower() in _IMAGE_EXTENSIONS:
                    files.append(f)
                    labels.append(index[c.name])
    if not files:
        raise DatasetNotFoundError(f"imagenet100: no images under {split_dirs}\n" + _how_to("imagenet100"))
    names = wnids
    labels_json = base / "Labels.json"
    if labels_json.is_file():  # Kaggle's wnid -> "name, synonyms"
        mapping = json.loads(labels_json.read_text())
        names = [mapping.get(w, w).split(",")[0].strip() for w in wnids]
    return files, labels, names


# ----------------------------------------------------------------------------------------------
# Synthetic coloured shapes


def make_shapes(num_samples: int, image_size: int = 32, *, seed: int = 0, split: str = "train"):
    """`num_samples` uint8 images (N, 3, S, S) of one bright shape (circle, square, triangle, cross)
    on a dark background, random colours, sizes and positions; labels are the shape index.
    The same (seed, split) always gives the same images."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    g = torch.Generator().manual_seed(2 * int(seed) + (split != "train"))
    n, s = num_samples, image_size
    labels = torch.randint(0, 4, (n,), generator=g)
    r = (0.2 + 0.15 * torch.rand(n, generator=g)) * s  # shape "radius" in pixels
    centre = r[:, None] + torch.rand(n, 2, generator=g) * (s - 2 * r[:, None])  # fully inside
    fg = torch.randint(110, 256, (n, 3, 1, 1), generator=g, dtype=torch.uint8)
    bg = torch.randint(0, 80, (n, 3, 1, 1), generator=g, dtype=torch.uint8)

    coords = torch.arange(s, dtype=torch.float32) + 0.5
    dy = (coords[None, :, None] - centre[:, 1, None, None]) / r[:, None, None]  # (n, s, 1)
    dx = (coords[None, None, :] - centre[:, 0, None, None]) / r[:, None, None]  # (n, 1, s)
    ax, ay = dx.abs(), dy.abs()
    masks = torch.stack([
        dx ** 2 + dy ** 2 <= 1.0,                                              # circle
        torch.maximum(ax, ay) <= 0.8,                                          # square
        (ay <= 0.8) & (ax <= 0.55 * (dy + 0.8)),                               # triangle, apex up
        ((ax <= 0.3) & (ay <= 0.9)) | ((ay <= 0.3) & (ax <= 0.9)),             # cross
    ])  # (4, n, s, s)
    mask = masks[labels, torch.arange(n)][:, None]  # (n, 1, s, s)
    images = torch.where(mask, fg, bg)
    return images, labels


# ----------------------------------------------------------------------------------------------
# 2-D toy distributions


def _generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _two_moons(n, g):
    labels = torch.randint(0, 2, (n,), generator=g)
    angle = torch.rand(n, generator=g) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    lower = labels == 1
    x[lower] = torch.stack([1 - torch.cos(angle[lower]), 0.5 - torch.sin(angle[lower])], 1)
    x = x + 0.05 * torch.randn(n, 2, generator=g)
    return (x - torch.tensor([0.5, 0.25])) * 1.5, labels


def _gaussian_mixture(n, g, num_components=8, radius=2.0, std=0.1):
    labels = torch.randint(0, num_components, (n,), generator=g)
    angle = 2 * math.pi * labels.float() / num_components
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return means + std * torch.randn(n, 2, generator=g), labels


def _swiss_roll(n, g):
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5.0
    return x + 0.05 * torch.randn(n, 2, generator=g), torch.zeros(n, dtype=torch.long)


def _ring(n, g, radius=1.5, std=0.05):
    angle = 2 * math.pi * torch.rand(n, generator=g)
    rho = radius + std * torch.randn(n, generator=g)
    return torch.stack([rho * torch.cos(angle), rho * torch.sin(angle)], 1), torch.zeros(n, dtype=torch.long)


def _checkerboard(n, g):
    # 4x4 board on [-2, 2]^2, points in the 8 "black" cells; label = cell index 0..7
    labels = torch.randint(0, 8, (n,), generator=g)
    row = labels // 2
    col = 2 * (labels % 2) + (row % 2)
    x = torch.stack([col.float(), row.float()], 1) + torch.rand(n, 2, generator=g) - 2.0
    return x, labels


TOY_2D = {"two_moons": _two_moons, "gaussian_mixture": _gaussian_mixture, "swiss_roll": _swiss_roll,
          "ring": _ring, "checkerboard": _checkerboard}


def toy_2d(name: str, n: int, generator=None, *, return_labels: bool = False, **kw):
    """n points (float32, shape (n, 2)) of a 2-D toy distribution, of scale about 1-2.

    names: two_moons, gaussian_mixture (kw: num_components=8, radius=2, std=0.1), swiss_roll,
    ring (kw: radius=1.5, std=0.05), checkerboard. generator: torch.Generator, int seed or None.
    return_labels: also return (n,) long labels (moon, mixture component or checkerboard cell; 0 for
    swiss_roll and ring), e.g. for class-conditional toys.
    """
    if name not in TOY_2D:
        raise ValueError(f"unknown 2-D toy {name!r}; available: {list(TOY_2D)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    x, labels = TOY_2D[name](n, _generator(generator), **kw)
    x = x.float()
    return (x, labels) if return_labels else x


# ----------------------------------------------------------------------------------------------
# Downloads and error messages

def _how_to(name: str) -> str:
    """How to get a dataset by hand (reads the user data folder now: $DIFFUSION_DATA may change)."""
    home = data_home()
    online = f"  - load_dataset({name!r}, download=True) on a machine that is online"
    if name == "fashion_mnist":
        return ("Get it with one of:\n"
                "  - Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)\n"
                "  - copy the four *-idx?-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist "
                f"into {home / 'fashion_mnist'} (or set ${DATA_ENV})\n" + online)
    if name == "mnist":
        return ("Get it with one of:\n"
                f"  - copy the four *-idx?-ubyte.gz MNIST files into {home / 'mnist'} (or set ${DATA_ENV})\n" + online)
    if name == "cifar10":
        folder = home / "cifar-10-batches-py"
        return ("Get it with one of:\n"
                f"  - download {CIFAR10_URL} and extract it into {home}, giving {folder / 'data_batch_1'} ... "
                "data_batch_5 and test_batch (Python pickles),\n"
                f"    or pass root=<folder holding cifar-10-batches-py> (or set ${DATA_ENV})\n" + online + " (e.g. Colab)")
    return ("ImageNet-100 is never downloaded automatically (ImageNet's licence). Get it e.g. from Kaggle "
            "(dataset 'ambityga/imagenet100') and pass root=<folder with train.X1..X4 and val.X>, or place it in "
            f"{home / 'imagenet100'} (or set ${DATA_ENV}); a torchvision ImageFolder layout "
            "root/train/<class>/*.JPEG, root/val/<class>/*.JPEG works too.")


def _not_found_message(name, searched, download_allowed):
    where = "\n".join(f"  {p}" for p in searched if p is not None)
    tail = "" if download_allowed or name == "imagenet100" else "\n(download=False or $DIFFUSION_OFFLINE: no download tried)"
    return f"dataset {name!r} not found; looked in:\n{where}{tail}\n{_how_to(name)}"


def _check_reachable(url: str, timeout: float) -> None:
    """Resolve and connect to the download host within `timeout` seconds (DNS lookups ignore the
    socket timeout, so they run in a thread we stop waiting for)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(e)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not result or result[0] is not None:
        reason = result[0] if result else f"no answer within {timeout:.0f} s"
        raise OSError(f"cannot reach {parsed.hostname}: {reason}")


def _download(name: str, url: str, fetch, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    previous = socket.getdefaulttimeout()
    try:
        _check_reachable(url, min(timeout, 5.0))
        socket.setdefaulttimeout(timeout)
        fetch()
    except Exception as e:  # network errors come in many types (URLError, OSError, RuntimeError)
        raise DatasetNotFoundError(f"dataset {name!r} is not on disk and the download failed ({e}).\n"
                                   + _how_to(name)) from e
    finally:
        socket.setdefaulttimeout(previous)
