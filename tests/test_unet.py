import pytest
import torch

from diffusion_lib.models import PRESETS, UNet, UNetConfig


def tiny_config(**overrides):
    kw = dict(in_channels=3, image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
              attention_levels=(1,), dropout=0.0, num_groups=4)
    kw.update(overrides)
    return UNetConfig(**kw)


def randomise(model, seed=0):
    """Ho et al. zero-initialise the last layers, so a fresh model outputs 0: re-draw everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def count(name):
    with torch.device("meta"):  # no memory, no init: counts even the 157M preset instantly
        model = UNet(UNetConfig.preset(name))
    return sum(p.numel() for p in model.parameters())


def test_ddpm_cifar10_has_ho_et_al_parameter_count():
    assert abs(count("ddpm_cifar10") - 35.7e6) / 35.7e6 < 0.01
    assert count("ddpm_cifar10") == 35_746_307


def test_report_presets_parameter_counts():
    assert count("seed_cifar10") == 35_173_443  # Table III (the report says "35M")
    assert count("seed_imagenet100_latent") == 157_541_763  # Table IV, 100 classes + null


@pytest.mark.parametrize("name", ["fashion_small", "cifar_small", "latent_small"])
def test_small_presets_are_cpu_sized(name):
    assert 1e6 <= count(name) <= 4e6


def test_every_preset_builds_from_its_dict():
    for name in PRESETS:
        config = UNetConfig.preset(name)
        assert UNetConfig.from_dict(config.to_dict()) == config


def test_config_dict_round_trip_accepts_lists():
    d = tiny_config(num_classes=3).to_dict()
    assert d["channel_mult"] == [1, 2] and d["out_channels"] == 3
    assert UNetConfig.from_dict(d) == tiny_config(num_classes=3)


def test_preset_overrides_and_unknowns():
    assert UNetConfig.preset("fashion_small", num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match="available"):
        UNetConfig.preset("nope")
    with pytest.raises(ValueError, match="valid keys"):
        UNetConfig.from_dict({"in_channels": 1, "colour": 3})


@pytest.mark.parametrize("kw, match", [
    (dict(image_size=18, channel_mult=(1, 2, 2)), "halved"),
    (dict(attention_levels=(2,)), "attention_levels"),
    (dict(num_groups=5), "num_groups"),
    (dict(dropout=1.0), "dropout"),
    (dict(base_channels=0), "base_channels"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_configs_fail_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kw)


def test_forward_shape_unconditional_and_zero_init():
    model = UNet(tiny_config())
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.all(out == 0)  # zero-initialised output layer (Ho et al.)
    assert model.null_label is None


def test_out_channels_can_differ():
    model = UNet(tiny_config(out_channels=6))
    assert model(torch.randn(1, 3, 16, 16), torch.tensor([5])).shape == (1, 6, 16, 16)


def test_time_and_label_change_the_output():
    torch.manual_seed(0)
    model = randomise(UNet(tiny_config(num_classes=3))).eval()
    x = torch.randn(1, 3, 16, 16).expand(4, -1, -1, -1)
    out = model(x, torch.tensor([10, 10, 10, 500]), torch.tensor([0, 1, 3, 0]))
    assert model.null_label == 3
    assert not torch.allclose(out[0], out[1])  # label matters
    assert not torch.allclose(out[0], out[3])  # time matters
    # y=None means the null label: the unconditional prediction used by CFG.
    torch.testing.assert_close(model(x[:1], torch.tensor([10])), out[2:3])


def test_scalar_and_float_timesteps_broadcast():
    model = randomise(UNet(tiny_config())).eval()
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x, 7), model(x, torch.full((3,), 7)))
    assert model(x, torch.tensor([0.5, 1.5, 2.5])).shape == x.shape


def test_channels_last_matches_contiguous():
    model = randomise(UNet(tiny_config())).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 300])
    ref = model(x, t)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_backward_reaches_every_parameter():
    model = randomise(UNet(tiny_config(num_classes=2, dropout=0.1)))
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 2]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_runs_under_cpu_autocast():
    model = randomise(UNet(tiny_config(num_classes=2))).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_runs_under_cuda_autocast(dtype):
    model = randomise(UNet(tiny_config(num_classes=2))).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = model(x, torch.tensor([1, 2], device="cuda"), torch.tensor([0, 2], device="cuda"))
    out.float().square().mean().backward()
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("x_shape, match", [
    ((2, 1, 16, 16), "channels"),
    ((2, 3, 12, 12), "image_size"),
    ((2, 3, 15, 15), "halved"),
    ((3, 16, 16), "4-D"),
])
def test_bad_input_shapes_fail_before_compute(x_shape, match):
    with pytest.raises(ValueError, match=match):
        UNet(tiny_config())(torch.randn(x_shape), torch.zeros(x_shape[0], dtype=torch.long))


@pytest.mark.parametrize("y, match", [
    (torch.tensor([0, 4]), "label 4 out of range"),
    (torch.tensor([-1, 0]), "label -1 out of range"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([0, 1, 2]), "shape"),
])
def test_bad_labels(y, match):
    model = UNet(tiny_config(num_classes=3))
    with pytest.raises(ValueError, match=match):
        model(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), y)


def test_label_for_unconditional_model_and_bad_t():
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="unconditional"):
        UNet(tiny_config())(x, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must have shape"):
        UNet(tiny_config())(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="UNetConfig"):
        UNet({"in_channels": 3})
