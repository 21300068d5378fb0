import pytest
import torch

from diffusion_lib import profiles
from diffusion_lib.profiles import default_device, get_profile, pick


@pytest.mark.parametrize("value", ["smoke", "cpu", "gpu", " CPU "])
def test_profile_from_environment(monkeypatch, value):
    monkeypatch.setenv("DIFFUSION_PROFILE", value)
    assert get_profile() == value.strip().lower()


@pytest.mark.parametrize("cuda, expected", [(True, "gpu"), (False, "cpu")])
def test_default_profile_follows_cuda(monkeypatch, cuda, expected):
    monkeypatch.delenv("DIFFUSION_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert get_profile() == expected
    monkeypatch.setenv("DIFFUSION_PROFILE", "")
    assert get_profile() == expected


def test_bad_profile_names_the_allowed_ones(monkeypatch):
    monkeypatch.setenv("DIFFUSION_PROFILE", "tiny")
    with pytest.raises(ValueError, match="DIFFUSION_PROFILE.*smoke, cpu, gpu.*'tiny'"):
        get_profile()


def test_pick_returns_the_profiles_value():
    assert pick("smoke", smoke=1, cpu=2, gpu=3) == 1
    assert pick("cpu", smoke=1, cpu=2, gpu=3) == 2
    assert pick("gpu", smoke=1, cpu=2, gpu=3) == 3
    with pytest.raises(ValueError, match="profile must be one of smoke, cpu, gpu"):
        pick("large", smoke=1, cpu=2, gpu=3)
    with pytest.raises(TypeError):
        pick("cpu", smoke=1, cpu=2)  # every profile needs its value


def test_default_device(monkeypatch):
    monkeypatch.delenv(profiles.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device("smoke") == torch.device("cpu")  # CI compares against CPU outputs
    assert default_device("cpu") == torch.device("cuda")
    assert default_device("gpu") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device("gpu") == torch.device("cpu")
    monkeypatch.setenv(profiles.DEVICE_ENV, "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device("gpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="profile must be one of"):
        default_device("fast")


def test_dry_run_caps_the_gpu_profiles_counts(monkeypatch):
    monkeypatch.setenv(profiles.DRY_RUN_ENV, "4")
    assert pick("gpu", smoke=1, cpu=2, gpu=100_000) == 4
    assert pick("gpu", smoke=1, cpu=2, gpu=3) == 3
    assert pick("gpu", smoke=[], cpu=[], gpu=[1000, 2, 50]) == [4, 2, 4]
    assert pick("gpu", smoke=(), cpu=(), gpu=[("ddpm_cifar10", 128)]) == [("ddpm_cifar10", 4)]
    # names, scales, flags and dicts (e.g. an image size) pass unchanged
    assert pick("gpu", smoke=0, cpu=0, gpu="cifar10") == "cifar10"
    assert pick("gpu", smoke=0, cpu=0, gpu=7.5) == 7.5
    assert pick("gpu", smoke=0, cpu=0, gpu=True) is True
    assert pick("gpu", smoke={}, cpu={}, gpu={"image_size": 128}) == {"image_size": 128}
    # other profiles are never cut
    assert pick("cpu", smoke=1, cpu=5_000, gpu=3) == 5_000
    assert profiles.dry_run_fields("cpu", {"max_steps": 300}) == {"max_steps": 300}


def test_dry_run_cuts_training_configurations(monkeypatch):
    from diffusion_lib.course import pretrained
    from diffusion_lib.course import recipes as course_models

    monkeypatch.setenv(profiles.DRY_RUN_ENV, "3")
    full = profiles.dry_run_fields("gpu", {"max_steps": 3000, "batch_size": 128, "warmup_steps": 500,
                                           "log_every": 50, "num_timesteps": 1000, "lr": 2e-4})
    assert full == {"max_steps": 3, "batch_size": 3, "warmup_steps": 3, "log_every": 3,
                    "num_timesteps": profiles.DRY_RUN_MAX_TIMESTEPS, "lr": 2e-4}
    config = pretrained.notebook_config("cifar10_ddpm", "gpu")
    assert (config.model, config.max_steps, config.batch_size, config.num_timesteps) == ("ddpm_cifar10", 3, 3, 20)
    assert course_models.vae_config("gpu").max_steps == 3
    assert course_models.classifier_config("gpu").batch_size == 3
    assert course_models.latent_config("gpu", None, class_conditional=True).max_steps == 3
    monkeypatch.delenv(profiles.DRY_RUN_ENV)
    assert pretrained.notebook_config("cifar10_ddpm", "gpu").max_steps == 3000


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_dry_run_value(monkeypatch, value):
    monkeypatch.setenv(profiles.DRY_RUN_ENV, value)
    with pytest.raises(ValueError, match=f"DIFFUSION_DRY_RUN must be a positive integer.*{value!r}"):
        pick("gpu", smoke=1, cpu=2, gpu=3)
