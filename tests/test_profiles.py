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
