import gzip
import json
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lib import data
from diffusion_lib.data import formats
from diffusion_lib.data import (DatasetNotFoundError, dataset_info, load_dataset, make_shapes, read_idx,
                                toy_2d)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_data_home(tmp_path, monkeypatch):
    """Point the user data folder at an empty directory and forbid network access."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "home"))
    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)


def write_idx(path: Path, array: np.ndarray, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_like(folder: Path, n_train=6, n_test=4, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


# -- IDX (Fashion-MNIST / MNIST) ---------------------------------------------------------------

def test_fashion_mnist_from_idx_fixture_is_padded_to_32(tmp_path):
    arrays = write_mnist_like(tmp_path / "fm")
    ds = load_dataset("fashion_mnist", "train", root=tmp_path / "fm", download=False)
    images, labels = arrays["train"]
    assert len(ds) == 6
    x, y = ds[2]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == int(labels[2])
    expected = torch.from_numpy(images[2]).float() / 127.5 - 1
    torch.testing.assert_close(x[0, 2:30, 2:30], expected)
    assert torch.all(x[0, :2] == -1) and torch.all(x[0, :, 30:] == -1)  # zero padding = black
    test = load_dataset("fashion_mnist", "test", root=tmp_path / "fm", image_size=28, download=False)
    assert len(test) == 4 and test[0][0].shape == (1, 28, 28)


def test_mnist_in_torchvision_layout_uncompressed_and_resized(tmp_path):
    write_mnist_like(tmp_path / "MNIST" / "raw", compress=False)
    ds = load_dataset("mnist", "val", root=tmp_path, image_size=16, download=False, limit=3)
    assert len(ds) == 3 and ds[0][0].shape == (1, 16, 16)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (3, 1, 16, 16)


def test_read_idx_rejects_corrupt_files(tmp_path):
    good = tmp_path / "x-idx1-ubyte"
    write_idx(good, np.arange(10, dtype=np.uint8), compress=False)
    assert read_idx(good).tolist() == list(range(10))
    truncated = tmp_path / "t"
    truncated.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)
    bad = tmp_path / "b"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_offline():
    train = load_dataset("fashion_mnist", download=False)
    test = load_dataset("fashion_mnist", "test", download=False)
    assert len(train) == 60_000 and len(test) == 10_000
    assert train.images.shape == (60_000, 1, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names == dataset_info("fashion_mnist").class_names


def test_user_data_folder_is_searched(tmp_path):
    write_mnist_like(tmp_path / "home" / "mnist")
    assert len(load_dataset("mnist", download=False)) == 6


# -- CIFAR-10 pickles ----------------------------------------------------------------------------

def write_cifar(root: Path, n=3, bytes_keys=False):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        batches[name] = entry
    return batches


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_from_pickles(tmp_path, bytes_keys):
    batches = write_cifar(tmp_path, bytes_keys=bytes_keys)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    train = load_dataset("cifar10", root=tmp_path, download=False)
    test = load_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py", download=False)
    assert len(train) == 15 and len(test) == 3
    row = batches["data_batch_2"][key("data")][1]  # item 4 = second image of the second batch
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == batches["data_batch_2"][key("labels")][1]
    # rows are 1024 red, then 1024 green, then 1024 blue values, each row-major
    torch.testing.assert_close(x, torch.from_numpy(row.reshape(3, 32, 32)).float() / 127.5 - 1)


# -- ImageNet-100 ImageFolder tree ---------------------------------------------------------------

def write_image_tree(root: Path, layout: str):
    from PIL import Image

    rng = np.random.default_rng(2)
    dirs = {"torchvision": ("train", "val"), "kaggle": ("train.X1", "val.X")}[layout]
    for split_dir in dirs:
        for wnid in ("n02", "n01"):
            (root / split_dir / wnid).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                    root / split_dir / wnid / f"{wnid}_{i}.{'JPEG' if i else 'png'}")
    if layout == "kaggle":
        (root / "train.X2" / "n03").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(root / "train.X2" / "n03" / "a.JPEG")
        (root / "Labels.json").write_text(json.dumps({"n01": "tench, Tinca tinca", "n02": "goldfish",
                                                      "n03": "shark"}))


def test_imagenet100_torchvision_layout(tmp_path):
    write_image_tree(tmp_path, "torchvision")
    ds = load_dataset("imagenet100", root=tmp_path, image_size=16, hflip=True)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 0, 1, 1]  # sorted wnids: n01 -> 0
    x, y = ds[3]
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y == 1
    assert load_dataset("imagenet100", "test", root=tmp_path, image_size=16).class_names == ("n01", "n02")


def test_imagenet100_kaggle_layout(tmp_path):
    write_image_tree(tmp_path, "kaggle")
    train = load_dataset("imagenet100", root=tmp_path, image_size=8)
    assert len(train) == 5 and train.class_names == ("tench", "goldfish", "shark")
    assert train[4][0].shape == (3, 8, 8)  # grayscale file converted to RGB
    assert load_dataset("imagenet100", "val", root=tmp_path).labels.tolist() == [0, 0, 1, 1]


def test_default_imagenet100_size_is_128(tmp_path):
    write_image_tree(tmp_path, "torchvision")
    assert load_dataset("imagenet100", root=tmp_path)[0][0].shape == (3, 128, 128)


# -- absent data fails fast ----------------------------------------------------------------------

def test_absent_dataset_without_download_fails_with_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz") as info:
        load_dataset("cifar10", root=tmp_path / "nothing", download=False)
    assert "no download tried" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="Kaggle"):
        load_dataset("imagenet100")
    assert time.perf_counter() - start < 5


def test_offline_download_fails_fast(tmp_path, monkeypatch):
    import torchvision.datasets

    fetched = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: fetched.append(a))
    (tmp_path / "nothing").mkdir()  # a given root must exist (tests/test_reliability_data.py)
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError, match="download from .* failed") as info:
        load_dataset("cifar10", root=tmp_path / "nothing")  # download=None: tries, cannot connect
    assert "network disabled" in str(info.value) and not fetched
    assert not any((tmp_path / "nothing").iterdir())  # nothing half-written
    assert time.perf_counter() - start < 5


def test_offline_env_disables_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    monkeypatch.setattr(formats, "_download", lambda *a, **k: pytest.fail("download attempted"))
    with pytest.raises(DatasetNotFoundError, match="no download tried"):
        load_dataset("mnist", root=tmp_path)


def test_unreachable_host_times_out(monkeypatch):
    released = threading.Event()

    def hang(*args, **kwargs):  # a host that never answers, until the test lets the thread go
        released.wait(30)
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    try:
        with pytest.raises(OSError, match="no answer"):
            formats._check_reachable("https://example.invalid/x", timeout=0.2)
        assert time.perf_counter() - start < 3
    finally:
        released.set()


# -- options and bad arguments -------------------------------------------------------------------

def test_hflip_flips_about_half_the_time(tmp_path):
    write_mnist_like(tmp_path, n_train=1)
    plain = load_dataset("fashion_mnist", root=tmp_path, download=False)[0][0]
    ds = load_dataset("fashion_mnist", root=tmp_path, download=False, hflip=True)
    torch.manual_seed(0)
    flipped = [torch.equal(ds[0][0], plain.flip(-1)) for _ in range(200)]
    assert 60 < sum(flipped) < 140


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(name="celeba"), ValueError, "available"),
    (dict(name="shapes", split="dev"), ValueError, "split"),
    (dict(name="shapes", image_size=0), ValueError, "image_size"),
    (dict(name="shapes", limit=0), ValueError, "limit"),
    (dict(name="cifar10", seed=3), TypeError, "unexpected"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset(**kwargs)


def test_dataset_info():
    info = dataset_info("fashion_mnist")
    assert (info.channels, info.image_size, info.num_classes) == (1, 32, 10)
    assert dataset_info("imagenet100").image_size == 128 and dataset_info("cifar10").channels == 3
    with pytest.raises(ValueError, match="two_moons"):
        dataset_info("nope")


# -- synthetic data ------------------------------------------------------------------------------

def test_shapes_are_deterministic_by_seed():
    a = load_dataset("shapes", num_samples=64, seed=3)
    b = load_dataset("shapes", num_samples=64, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, load_dataset("shapes", num_samples=64, seed=4).images)
    assert not torch.equal(a.images, load_dataset("shapes", "test", num_samples=64, seed=3).images)
    x, y = a[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 4
    assert set(a.labels.tolist()) == {0, 1, 2, 3}
    assert load_dataset("shapes", image_size=16, num_samples=2)[1][0].shape == (3, 16, 16)


def test_shapes_have_distinct_foreground():
    images, labels = make_shapes(16, 32, seed=0)
    # each image holds exactly two colours: background and shape
    for img in images:
        assert len(torch.unique(img.flatten(1), dim=1).T) == 2


@pytest.mark.parametrize("name", list(data.TOY_2D))
def test_toy_2d(name):
    x, labels = toy_2d(name, 500, 0, return_labels=True)
    assert x.shape == (500, 2) and x.dtype == torch.float32 and labels.shape == (500,)
    assert torch.equal(x, toy_2d(name, 500, torch.Generator().manual_seed(0)))
    assert 0.3 < x.std() < 3


def test_toy_2d_bad_input():
    with pytest.raises(ValueError, match="available"):
        toy_2d("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        toy_2d("ring", 0)
    with pytest.raises(TypeError, match="generator"):
        toy_2d("ring", 3, generator="seed")
