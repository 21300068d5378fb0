"""Datasets on disk, by format: LeCun's IDX files (MNIST, Fashion-MNIST), the CIFAR-10 pickles, an
ImageNet-100 folder tree, and the downloads with their "how to get it" messages.

Where each dataset is looked for, in order (a given `root` is the only place looked in, and must exist):
- fashion_mnist / mnist: `root` if given, else the system copy (`/usr/share/datasets/fashion-mnist`, from the
  Debian package `dataset-fashion-mnist`), the user data folder (`$DIFFUSION_DATA`, default
  `~/.cache/diffusion_lib/data`), then a torchvision download (into `root`, or the user data folder).
  The four original `*-idx?-ubyte(.gz)` files are parsed directly (LeCun's IDX format).
- cifar10: the `cifar-10-batches-py` pickles under `root`, else the user data folder, then torchvision.
- imagenet100: an ImageFolder tree under `root` or `<user data folder>/imagenet100` (`train/<wnid>/*`,
  `val/<wnid>/*`, or Kaggle's `train.X1..X4` / `val.X` layout); never downloaded.
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
import zlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

DATA_ENV = "DIFFUSION_DATA"
OFFLINE_ENV = "DIFFUSION_OFFLINE"  # set to 1 to never download, whatever `download` says by default
DOWNLOAD_TIMEOUT_S = 20.0


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on disk and could not (or may not) be downloaded."""

    def _render_traceback_(self) -> list[str]:
        # IPython/Jupyter show this instead of a traceback: the reader has data to fetch, not code to debug.
        return [f"{type(self).__name__}: {self}"]


def data_home() -> Path:
    """The user data folder: $DIFFUSION_DATA, else ~/.cache/diffusion_lib/data."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "diffusion_lib" / "data").expanduser()


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
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a damaged or cut-off download
        raise ValueError(f"{path} is corrupt ({type(e).__name__}: {e}); delete it and get the file again") from e
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


def load_idx_dataset(name, split, root, download):
    src = _IDX_SOURCES[name]
    prefix = "train" if split == "train" else "t10k"

    def candidates(base: Path):
        return [base] + [base / f for f in src["folders"]] + [base / src["torchvision"] / "raw"]

    # a given root is the only place looked in: a typo must not fall back to another copy
    dirs = candidates(root) if root is not None else [Path(src["system"])] + candidates(data_home())
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
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is corrupt ({type(e).__name__}: {e}); delete it and get the file again") from e
    get = lambda key: entry[key] if key in entry else entry[key.encode()]  # noqa: E731  (str or bytes keys)
    data = np.asarray(get("data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: expected an N x 3072 'data' array, got {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(get("labels"), dtype=np.int64)


def load_cifar10(split, root, download):
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    home = data_home()
    dirs = ([root, root / "cifar-10-batches-py"] if root is not None else
            [home / "cifar-10-batches-py", home / "cifar10" / "cifar-10-batches-py"])
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


def imagenet100_files(root, split):
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


def check_root(name: str, root: Path | None) -> None:
    """A given root must be an existing folder: nothing is downloaded into, or searched instead of, a typo."""
    if root is not None and not root.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: root {str(root)!r} is not an existing folder; no other "
                                   f"place searched and no download tried (create the folder to download into it, "
                                   f"or leave root unset)\n{_how_to(name)}")


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


def _download(name: str, url: str, fetch, timeout: float | None = None) -> None:
    """Run torchvision's download ``fetch`` of ``url`` with ``timeout`` (default DOWNLOAD_TIMEOUT_S) seconds
    for the connection and for each read. torchvision gives up at the first timeout (it is not one of the
    errors on which it tries the next mirror), so a host that never answers fails after about one timeout."""
    timeout = DOWNLOAD_TIMEOUT_S if timeout is None else timeout
    previous = socket.getdefaulttimeout()
    try:
        _check_reachable(url, min(timeout, 5.0))
        socket.setdefaulttimeout(timeout)
        fetch()
    except Exception as e:  # network errors come in many types (URLError, OSError, RuntimeError)
        reason = f"no answer within {timeout:g} s" if isinstance(getattr(e, "reason", e), TimeoutError) else e
        raise DatasetNotFoundError(f"dataset {name!r} is not on disk and the download from {url} failed "
                                   f"({reason}).\n" + _how_to(name)) from e
    finally:
        socket.setdefaulttimeout(previous)
