"""Every gpu-profile configuration builds, takes one training step and one sampling step on the CPU.

The gpu profile's recipes (Ho et al.'s 35.7M-parameter CIFAR-10 UNet, the 3-channel VAE, the latent
and the guided latent models and the classifier, on CIFAR-10 and on ImageNet-100) are trained on
GPUs only, so nothing else would notice when one of them stops building. Here each runs through
`train` exactly as a notebook or the command line runs it, with its batch cut to 2 and one step,
on CIFAR-10 and ImageNet-100 copies in their real on-disk formats (tests/_dataset_fixtures.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch
from _dataset_fixtures import write_cifar10, write_imagenet100
from _train_utils import one_thread

from diffusion_lib import checkpoint, classifier_free_guidance, data, ddim_sample, latent
from diffusion_lib.checkpoint import load_classifier, load_model
from diffusion_lib.course import pretrained
from diffusion_lib.course import recipes as course_models
from diffusion_lib.models import sd_vae
from diffusion_lib.training import load_config, train

REPO = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DDPM_CIFAR10_PARAMETERS = 35_746_307  # Ho et al. 2020: 35.7M


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("data")
    write_cifar10(home)
    write_imagenet100(home)
    return home


@pytest.fixture(autouse=True)
def offline_data(data_home, tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(data_home))
    monkeypatch.setenv(checkpoint.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    monkeypatch.delenv("DIFFUSION_DRY_RUN", raising=False)
    with one_thread():
        yield


def one_step(config, output_dir, **kw):
    """Train `config` for one step of batch 2 on the CPU; returns the training summary."""
    config = dataclasses.replace(config, max_steps=1, batch_size=2, warmup_steps=0, device="cpu", num_workers=0,
                                 output_dir=str(output_dir), progress=False, tensorboard=False, sample_every=0,
                                 log_every=1, checkpoint_every=1)
    summary = train(config, **kw)
    assert summary["step"] == 1
    return summary


def sample_one_step(checkpoint, y=None):
    """One DDIM step of the trained diffusion model (guided with w = 3 when `y` is given)."""
    model, schedule, info = load_model(checkpoint)
    if y is not None:
        model = classifier_free_guidance(model, 3.0, info["null_label"])
    x = ddim_sample(model, schedule, shape=(1, *info["image_shape"]), num_steps=1, y=y,
                    generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, *info["image_shape"]) and torch.isfinite(x).all()
    return model, info, x


def pixel_configs():
    cases = [pytest.param(lambda: pretrained.notebook_config("cifar10_ddpm", "gpu"), id="cifar10_ddpm")]
    cases += [pytest.param(lambda name=name: load_config(REPO / "configs" / name), id=name)
              for name in ("ddpm_cifar10.yaml", "seed_cifar10.yaml")]
    cases.append(pytest.param(lambda: pretrained.notebook_config("fashion_ddpm_linear", "gpu"),
                              id="fashion_ddpm_linear",
                              marks=pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"no {FASHION_DIR}")))
    return cases


@pytest.mark.parametrize("make_config", pixel_configs())
def test_pixel_model(make_config, tmp_path):
    config = make_config()
    summary = one_step(config, tmp_path)
    model, info, _ = sample_one_step(summary["checkpoint"])
    if config.model == "ddpm_cifar10":
        assert sum(p.numel() for p in model.parameters()) == DDPM_CIFAR10_PARAMETERS
        assert info["image_shape"] == (3, 32, 32)


def latent_chain(dataset, vae, vae_path, tmp_path, latents=None):
    """The latent model and the guided latent model of chapters 7-8 on `vae`'s latents: one step each."""
    for name, conditional in (("latent", False), ("guided", True)):
        config = course_models.latent_config("gpu", vae_path, class_conditional=conditional, dataset=dataset,
                                             latent_shape=vae.latent_shape)
        summary = one_step(config, tmp_path / name, dataset=latents)
        y = torch.tensor([1]) if conditional else None
        _, info, z = sample_one_step(summary["checkpoint"], y=y)
        assert info["image_shape"] == tuple(vae.latent_shape)
        assert info["num_classes"] == (data.dataset_info(dataset).num_classes if conditional else None)
        image = latent.decode_latents(z, vae)
        assert image.shape == (1, 3, *[data.dataset_info(dataset).image_size] * 2) and torch.isfinite(image).all()


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet100"])
def test_course_vae_latent_and_guided_models(dataset, tmp_path):
    """The course's 3-channel VAE, then the latent and guided models on its latents (the trainer encodes them)."""
    summary = one_step(course_models.vae_config("gpu", dataset), tmp_path / "vae")
    vae_path = Path(summary["output_dir"]) / "vae.pt"
    vae = latent.load_vae(vae_path)
    size = data.dataset_info(dataset).image_size
    assert vae.latent_shape == (4, size // 4, size // 4)
    latent_chain(dataset, vae, vae_path, tmp_path)


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet100"])
def test_classifier(dataset, tmp_path):
    summary = one_step(course_models.classifier_config("gpu", dataset), tmp_path)
    classifier = load_classifier(Path(summary["output_dir"]) / "classifier.pt")
    images = torch.stack([data.load_dataset(dataset, "test")[i][0] for i in range(2)])
    with torch.no_grad():
        logits = classifier(images)
    assert logits.shape == (2, data.dataset_info(dataset).num_classes) and torch.isfinite(logits).all()


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None,
                    reason="diffusers is not installed (pip install diffusers): Stable Diffusion's VAE adapter untested")
def test_stable_diffusion_vae_adapter_on_imagenet100(tmp_path):
    """ImageNet-100 through Stable Diffusion's VAE interface: a tiny AutoencoderKL built here with SD's
    structure (f = 8, 4 latent channels, scaling factor 0.18215) stands in for the downloaded weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    autoencoder = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                                layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=128,
                                scaling_factor=sd_vae.SD_VAE_SCALE)
    vae = sd_vae.StableDiffusionVAE(autoencoder, image_size=128).eval()
    assert vae.latent_shape == (4, 16, 16)
    images = data.load_dataset("imagenet100", "train", image_size=128)
    latents = latent.encode_dataset(images, vae, cache_dir=tmp_path / "cache")
    assert len(latents) == len(images) and latents.latent_shape == (4, 16, 16)
    latent_chain("imagenet100", vae, None, tmp_path, latents=latents)


def test_in_memory_vae_with_a_scalar_buffer_keys_the_latent_cache():
    """Stable Diffusion's VAE adapter holds its latent scale in a 0-dim buffer; the cache key of an
    in-memory VAE hashes it like any other tensor."""
    module = torch.nn.Linear(2, 2)
    module.register_buffer("latent_scale", torch.tensor(0.18215))
    key = latent._module_sha256(module)
    module.latent_scale.fill_(0.5)
    assert latent._module_sha256(module) != key


def test_imagenet100_vae_falls_back_to_the_course_vae(monkeypatch, capsys, tmp_path):
    def offline(**kw):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setattr(sd_vae, "load_sd_vae", offline)
    monkeypatch.setattr(course_models, "load_or_train_vae",
                        lambda profile, config, **kw: ("vae", config.dataset, config.image_size))
    assert course_models.load_or_train_vae_for("gpu", "imagenet100") == ("vae", "imagenet100", 128)
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "could not be loaded (cannot reach huggingface.co)" in line


def test_missing_gpu_data_names_the_folder_and_layout(tmp_path, monkeypatch):
    """Offline without the data: the loader's DatasetNotFoundError, raised through `train`, names the
    data set, where to put it and what the folder holds."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    config = dataclasses.replace(pretrained.notebook_config("cifar10_ddpm", "gpu"), output_dir=str(tmp_path / "run"))
    with pytest.raises(data.DatasetNotFoundError, match="dataset 'cifar10'") as info:
        train(config)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(info.value)
    assert "test_batch" in str(info.value)
    with pytest.raises(data.DatasetNotFoundError, match="ImageNet-100 is never downloaded") as info:
        course_models.load_or_train_classifier("gpu", course_models.classifier_config("gpu", "imagenet100"),
                                               output_dir=tmp_path / "classifier")
    assert str(tmp_path / "imagenet100") in str(info.value) and "train/<class>/" in str(info.value)


def test_dry_run_trains_instead_of_loading_shipped_models(monkeypatch):
    monkeypatch.setattr(pretrained, "shipped_checkpoint", lambda name: Path(f"{name}.pt"))
    monkeypatch.setattr(pretrained, "load_pretrained", lambda name, **kw: "shipped")
    monkeypatch.setattr(pretrained, "train_here", lambda name, config, **kw: "trained here")
    config = pretrained.notebook_config("fashion_ddpm_linear", "gpu")
    assert pretrained.load_or_train("fashion_ddpm_linear", config, profile="gpu") == "shipped"
    monkeypatch.setenv("DIFFUSION_DRY_RUN", "4")
    assert pretrained.load_or_train("fashion_ddpm_linear", config, profile="gpu") == "trained here"
    assert pretrained.load_or_train("fashion_ddpm_linear", config, profile="cpu") == "shipped"
