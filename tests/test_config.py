"""TrainConfig: YAML loading, overrides, validation, and the shipped configs (report Tables III/IV)."""

from pathlib import Path

import pytest

from diffusion_lib.training.config import (ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config,
                                  valid_keys)
from diffusion_lib.training.tasks.diffusion import build_model_config, build_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from diffusion_lib.data import dataset_info

    cfg = load_config(path)
    if cfg.task == "diffusion":  # the VAE and classifier configs are checked by their own tests
        build_schedule(cfg)
        build_model_config(cfg, dataset_info(cfg.dataset))


def test_seed_cifar10_is_report_table_iii():
    cfg = load_config(CONFIGS / "seed_cifar10.yaml")
    assert (cfg.dataset, cfg.image_size, cfg.batch_size, cfg.num_workers) == ("cifar10", 32, 128, 4)
    assert (cfg.lr, cfg.weight_decay, cfg.num_timesteps) == (1e-4, 1e-4, 1000)
    assert (cfg.schedule, cfg.beta_start, cfg.beta_end, cfg.prediction_type) == ("linear", 0.0002, 0.02, "epsilon")
    assert cfg.max_steps == 480 * (50_000 // 128)  # 480 epochs
    assert cfg.sample_steps == 250
    m = build_model_config(cfg)
    assert (m.in_channels, m.image_size, m.base_channels, m.num_res_blocks) == (3, 32, 64, 3)
    assert (m.channel_mult, m.attention_levels, m.dropout) == ((1, 2, 4, 4), (2, 3), 0.1)
    s = build_schedule(cfg)
    assert s.betas[0].item() == pytest.approx(0.0002) and s.betas[-1].item() == pytest.approx(0.02)


def test_seed_imagenet100_is_report_table_iv():
    cfg = load_config(CONFIGS / "seed_imagenet100_latent_cfg.yaml")
    assert (cfg.dataset, cfg.image_size, cfg.batch_size, cfg.seed) == ("imagenet100", 128, 128, 42)
    assert (cfg.lr, cfg.weight_decay, cfg.num_timesteps, cfg.beta_start, cfg.beta_end) == (1e-4, 1e-4, 1000, 0.0002, 0.02)
    assert cfg.class_conditional and cfg.p_uncond == 0.1 and cfg.vae and cfg.max_steps == 52_000
    m = build_model_config(cfg)
    assert (m.in_channels, m.image_size, m.base_channels, m.num_res_blocks) == (3, 32, 128, 3)
    assert (m.channel_mult, m.attention_levels, m.dropout) == ((1, 2, 2, 4, 4), (1, 2, 3, 4), 0.1)
    assert m.num_classes + 1 == 101  # the report's 101 = 100 classes + the null class


def test_overrides_and_round_trip():
    cfg = load_config(CONFIGS / "smoke.yaml", ["lr=2e-3", "model_overrides.dropout=0", "adam_betas=[0.9, 0.99]",
                                                "min_snr_gamma=5", "grad_clip=null"])
    assert cfg.lr == 2e-3 and isinstance(cfg.lr, float)  # "2e-3" is a string to YAML 1.1: still a float
    assert cfg.model_overrides["dropout"] == 0 and cfg.model_overrides["base_channels"] == 16
    assert cfg.adam_betas == (0.9, 0.99) and cfg.min_snr_gamma == 5.0 and cfg.grad_clip is None
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert load_config(None) == TrainConfig()


def test_unknown_key_lists_valid_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("batch_sise: 64\n")
    with pytest.raises(ValueError, match="batch_sise") as e:
        load_config(tmp_path / "c.yaml")
    for key in ("batch_size", "lr", "max_steps"):
        assert key in str(e.value)
    with pytest.raises(ValueError, match="valid keys"):
        load_config(None, ["learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["lr"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, key", [
    ("batch_size=abc", "batch_size"), ("batch_size=0", "batch_size"), ("batch_size=true", "batch_size"),
    ("batch_size=2.5", "batch_size"), ("lr=-1", "lr"), ("lr=.inf", "lr"), ("lr=fast", "lr"),
    ("weight_decay=-0.1", "weight_decay"), ("p_uncond=1.5", "p_uncond"), ("ema_decay=1", "ema_decay"),
    ("precision=fp8", "precision"), ("prediction_type=score", "prediction_type"), ("max_steps=-5", "max_steps"), ("max_minutes=0", "max_minutes"),
    ("beta_start=0", "beta_start"), ("beta_end=1.5", "beta_end"), ("hflip=maybe", "hflip"),
    ("model_overrides=3", "model_overrides"), ("adam_betas=[0.9]", "adam_betas"), ("device=tpu", "device"),
    ("min_snr_gamma=0", "min_snr_gamma"), ("keep_last=0", "keep_last"), ("image_size=-8", "image_size"),
    ("num_threads=0", "num_threads"),
])
def test_wrong_types_and_ranges_name_the_key(override, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        load_config(None, [override])


def test_schedule_parameters_checked_against_the_schedule():
    with pytest.raises(ValueError, match="beta_start.*cosine"):
        build_schedule(load_config(None, ["schedule=cosine", "beta_start=0.001"]))
    with pytest.raises(ValueError, match="'beta_start'"):
        load_config(None, ["beta_start=0.05", "beta_end=0.02"])
    with pytest.raises(ValueError, match="'schedule'"):
        build_schedule(load_config(None, ["schedule=exponential"]))
    assert build_schedule(load_config(None, ["schedule=cosine", "schedule_kwargs={s: 0.01}"])).params["s"] == 0.01
    with pytest.raises(ValueError):  # epsilon cannot be learned where the SNR is zero
        build_schedule(load_config(None, ["zero_terminal_snr=true", "prediction_type=epsilon"]))
    assert build_schedule(load_config(None, ["zero_terminal_snr=true", "prediction_type=v_prediction"])).zero_terminal_snr


def test_model_must_match_the_dataset():
    from diffusion_lib.data import dataset_info

    with pytest.raises(ValueError, match="in_channels"):  # colour data, grayscale model
        build_model_config(load_config(None, ["dataset=cifar10", "model=fashion_small"]), dataset_info("cifar10"))
    with pytest.raises(ValueError, match="image_size"):  # 20 cannot be halved 3 times
        build_model_config(load_config(None, ["image_size=20"]), dataset_info("fashion_mnist"))
    with pytest.raises(ValueError, match="out of range"):  # 10 classes, a 3-class model
        build_model_config(load_config(None, ["class_conditional=true", "model_overrides.num_classes=3"]),
                           dataset_info("fashion_mnist"))
    cond = build_model_config(load_config(None, ["class_conditional=true"]), dataset_info("fashion_mnist"))
    assert cond.num_classes == 10
    assert build_model_config(load_config(None, ["model=latent_small"])).num_classes is None  # unconditional


def test_valid_keys_cover_the_dataclass():
    assert "p_uncond" in valid_keys() and "checkpoint_every" in valid_keys()
    with pytest.raises(ConfigError):
        config_from_dict([1, 2])
