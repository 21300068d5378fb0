"""Training configuration: one plain dataclass, loaded from YAML with ``key=value`` overrides.

Every option of ``python -m diffusion_lib train`` is a field of :class:`TrainConfig`. A YAML file
sets some of them, ``--set key=value`` overrides (values parsed as YAML, ``model_overrides.dropout=0``
reaches into a dict field), and :func:`validate_config` checks types and ranges so that a typo fails
at once with the key's name instead of hours into a run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..data.datasets import DATASET_OPTIONS, DATASETS
from ..objective import FLOW_TIME_SAMPLINGS
from ..schedules import PREDICTION_TYPES

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TASKS = ("diffusion", "vae", "classifier")
OBJECTIVES = ("diffusion", "flow")
# The largest learning rate the float32 weights can take: AdamW's step lr·m/√v must stay finite.
MAX_LR = float(torch.finfo(torch.float32).max)


@dataclass
class TrainConfig:
    """All options of a diffusion training run (defaults: the source report's lr and weight decay)."""

    # what to train: "diffusion" (the UNet), "vae" (the autoencoder of latent diffusion, `model` names a
    # VAE preset) or "classifier" (`model: classifier`, the classifier that scores guided samples)
    task: str = "diffusion"
    vae_beta: float = 1e-6  # task vae: weight β of the KL term, loss = reconstruction + β·KL
    # data
    dataset: str = "fashion_mnist"
    data_root: str | None = None
    image_size: int | None = None  # None: the dataset's default size
    hflip: bool = False  # random horizontal flip, drawn from the step's seeded generator
    dataset_kwargs: dict = field(default_factory=dict)  # extra arguments of data.load_dataset
    vae: str | None = None  # latent diffusion: VAE checkpoint whose scaled latents the UNet learns
    # model: a named UNet preset, with fields replaced by model_overrides
    model: str = "fashion_small"
    model_overrides: dict = field(default_factory=dict)
    # noise schedule (NoiseSchedule.from_name); beta_start/beta_end only for schedules that take them
    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float | None = None
    beta_end: float | None = None
    schedule_kwargs: dict = field(default_factory=dict)  # e.g. {s: 0.008} for cosine
    zero_terminal_snr: bool = False
    # objective: "diffusion" (the schedule's x_t, prediction_type's target) or "flow" (flow matching:
    # x_t = (1 − t)·x0 + t·ε, target ε − x0; schedule and prediction_type do not apply)
    objective: str = "diffusion"
    flow_time_sampling: str = "uniform"  # objective flow: "uniform" or "logit_normal" (SD3) training times
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None  # Hang et al. 2023, e.g. 5.0; None: plain MSE
    # class conditioning for classifier-free guidance (Ho & Salimans 2022)
    class_conditional: bool = False
    p_uncond: float = 0.1  # probability of replacing a label by the null class
    # optimisation (AdamW, linear warmup, then constant)
    batch_size: int = 128  # global batch, split over DDP ranks
    lr: float = 1e-4
    weight_decay: float = 1e-4
    adam_betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_n = min(ema_decay, (1 + n) / (10 + n))
    max_steps: int = 10_000
    max_minutes: float | None = None  # also stop (with a checkpoint) after this much training time in one call
    # hardware
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: str = "auto"  # auto: bf16 on CUDA if supported, else fp16 + GradScaler; fp32 on CPU
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False
    num_workers: int = 0
    num_threads: int | None = None  # torch CPU threads; None: torch's default. 1 is faster on a busy machine
    # bookkeeping
    seed: int = 0
    output_dir: str = "runs/default"
    checkpoint_every: int = 1000
    keep_last: int = 3
    sample_every: int = 0  # 0: no sample grids during training
    sample_n: int = 16
    sample_steps: int = 50  # DDIM steps for the grids
    sample_guidance_scale: float = 1.0
    log_every: int = 50
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress: bool = True


_DICT_FIELDS = ("dataset_kwargs", "model_overrides", "schedule_kwargs")


class ConfigError(ValueError):
    """A configuration key that is unknown, of the wrong type or out of range."""


def valid_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _allowed(tp) -> tuple[type, ...]:
    """The plain types a YAML value may have for annotation ``tp`` (``float | None`` -> (float, NoneType))."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(t for arg in typing.get_args(tp) for t in _allowed(arg))
    return (tp,)


def _coerce(key: str, value: Any, tp) -> Any:
    allowed = _allowed(tp)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key {key!r} must not be null")
    if bool in allowed:
        if isinstance(value, bool):
            return value
    elif int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif float in allowed:
        # YAML 1.1 reads "1e-4" (no dot) as a string: accept numeric strings for float keys.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif str in allowed and isinstance(value, str):
        return value
    elif dict in allowed and isinstance(value, dict):
        return dict(value)
    elif tuple in allowed and isinstance(value, (list, tuple)):
        return tuple(value)
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ConfigError(f"config key {key!r} must be {names}, got {value!r} ({type(value).__name__})")


def _check(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")


def validate_config(cfg: TrainConfig) -> TrainConfig:
    """Check types and ranges of every field; raise :class:`ConfigError` (a ValueError) naming the key."""
    hints = _field_types()
    for f in dataclasses.fields(cfg):
        setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name), hints[f.name]))
    c = cfg
    for key in ("num_timesteps", "batch_size", "max_steps", "checkpoint_every", "keep_last", "log_every",
                "sample_n", "sample_steps"):
        _check(getattr(c, key) >= 1, key, "an integer >= 1", getattr(c, key))
    for key in ("warmup_steps", "sample_every", "num_workers"):
        _check(getattr(c, key) >= 0, key, "an integer >= 0", getattr(c, key))
    _check(c.image_size is None or c.image_size >= 1, "image_size", "null or an integer >= 1", c.image_size)
    _check(c.max_minutes is None or (math.isfinite(c.max_minutes) and c.max_minutes > 0), "max_minutes",
           "null or a finite number > 0", c.max_minutes)
    _check(c.num_threads is None or c.num_threads >= 1, "num_threads", "null or an integer >= 1", c.num_threads)
    _check(0 < c.lr <= MAX_LR, "lr", f"a number in (0, {MAX_LR:.3g}] (finite in float32, the weights' dtype)",
           c.lr)
    _check(math.isfinite(c.weight_decay) and c.weight_decay >= 0, "weight_decay", "a finite number >= 0",
           c.weight_decay)
    _check(len(c.adam_betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in c.adam_betas),
           "adam_betas", "two numbers in [0, 1)", c.adam_betas)
    c.adam_betas = tuple(float(b) for b in c.adam_betas)
    _check(c.grad_clip is None or (math.isfinite(c.grad_clip) and c.grad_clip > 0), "grad_clip",
           "null or a finite number > 0", c.grad_clip)
    _check(0 <= c.ema_decay < 1, "ema_decay", "a number in [0, 1)", c.ema_decay)
    _check(0 <= c.p_uncond < 1, "p_uncond", "a number in [0, 1)", c.p_uncond)
    _check(c.min_snr_gamma is None or (math.isfinite(c.min_snr_gamma) and c.min_snr_gamma > 0),
           "min_snr_gamma", "null or a finite number > 0", c.min_snr_gamma)
    for key in ("beta_start", "beta_end"):
        v = getattr(c, key)
        _check(v is None or 0 < v < 1, key, "null or a number in (0, 1)", v)
    if c.beta_start is not None and c.beta_end is not None:
        _check(c.beta_start <= c.beta_end, "beta_start", f"<= beta_end ({c.beta_end})", c.beta_start)
    _check(c.prediction_type in PREDICTION_TYPES, "prediction_type", f"one of {PREDICTION_TYPES}",
           c.prediction_type)
    _check(c.objective in OBJECTIVES, "objective", f"one of {OBJECTIVES}", c.objective)
    _check(c.flow_time_sampling in FLOW_TIME_SAMPLINGS, "flow_time_sampling", f"one of {FLOW_TIME_SAMPLINGS}",
           c.flow_time_sampling)
    if c.objective == "flow":
        _check(c.task == "diffusion", "objective", "'diffusion' unless task is diffusion", c.objective)
        _check(c.prediction_type == "epsilon" and c.min_snr_gamma is None, "objective",
               "'diffusion' when prediction_type or min_snr_gamma is set (a flow model predicts the velocity)",
               c.objective)
        _check(not c.zero_terminal_snr, "objective",
               "'diffusion' when zero_terminal_snr is set (the flow path reaches pure noise at t = 1 by itself)",
               c.objective)
    _check(c.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", c.precision)
    _check(c.task in TASKS, "task", f"one of {TASKS}", c.task)
    _check(math.isfinite(c.vae_beta) and c.vae_beta >= 0, "vae_beta", "a finite number >= 0", c.vae_beta)
    _check(c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"), "device",
           "'auto', 'cpu' or 'cuda[:index]'", c.device)
    _check(math.isfinite(c.sample_guidance_scale) and c.sample_guidance_scale >= 0, "sample_guidance_scale",
           "a finite number >= 0", c.sample_guidance_scale)
    if c.dataset in DATASETS:  # other names fail when the task looks the dataset up
        allowed = ("download", "limit", *DATASET_OPTIONS.get(c.dataset, ()))
        unknown = sorted(set(c.dataset_kwargs) - set(allowed))
        _check(not unknown, "dataset_kwargs", f"a mapping of the options dataset {c.dataset!r} takes "
               f"({', '.join(allowed)}); {', '.join(unknown)} is not one of them", c.dataset_kwargs)
    _check(bool(c.output_dir), "output_dir", "a non-empty path", c.output_dir)
    return c


def config_from_dict(d: dict) -> TrainConfig:
    """Build and validate a config from a plain dict; unknown keys fail listing the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(d).__name__}")
    unknown = sorted(set(d) - set(valid_keys()))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(valid_keys())}")
    return validate_config(TrainConfig(**d))


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict (lists instead of tuples) that :func:`config_from_dict` turns back into ``cfg``."""
    d = dataclasses.asdict(cfg)
    d["adam_betas"] = list(d["adam_betas"])
    return d


def apply_overrides(d: dict, overrides: list[str] | None) -> dict:
    """Apply ``key=value`` strings (value parsed as YAML; ``a.b=v`` sets key b of dict field a)."""
    d = dict(d)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        head, dot, sub = key.partition(".")
        if head not in valid_keys():
            raise ConfigError(f"unknown config key {head!r} in override {item!r}; valid keys: "
                              f"{', '.join(valid_keys())}")
        if dot:
            if head not in _DICT_FIELDS:
                raise ConfigError(f"override {item!r}: only {_DICT_FIELDS} take sub-keys")
            d[head] = {**(d.get(head) or {}), sub: value}
        else:
            d[head] = value
    return d


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"config key {key!r} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1} of {self.name}); keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    d: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        with open(path, encoding="utf-8") as f:
            d = yaml.load(f, Loader=_UniqueKeyLoader) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return config_from_dict(apply_overrides(d, overrides))
