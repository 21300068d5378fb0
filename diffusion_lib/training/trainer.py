"""Training a diffusion model: the objective, one optimisation step, and the full training loop.

The objective (Ho et al. 2020, Algorithm 1, generalised to three parameterisations):

    x0 ~ data,  t ~ Uniform{0, …, T−1},  ε ~ N(0, I)
    x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε                        (eq. 4)
    loss = ‖ target(x0, ε, t) − model(x_t, t, y) ‖²          (eq. 14, the "simple" loss)

where the target is ε ("epsilon"), x0 ("sample") or v = √ᾱ_t ε − √(1 − ᾱ_t) x0 ("v_prediction",
Salimans & Ho 2022). Optionally each sample's loss is weighted by min-SNR-γ (Hang et al. 2023).

:func:`diffusion_loss` and :func:`train_step` are the parts a notebook uses directly;
:func:`train` (and :class:`Trainer` underneath) adds what long runs need: AdamW with warmup,
gradient clipping, an EMA of the weights, mixed precision on CUDA, DDP, atomic checkpoints with
exact resume, a CSV log, sample grids and a progress bar.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import checkpoint as ckpt_io
from .config import ConfigError, TrainConfig, config_to_dict, validate_config
from .randomness import DataOrder, StepRandom
from .distributed import DistInfo, all_mean, barrier, close_distributed, gather_objects, init_distributed
from .ema import ema_decay_at, make_ema


# Config keys that may change on resume without changing the arithmetic of training.
_BOOKKEEPING_KEYS = ("max_steps", "max_minutes", "output_dir", "progress", "checkpoint_every", "keep_last",
                     "sample_every", "sample_n", "sample_steps", "sample_guidance_scale", "log_every", "num_workers",
                     "tensorboard")


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN or infinite; training stopped before saving anything."""


# ------------------------------------------------------------------------------------- objective
def min_snr_weight(schedule, t: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023, eq. 8 and its ε / v forms).

    Every objective is rescaled so that it equals min(SNR_t, γ) · ‖x0 − x̂0‖²: low-noise steps
    (huge SNR) no longer dominate the gradient. Weights: ε-target min(SNR, γ)/SNR, x0-target
    min(SNR, γ), v-target min(SNR, γ)/(SNR + 1).
    """
    snr = schedule.snr.to(device=t.device, dtype=torch.float32)[t]
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "sample":
        return clipped
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    raise ValueError(f"prediction_type must be 'epsilon', 'sample' or 'v_prediction', got {prediction_type!r}")


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, u: torch.Tensor) -> torch.Tensor:
    """Replace each label by the null class where ``u < p_uncond`` (u ~ Uniform[0, 1), one per sample).

    Training on both conditional and unconditional inputs lets one network give both predictions
    that classifier-free guidance combines (Ho & Salimans 2022, Algorithm 1).
    """
    return torch.where(u < p_uncond, torch.full_like(y, null_label), y)


def diffusion_loss(model: Callable, schedule, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                   prediction_type: str = "epsilon", min_snr_gamma: float | None = None,
                   p_uncond: float = 0.0, null_label: int | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The denoising loss of a batch x0 (N, C, H, W) in [-1, 1] with optional labels y (N,).

    t and noise are drawn with ``generator`` unless given. With ``p_uncond > 0`` labels are dropped
    to ``null_label`` (default ``model.null_label``) at that rate. Returns the mean loss (a scalar).
    """
    n = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (n,), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if p_uncond > 0 and y is not None:
        null_label = getattr(model, "null_label", None) if null_label is None else null_label
        if null_label is None:
            raise ValueError("p_uncond > 0 needs a null_label (a class-conditional model has one)")
        y = drop_labels(y, p_uncond, null_label, torch.rand(n, generator=generator, device=x0.device))

    x_t = schedule.q_sample(x0, t, noise)
    target = schedule.training_target(x0, noise, t, prediction_type)
    prediction = model(x_t, t, y)
    # Mean over pixels per sample, in float32 even under autocast.
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(schedule, t, min_snr_gamma, prediction_type)
    return per_sample.mean()


def train_step(model: torch.nn.Module, schedule, optimizer: torch.optim.Optimizer, x0: torch.Tensor,
               y: torch.Tensor | None = None, **loss_kwargs) -> float:
    """One plain optimisation step on a batch: loss, backward, update. Returns the loss value."""
    model.train()
    loss = diffusion_loss(model, schedule, x0, y, **loss_kwargs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


# ----------------------------------------------------------------------- building from a config
def build_schedule(config: TrainConfig):
    """The NoiseSchedule a config describes (beta_start/beta_end go to schedules that take them)."""
    from ..schedules import NoiseSchedule

    constructor = getattr(NoiseSchedule, config.schedule, None) if not config.schedule.startswith("_") else None
    if constructor is None or config.schedule in ("from_name", "from_betas", "from_dict"):
        raise ConfigError(f"config key 'schedule' must name a NoiseSchedule constructor such as 'linear', "
                          f"'cosine' or 'sigmoid', got {config.schedule!r}")
    kwargs = dict(config.schedule_kwargs)
    for key in ("beta_start", "beta_end"):
        if getattr(config, key) is not None:
            kwargs[key] = getattr(config, key)
    accepted = set(inspect.signature(constructor).parameters) - {"num_timesteps"}
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(f"config key {key!r} does not apply to the {config.schedule!r} schedule, "
                              f"which takes {sorted(accepted)}")
    schedule = NoiseSchedule.from_name(config.schedule, config.num_timesteps, **kwargs)
    if config.zero_terminal_snr:
        schedule = schedule.rescale_zero_terminal_snr()
    schedule.check_prediction_type(config.prediction_type)
    return schedule


def build_model_config(config: TrainConfig, dataset_info=None):
    """The UNetConfig of a config's preset and overrides, checked against the dataset's shape.

    ``class_conditional`` sets ``num_classes`` from the dataset (unless overridden); an
    unconditional config drops the preset's classes.
    """
    from ..models import UNetConfig

    overrides = dict(config.model_overrides)
    if "num_classes" not in overrides:
        if config.class_conditional:
            preset_classes = UNetConfig.preset(config.model).num_classes
            overrides["num_classes"] = preset_classes or getattr(dataset_info, "num_classes", None)
            if overrides["num_classes"] is None:
                raise ConfigError("class_conditional is true but neither the model preset nor the dataset "
                                  "gives num_classes; set model_overrides.num_classes")
        else:
            overrides["num_classes"] = None
    elif config.class_conditional and overrides["num_classes"] is None:
        raise ConfigError("class_conditional is true but model_overrides.num_classes is null")
    # In latent diffusion image_size is the images' size; the UNet's size is the latents'.
    pixel_model = config.vae is None
    if pixel_model and config.image_size is not None and "image_size" not in overrides:
        overrides["image_size"] = config.image_size
    try:
        model_config = UNetConfig.preset(config.model, **overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config keys 'model'/'model_overrides': {e}") from e
    if pixel_model and config.image_size is not None and model_config.image_size != config.image_size:
        raise ConfigError(f"config key 'image_size' ({config.image_size}) differs from the model's "
                          f"image_size ({model_config.image_size})")
    channels = getattr(dataset_info, "channels", None)
    if pixel_model and channels is not None and channels != model_config.in_channels:
        raise ConfigError(
            f"dataset {config.dataset!r} has {channels} channels but model {config.model!r} takes "
            f"in_channels={model_config.in_channels}; set model_overrides.in_channels={channels} "
            f"or choose another model preset")
    classes = getattr(dataset_info, "num_classes", None)
    if config.class_conditional and classes is not None and classes > model_config.num_classes:
        raise ConfigError(f"dataset {config.dataset!r} has {classes} classes but the model has "
                          f"num_classes={model_config.num_classes}: labels would be out of range")
    return model_config


def resolve_device(config: TrainConfig, dist_info: DistInfo | None = None) -> torch.device:
    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device' is {config.device!r} but CUDA is not available")
        if dist_info is not None and dist_info.enabled:
            return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


def _cuda_bf16_supported() -> bool:
    # Newer torch reports emulated bf16 (e.g. on a T4) as supported unless told not to.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: plain float32).

    "auto": on CUDA bf16 where the GPU has it natively, else fp16 (with a GradScaler, e.g. a T4);
    float32 on the CPU, where "bf16" and "fp16" also work (slowly: for trying the code paths).
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if _cuda_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _check_item_shape(dataset, expected: tuple[int, ...], what: str) -> None:
    x = dataset[0][0]
    if tuple(x.shape) != expected:
        raise ConfigError(f"{what} gives images of shape {tuple(x.shape)} but the model takes {expected} "
                          f"(channels, image_size, image_size); check 'image_size' and 'model_overrides'")


# ----------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs a training loop for any model and loss; :func:`train` sets it up for diffusion.

    Arguments: the config (optimiser, precision, checkpoints, logging), the model, a dataset of
    (image, label) pairs, ``loss_fn(model, x, y, rng) -> scalar loss`` where ``rng`` is the step's
    :class:`~diffusion_lib.training.randomness.StepRandom`, ``extra_state`` (plain values stored in every
    checkpoint, e.g. the model config), and an optional ``sample_fn(model, generator) -> images in
    [-1, 1]`` for sample grids. The VAE of the latent-diffusion chapter trains with it too.
    """

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dataset, loss_fn: Callable,
                 *, extra_state: dict | None = None, sample_fn: Callable | None = None,
                 dist_info: DistInfo | None = None, device: torch.device | None = None):
        self.config = c = config
        self.dist = dist_info or DistInfo()
        self.device = device or resolve_device(c, self.dist)
        self.autocast_dtype = resolve_precision(c.precision, self.device)
        self.loss_fn = loss_fn
        self.sample_fn = sample_fn
        self.extra_state = dict(extra_state or {})
        self.output_dir = Path(c.output_dir)
        self.step = 0

        self.channels_last = c.channels_last and self.device.type == "cuda"
        self.model = model.to(self.device, memory_format=torch.channels_last if self.channels_last
                              else torch.preserve_format)
        self.ema = make_ema(self.model, c.ema_decay, c.ema_warmup)
        self.ema.module.requires_grad_(False)
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index]
                                            if self.device.type == "cuda" else None)
                    if self.dist.enabled else self.model)
        if c.compile:
            self.net = torch.compile(self.net)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, betas=c.adam_betas,
                                           weight_decay=c.weight_decay,
                                           fused=True if self.device.type == "cuda" else None)
        # A GradScaler keeps small fp16 gradients from underflowing; bf16 and fp32 need none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)

        self.dataset = dataset
        self.order = DataOrder(len(dataset), c.batch_size, c.seed, rank=self.dist.rank,
                               world_size=self.dist.world_size)

    # ----------------------------------------------------------------------------- schedule
    def lr_at(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant (the report's lr 1e-4)."""
        if self.config.warmup_steps == 0:
            return self.config.lr
        return self.config.lr * min(1.0, (step + 1) / self.config.warmup_steps)

    # --------------------------------------------------------------------------- one update
    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """One AdamW update on this process's share of the global batch; returns (loss, grad norm)."""
        c = self.config
        rng = StepRandom(c.seed, self.step, c.batch_size, rank=self.dist.rank,
                         world_size=self.dist.world_size, device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)

        self.net.train()
        with (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
              else nullcontext()):
            loss = self.loss_fn(self.net, x, y, rng)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP averages the gradients over processes here
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip or math.inf)

        # One host sync per step: the mean loss over processes and the gradient norm.
        loss_value, norm_value = torch.stack([all_mean(loss.detach().float(), self.dist),
                                              grad_norm.float()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"the loss is {loss_value} at step {self.step + 1}; training stopped and nothing was "
                f"saved after the last checkpoint ({self._last_checkpoint_text()}). Try a lower lr, "
                f"grad_clip, or precision='fp32'.")
        if not math.isfinite(norm_value) and not self.scaler.is_enabled():
            raise NonFiniteLossError(
                f"the gradient norm is {norm_value} at step {self.step + 1} (loss {loss_value:.4g}); "
                f"training stopped; last checkpoint: {self._last_checkpoint_text()}")
        self.scaler.step(self.optimizer)  # with fp16, skipped when the gradients overflowed
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.step += 1
        return loss_value, norm_value

    # ---------------------------------------------------------------------------- checkpoints
    def _last_checkpoint_text(self) -> str:
        last = ckpt_io.latest_checkpoint(self.output_dir)
        return str(last) if last else "none yet"

    def state_dict(self, rng_states: list[dict]) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_num_averaged": int(self.ema.n_averaged),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": config_to_dict(self.config),
            "rng": rng_states,
            "data_order": self.order.state(self.step),
            "world_size": self.dist.world_size,
            "torch_version": str(torch.__version__),
            **self.extra_state,
        }

    def save(self) -> Path | None:
        """Write ckpt_<step>.pt (rank 0; every rank contributes its RNG state) and prune old ones."""
        rng_states = gather_objects(ckpt_io.rng_state(), self.dist)
        path = None
        if self.dist.is_main:
            path = ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(self.output_dir, self.step),
                                           self.state_dict(rng_states))
            ckpt_io.prune_checkpoints(self.output_dir, self.config.keep_last)
        barrier(self.dist)
        return path

    def load(self, path: str | Path) -> None:
        """Restore weights, EMA, optimiser, scaler, step, RNG states and data position from ``path``."""
        state = ckpt_io.load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.n_averaged.fill_(state["ema_num_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        exact = True
        if len(state["rng"]) == self.dist.world_size:
            ckpt_io.set_rng_state(state["rng"][self.dist.rank])
        else:
            exact = False
        saved_order = state.get("data_order", {})
        now = self.order.state(self.step)
        for key in ("seed", "dataset_size", "global_batch_size"):
            if saved_order.get(key) != now[key]:
                exact = False
        if not exact and self.dist.is_main:
            warnings.warn(f"resuming from {path} with a different number of processes, seed, dataset "
                          f"size or batch size: training continues but not exactly as without the break",
                          stacklevel=2)
        changed = sorted(k for k, v in state.get("config", {}).items()
                         if k not in _BOOKKEEPING_KEYS
                         and config_to_dict(self.config).get(k) != v)
        if changed and self.dist.is_main:
            warnings.warn(f"resuming from {path} with changed config keys {changed}", stacklevel=2)

    # ------------------------------------------------------------------------------ logging
    def _open_log(self, resumed: bool):
        """CSV log (rows after the resumed step, from a killed run, are dropped) and TensorBoard."""
        path = self.output_dir / "log.csv"
        fields = ["step", "epoch", "loss", "grad_norm", "lr", "ema_decay", "images_per_s", "elapsed_s"]
        rows = []
        if resumed and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        tb = None
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                tb = SummaryWriter(str(self.output_dir / "tensorboard"), purge_step=self.step + 1)
            except ImportError:
                pass
        return f, writer, tb

    def save_samples(self) -> Path | None:
        """A grid of EMA samples from a fixed seed (rank 0), as samples/step_<step>.png."""
        if self.sample_fn is None or not self.dist.is_main:
            return None
        from torchvision.utils import save_image

        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.ema.module.eval()
        with torch.no_grad():
            images = self.sample_fn(self.ema.module, generator)
        path = self.output_dir / "samples" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.config.vae is not None:  # latent diffusion: show the decoded images, not the latents
            from ..latent import decode_latents
            images = decode_latents(images, self.config.vae, device=self.device)
        images = images[:, :3].float().clamp(-1, 1)  # latents given as a dataset: their first 3 channels
        nrow = getattr(self.sample_fn, "nrow", None) or math.ceil(math.sqrt(len(images)))
        save_image((images + 1) / 2, path, nrow=nrow)
        return path

    # ------------------------------------------------------------------------------- the loop
    def _batches(self):
        """(x, y) batches of this process's share, in the order of ``self.order``."""
        from ..data.datasets import ImageTensorDataset, to_float

        if type(self.dataset) is ImageTensorDataset and not self.dataset.hflip:
            # In-memory uint8 images: index whole batches (on the GPU when training there) instead
            # of collating single items; the same values as the DataLoader path.
            images, labels = self.dataset.images, self.dataset.labels
            on_gpu = self.device.type == "cuda" and images.numel() < 2**31
            if on_gpu:
                images, labels = images.to(self.device), labels.to(self.device)
            for indices in self.order:
                idx = torch.tensor(indices)
                if on_gpu:  # pinned + non_blocking: the copy does not wait for the previous step's kernels
                    idx = idx.pin_memory().to(self.device, non_blocking=True)
                yield to_float(images[idx]), labels[idx]
        else:
            yield from torch.utils.data.DataLoader(self.dataset, batch_sampler=self.order,
                                                   num_workers=self.config.num_workers,
                                                   pin_memory=self.device.type == "cuda")

    def fit(self, resume: bool | str | Path = False) -> dict:
        """Train until ``max_steps`` (or ``max_minutes``); resume from the latest (``True``) or a given checkpoint.

        ``max_minutes`` is checked every ``log_every`` steps (all DDP ranks agree): training stops there
        with a checkpoint, and ``--resume`` continues exactly as after any other stop.
        """
        c = self.config
        if resume:
            path = ckpt_io.latest_checkpoint(self.output_dir) if resume is True else Path(resume)
            if path is not None:
                try:
                    self.load(path)
                except ckpt_io.CheckpointError as e:
                    earlier = [p.name for p in ckpt_io.list_checkpoints(self.output_dir) if p != path]
                    raise ckpt_io.CheckpointError(
                        f"{e}\nCannot resume from it. Delete it to resume from an earlier checkpoint "
                        f"({', '.join(earlier) or 'none'}), or pass one with --resume PATH.") from e
        elif ckpt_io.list_checkpoints(self.output_dir):
            raise FileExistsError(f"{self.output_dir} already holds checkpoints of a run; resume it "
                                  f"(--resume / resume=True) or choose another output_dir")
        start_step = self.step
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            log_file, log, tb = self._open_log(resumed=start_step > 0)
        self.order.start_step = start_step
        batches = self._batches()
        bar = tqdm(total=c.max_steps, initial=start_step, desc="train", dynamic_ncols=True,
                   disable=not (c.progress and self.dist.is_main))
        history: list[tuple[int, float]] = []
        interval_losses: list[float] = []
        t_start = t_interval = time.perf_counter()
        steps_in_interval, last_path, images_per_s = 0, None, float("nan")
        out_of_time = False
        try:
            while self.step < c.max_steps and not out_of_time:
                x, y = next(batches)
                x = x.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
                loss, grad_norm = self.training_step(x, y)
                interval_losses.append(loss)
                steps_in_interval += 1
                bar.update(1)

                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    now = time.perf_counter()
                    images_per_s = steps_in_interval * c.batch_size / (now - t_interval)
                    mean_loss = sum(interval_losses) / len(interval_losses)
                    history.append((self.step, mean_loss))
                    if self.dist.is_main:
                        row = {"step": self.step, "epoch": self.order.position(self.step - 1)[0],
                               "loss": mean_loss, "grad_norm": grad_norm, "lr": self.lr_at(self.step - 1),
                               "ema_decay": ema_decay_at(c.ema_decay, int(self.ema.n_averaged) - 1, c.ema_warmup),
                               "images_per_s": images_per_s, "elapsed_s": now - t_start}
                        log.writerow(row)
                        log_file.flush()
                        if tb is not None:
                            for key in ("loss", "grad_norm", "lr", "images_per_s"):
                                tb.add_scalar(f"train/{key}", row[key], self.step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.0f}")
                    interval_losses, steps_in_interval, t_interval = [], 0, time.perf_counter()
                    if c.max_minutes is not None:
                        late = torch.tensor(float(now - t_start >= 60 * c.max_minutes), device=self.device)
                        out_of_time = bool(all_mean(late, self.dist) > 0)  # rank 0's clock may differ

                t_other = time.perf_counter()
                if c.sample_every and self.step % c.sample_every == 0:
                    self.save_samples()
                if self.step % c.checkpoint_every == 0 or self.step == c.max_steps or out_of_time:
                    last_path = self.save() or last_path
                t_interval += time.perf_counter() - t_other  # images/s counts training time only
        finally:
            bar.close()
            if self.dist.is_main:
                log_file.close()
                if tb is not None:
                    tb.close()
        if last_path is None and self.dist.is_main:
            last_path = ckpt_io.latest_checkpoint(self.output_dir)
        return {"step": self.step, "start_step": start_step, "loss": history[-1][1] if history else None,
                "history": history, "checkpoint": str(last_path) if last_path else None,
                "output_dir": str(self.output_dir), "images_per_s": images_per_s,
                "wall_time_s": time.perf_counter() - t_start}


# ------------------------------------------------------------------------------- diffusion run
def diffusion_loss_fn(schedule, config: TrainConfig, null_label: int | None) -> Callable:
    """The Trainer's loss for a diffusion model: flips, label dropout, t and ε from the step's rng."""

    def loss_fn(model, x0, y, rng: StepRandom):
        if config.hflip:
            flip = rng.rand() < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        if config.class_conditional:
            y = drop_labels(y, config.p_uncond, null_label, rng.rand())
        else:
            y = None
        t = rng.randint(schedule.num_timesteps)
        noise = rng.randn_like(x0)
        return diffusion_loss(model, schedule, x0, y, prediction_type=config.prediction_type,
                              min_snr_gamma=config.min_snr_gamma, t=t, noise=noise)

    return loss_fn


def diffusion_sample_fn(schedule, config: TrainConfig, model_config) -> Callable:
    """Sample grids with DDIM (``sample_steps`` steps) from the EMA model, one row per class if conditional."""

    def sample_fn(model, generator):
        from ..samplers import classifier_free_guidance, sample

        n = config.sample_n
        shape = (n, model_config.in_channels, model_config.image_size, model_config.image_size)
        y = None
        if model_config.num_classes:
            y = torch.arange(n, device=generator.device) % model_config.num_classes
            if config.sample_guidance_scale != 1.0:
                model = classifier_free_guidance(model, config.sample_guidance_scale, model_config.num_classes)
        return sample(model, schedule, "ddim", shape=shape, generator=generator, y=y,
                      prediction_type=config.prediction_type, num_steps=config.sample_steps)

    sample_fn.nrow = model_config.num_classes  # a conditional grid has one class per column
    return sample_fn


def _latent_dataset(dataset, config: TrainConfig, device: torch.device):
    """The dataset encoded to scaled VAE latents (latent diffusion, Rombach et al. 2022)."""
    try:
        from ..latent import encode_dataset
    except ImportError as e:
        raise ConfigError(f"config key 'vae' needs diffusion_lib.latent.encode_dataset (latent diffusion), "
                          f"which is not available: {e}") from e
    return encode_dataset(dataset, config.vae, device=device)


def train(config: TrainConfig, *, resume: bool | str | Path = False, dataset=None,
          model: torch.nn.Module | None = None, extra_state: dict | None = None) -> dict:
    """Train a diffusion model as ``config`` says; returns a summary dict (step, loss, history, checkpoint).

    ``dataset`` replaces the config's named dataset (e.g. cached VAE latents), ``model`` the UNet
    built from the preset. Under ``torchrun`` each process trains its share of the global batch.
    """
    config = validate_config(dataclasses.replace(config))
    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    dist_info = init_distributed("cuda" if resolve_device(config).type == "cuda" else "cpu")
    try:
        device = resolve_device(config, dist_info)
        resolve_precision(config.precision, device)  # fail before loading data
        if config.task != "diffusion":  # the VAE and the classifier train with the same Trainer
            from .tasks.classifier import train_classifier
            from .tasks.vae import train_vae
            task = train_vae if config.task == "vae" else train_classifier
            return task(config, resume=resume, dataset=dataset, dist_info=dist_info, device=device)
        schedule = build_schedule(config)
        info = None
        if dataset is None:
            from ..data.datasets import dataset_info, load_dataset
            info = dataset_info(config.dataset)
        if model is None:
            model_config = build_model_config(config, info)
        else:
            model_config = model.config
        image_shape = (model_config.in_channels, model_config.image_size, model_config.image_size)
        if dataset is None:
            if not dist_info.is_main:
                barrier(dist_info)  # rank 0 downloads (or encodes) first, the others then read its files
            dataset = load_dataset(config.dataset, "train", root=config.data_root,
                                   image_size=config.image_size if config.vae else model_config.image_size,
                                   **config.dataset_kwargs)
            if config.vae is not None:
                dataset = _latent_dataset(dataset, config, device)
            if dist_info.is_main:
                barrier(dist_info)
            what = f"dataset {config.dataset!r}" + (" (encoded by the VAE)" if config.vae else "")
        else:
            what = "the given dataset"
        _check_item_shape(dataset, image_shape, what)
        if model is None:
            from ..models import UNet
            torch.manual_seed(config.seed)  # the same initial weights on every process
            model = UNet(model_config)
        null_label = model_config.num_classes
        state = {"model_config": model_config.to_dict(), "schedule": schedule.to_dict(),
                 "prediction_type": config.prediction_type, "vae": config.vae,
                 "vae_sha256": getattr(dataset, "vae_sha256", None), **(extra_state or {})}
        trainer = Trainer(config, model, dataset, diffusion_loss_fn(schedule, config, null_label),
                          extra_state=state, sample_fn=diffusion_sample_fn(schedule, config, model_config),
                          dist_info=dist_info, device=device)
        return trainer.fit(resume=resume)
    finally:
        close_distributed()
        torch.set_num_threads(threads)
