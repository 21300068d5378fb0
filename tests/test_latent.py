"""Latent diffusion end to end on tiny data: the VAE trained by the trainer (task vae), its latent scale
stored and applied through the checkpoint, cached latents, a latent UNet trained and sampled, the
classifier task, Stable Diffusion's VAE adapter, and bad input. (The VAE itself: tests/test_vae.py.)"""

import sys

import pytest
import torch
from _train_utils import loss_after_steps, one_thread
from PIL import Image

from diffusion_lib import NoiseSchedule, cli
from diffusion_lib import checkpoint as ck
from diffusion_lib.training.config import ConfigError, load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.latent import (
    LatentDataset,
    StableDiffusionVAE,
    check_latent_shape,
    decode_latents,
    encode_dataset,
    file_sha256,
    latent_unet_config,
    load_sd_vae,
    load_vae,
    reconstruction_psnr,
)
from diffusion_lib.models import UNet
from diffusion_lib.training import train

TINY_VAE = ("model_overrides={in_channels: 3, base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, "
            "latent_channels: 2, num_groups: 4, attention: false}")
TINY_LATENT_UNET = ("model_overrides={in_channels: 2, image_size: 4, base_channels: 8, channel_mult: [1, 2], "
                    "num_res_blocks: 1, attention_levels: [1], num_groups: 4, dropout: 0.0}")
COMMON = {"dataset": "shapes", "dataset_kwargs": "{num_samples: 32}", "image_size": 8, "batch_size": 8,
          "lr": "2e-3", "device": "cpu", "progress": "false", "tensorboard": "false", "log_every": 1,
          "sample_every": 0, "ema_decay": 0.9}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def overrides(output_dir, model_overrides, **extra):
    return [model_overrides] + [f"{k}={v}" for k, v in {**COMMON, "output_dir": output_dir, **extra}.items()]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    with one_thread():
        result = train(load_config(None, overrides(out, TINY_VAE, task="vae", model="fashion_f4", max_steps=6,
                                                   checkpoint_every=3, keep_last=5, vae_beta="1e-3")))
    return out, result


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "latents"


# ------------------------------------------------------------------------------ VAE training
def test_vae_trains_with_the_trainer_and_stores_its_scale(vae_run):
    out, result = vae_run
    assert result["step"] == 6 and result["history"][-1][1] < result["history"][0][1]
    final = ck.load_checkpoint(result["checkpoint"])
    assert final["kind"] == "vae" and final["latent_scale"] == pytest.approx(result["latent_scale"])
    assert final["ema"]["latent_scale"].item() == pytest.approx(result["latent_scale"])
    exported = ck.load_checkpoint(out / "vae.pt")
    assert set(exported) >= {"vae_config", "ema", "latent_scale", "step", "config", "report"}
    assert "optimizer" not in exported and exported["report"]["latent_shape"] == [2, 4, 4]
    assert exported["report"]["psnr_db"] > 0 and (out / "log.csv").is_file()


def test_scale_is_applied_through_the_checkpoint(vae_run):
    out, result = vae_run
    vae = load_vae(out / "vae.pt")
    assert vae.latent_scale.item() == pytest.approx(result["latent_scale"]) and not vae.training
    x = torch.stack([load_dataset("shapes", num_samples=32, image_size=8)[i][0] for i in range(32)])
    with torch.no_grad():
        z = vae.encode_scaled(x, sample=False)
        torch.testing.assert_close(z, vae.encode(x).mean * result["latent_scale"])
        assert abs(z.double().std().item() - 1.0) < 1e-3  # measured on these 32 images (mean latents)
        torch.testing.assert_close(decode_latents(z, out / "vae.pt"), vae.decode(z / vae.latent_scale).clamp(-1, 1))


def test_a_checkpoint_without_a_scale_is_refused(vae_run):
    out, _ = vae_run
    intermediate = ck.checkpoint_path(out, 3)
    with pytest.raises(ck.CheckpointError, match="no latent scale"):
        load_vae(intermediate)
    assert not load_vae(intermediate, require_scale=False).has_latent_scale
    with pytest.raises(ck.CheckpointError, match="not a VAE checkpoint"):
        load_vae(ck.save_checkpoint(out.parent / "unet.pt", {"model": {}, "model_config": {}}))


def test_vae_training_resumes_exactly(tmp_path):
    def run(out, max_steps, resume=False):
        return train(load_config(None, overrides(out, TINY_VAE, task="vae", model="fashion_f4", max_steps=max_steps,
                                                 checkpoint_every=2)), resume=resume)

    run(tmp_path / "straight", 4)
    run(tmp_path / "broken", 2)
    assert run(tmp_path / "broken", 4, resume=True)["start_step"] == 2
    a = ck.load_checkpoint(ck.checkpoint_path(tmp_path / "straight", 4))
    b = ck.load_checkpoint(ck.checkpoint_path(tmp_path / "broken", 4))
    for key in ("model", "ema"):  # bit for bit (the unmeasured latent scale is NaN in both)
        for name, tensor in a[key].items():
            torch.testing.assert_close(tensor, b[key][name], rtol=0, atol=0, equal_nan=True, msg=f"{key}.{name}")


def test_vae_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="VAE preset"):
        train(load_config(None, overrides(tmp_path, TINY_VAE, task="vae", model="fashion_small", max_steps=1)))
    with pytest.raises(ConfigError, match="in_channels=3"):
        train(load_config(None, ["task=vae", "model=fashion_f4", *overrides(tmp_path, "model_overrides={}")[1:]]))
    with pytest.raises(ConfigError, match="task"):
        load_config(None, ["task=gan"])


# ---------------------------------------------------------------------------- cached latents
def test_latents_are_cached_by_vae_sha(vae_run, cache, monkeypatch):
    out, _ = vae_run
    images = load_dataset("shapes", num_samples=32, image_size=8)
    first = encode_dataset(images, out / "vae.pt", progress=False)
    assert isinstance(first, LatentDataset) and first.latent_shape == (2, 4, 4) and len(first) == 32
    assert first.vae_sha256 == file_sha256(out / "vae.pt") and torch.equal(first.labels, images.labels)
    assert len(list(cache.glob("*.pt"))) == 1

    import diffusion_lib.latent as latent

    monkeypatch.setattr(latent, "encode_images", lambda *a, **k: pytest.fail("the cache was not used"))
    again = encode_dataset(images, out / "vae.pt", progress=False)
    assert torch.equal(again.latents, first.latents) and again[3][1] == int(images.labels[3])
    monkeypatch.undo()
    monkeypatch.setenv("DIFFUSION_CACHE", str(cache.parent))
    other = encode_dataset(load_dataset("shapes", num_samples=32, image_size=8, seed=1), out / "vae.pt",
                           progress=False)  # other images: another file
    assert len(list(cache.glob("*.pt"))) == 2 and not torch.equal(other.latents, first.latents)


# ------------------------------------------------------------------------- latent diffusion
def test_a_latent_training_step_lowers_the_loss(vae_run, cache):
    out, _ = vae_run
    latents = encode_dataset(load_dataset("shapes", num_samples=32, image_size=8), out / "vae.pt", progress=False)
    vae = load_vae(out / "vae.pt")
    config = latent_unet_config(vae, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(),
                                num_groups=4, dropout=0.0, num_classes=None)
    assert (config.in_channels, config.image_size) == (2, 4)
    torch.manual_seed(0)
    model = UNet(config)
    schedule = NoiseSchedule.linear(50)
    x0 = latents.latents[:16]
    before = loss_after_steps(model, schedule, x0, steps=0)
    assert loss_after_steps(model, schedule, x0) < 0.8 * before


def test_latent_model_trains_and_samples_through_the_command_line(vae_run, cache, tmp_path, capsys):
    out, _ = vae_run
    run = tmp_path / "latent"
    items = overrides(run, TINY_LATENT_UNET, model="latent_small",
                      vae=out / "vae.pt", class_conditional="true", num_timesteps=20, max_steps=2,
                      sample_every=2, sample_n=4, sample_steps=2)
    assert cli.main(["train", "--set", *items]) == 0
    training_grid = Image.open(run / "samples" / "step_00000002.png")
    assert training_grid.size == (4 * 8 + 5 * 2, 8 + 2 * 2)  # decoded 8x8 images, not 2x2 latents
    state = ck.load_checkpoint(ck.latest_checkpoint(run))
    assert state["vae"] == str(out / "vae.pt") and state["vae_sha256"] == file_sha256(out / "vae.pt")
    capsys.readouterr()
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", "--checkpoint", str(ck.latest_checkpoint(run)), "--n", "4", "--steps", "3",
                     "--guidance-scale", "2", "--out", str(grid), "--nrow", "4"]) == 0
    assert Image.open(grid).size == (4 * 8 + 5 * 2, 8 + 2 * 2)  # decoded 8x8 images, not 2x2 latents


def test_latent_shape_the_unet_does_not_take(vae_run, cache, tmp_path):
    out, _ = vae_run
    vae = load_vae(out / "vae.pt")
    with pytest.raises(ValueError, match=r"latents of shape \(2, 4, 4\).*latent_unet_config"):
        check_latent_shape(latent_unet_config((4, 8, 8)), vae)
    check_latent_shape(latent_unet_config(vae, channel_mult=(1, 2), attention_levels=()), vae)
    with pytest.raises(ConfigError, match=r"shape \(2, 4, 4\) but the model takes \(4, 8, 8\)"):
        train(load_config(None, overrides(tmp_path / "bad", "model_overrides={}", model="latent_small",
                                          vae=out / "vae.pt", max_steps=1)))
    with pytest.raises(ValueError, match="do not fit this VAE"):
        decode_latents(torch.zeros(1, 4, 8, 8), vae)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        decode_latents(torch.zeros(1, 2, 4, 4), tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="not the VAE"):
        decode_latents(torch.zeros(1, 2, 4, 4), out / "vae.pt", expected_sha256="0" * 64)


def test_reconstruction_psnr_of_a_perfect_and_a_poor_reconstruction():
    class Identity(torch.nn.Module):
        def __init__(self, noise=0.0):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.noise = noise

        def encode(self, x):
            return type("Posterior", (), {"mode": lambda _: x})()

        def decode(self, z):
            return z + self.noise

        encode_scaled = decode_scaled = None

    x = torch.rand(4, 1, 8, 8) * 1.6 - 0.8
    assert reconstruction_psnr(Identity(), x) > 100
    assert reconstruction_psnr(Identity(0.2), x) == pytest.approx(10 * torch.log10(torch.tensor(1 / 0.01)).item())


# ------------------------------------------------------------------------------- classifier task
def test_classifier_task_trains_and_reports_test_accuracy(tmp_path):
    out = tmp_path / "clf"
    result = train(load_config(None, overrides(out, "model_overrides={channels: [8, 16], dropout: 0.0}",
                                               task="classifier", model="classifier", max_steps=6, hflip="true",
                                               checkpoint_every=3, lr="1e-2")))
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["history"][-1][1] < result["history"][0][1]
    from diffusion_lib.checkpoint import load_classifier

    saved = ck.load_checkpoint(out / "classifier.pt")
    assert saved["test_accuracy"] == result["test_accuracy"] and saved["classifier_config"]["num_classes"] == 4
    model = load_classifier(out / "classifier.pt")
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)
    with pytest.raises(ConfigError, match="'classifier'"):
        train(load_config(None, overrides(tmp_path / "x", "model_overrides={}", task="classifier", max_steps=1)))


# --------------------------------------------------------------------- Stable Diffusion's VAE
def test_stable_diffusion_vae_adapter():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    autoencoder = diffusers.AutoencoderKL(  # SD's layout (f = 8, 4 channels) at toy width, random weights
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, layers_per_block=1)
    vae = StableDiffusionVAE(autoencoder, image_size=32).eval()
    assert vae.latent_shape == (4, 4, 4) and vae.latent_scale.item() == pytest.approx(0.18215)
    config = latent_unet_config(StableDiffusionVAE(autoencoder, image_size=128), channel_mult=(1, 2))
    assert (config.in_channels, config.image_size) == (4, 16)  # 128x128 images -> 16x16x4 latents
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode_scaled(x, sample=False)
        torch.testing.assert_close(z, autoencoder.encode(x).latent_dist.mode() * 0.18215)
        torch.testing.assert_close(decode_latents(z, vae), autoencoder.decode(z / 0.18215).sample.clamp(-1, 1))


def test_sd_vae_needs_diffusers(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install diffusers"):
        load_sd_vae()

