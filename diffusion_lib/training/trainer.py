"""The training loop, for any model and loss: what long runs need around one optimisation step.

AdamW with warmup, gradient clipping, an EMA of the weights, mixed precision on CUDA, DDP, atomic
checkpoints with exact resume, a CSV log (and TensorBoard), sample grids and a progress bar. What is
trained (the model, its loss, its sample grids) comes from a task in :mod:`diffusion_lib.training.tasks`;
:func:`diffusion_lib.training.train` picks it.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import checkpoint as ckpt_io
from ..device import pick_device, resolve_precision
from .config import ConfigError, TrainConfig, config_to_dict
from .distributed import DistInfo, all_mean, barrier, gather_objects
from .ema import ema_decay_at, make_ema
from .randomness import DataOrder, StepRandom


# Config keys that may change on resume without changing the arithmetic of training.
_BOOKKEEPING_KEYS = ("max_steps", "max_minutes", "output_dir", "progress", "checkpoint_every", "keep_last",
                     "sample_every", "sample_n", "sample_steps", "sample_guidance_scale", "log_every", "num_workers",
                     "tensorboard")


#: The largest |weight| a checkpoint may hold. The shipped models' largest |weight| is 1.2 to 3.5; a run
#: whose weights pass this has diverged even while they are finite (a step before its loss is NaN they
#: can reach 1e38).
MAX_ABS_WEIGHT = 1e4

# What a checkpoint's weights are and how they were trained: a resumed run must agree on each.
_MODEL_KEYS = ("model_config", "vae_config", "classifier_config", "schedule", "prediction_type", "objective",
               "flow_path")
# What a checkpoint needs to continue training (exported vae.pt / classifier.pt files lack the optimiser).
_TRAINING_KEYS = ("step", "model", "ema", "ema_num_averaged", "optimizer", "scaler", "rng")


def _schedule_text(d) -> str:
    if not isinstance(d, dict):
        return repr(d)
    params = ", ".join(f"{k}={v}" for k, v in (d.get("params") or {}).items() if v is not None)
    return f"{d.get('name')}({params}{', ' if params else ''}T={d.get('num_timesteps')})"


def _same_schedule(a, b) -> bool:
    """Equal names, parameters and T, and betas equal up to float64 rounding (another torch may differ in the
    last digit of a cosine)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return a == b
    if {k: v for k, v in a.items() if k != "betas"} != {k: v for k, v in b.items() if k != "betas"}:
        return False
    betas_a, betas_b = torch.tensor(a.get("betas", []), dtype=torch.float64), torch.tensor(b.get("betas", []),
                                                                                          dtype=torch.float64)
    return betas_a.shape == betas_b.shape and torch.allclose(betas_a, betas_b, rtol=1e-12, atol=0)


def _differences(saved, now, prefix: str = "") -> list[str]:
    """``key: now (checkpoint: saved)`` for each entry that differs; a schedule is shown by name and parameters."""
    if prefix == "schedule.":
        if _same_schedule(saved, now):
            return []
        text, saved_text = _schedule_text(now), _schedule_text(saved)
        return [f"schedule: {text} (checkpoint: {saved_text}{'' if text != saved_text else ', other betas'})"]
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now), key=str)
                for d in _differences(saved.get(k), now.get(k), f"{prefix}{k}.")]
    return [] if saved == now else [f"{prefix.rstrip('.')}: {now!r} (checkpoint: {saved!r})"]


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN or infinite; training stopped before saving anything."""


class DivergedWeightsError(NonFiniteLossError):
    """The weights are NaN, infinite or beyond :data:`MAX_ABS_WEIGHT`; training stopped without saving them."""


def resolve_device(config: TrainConfig, dist_info: DistInfo | None = None) -> torch.device:
    try:
        device = pick_device(config.device)
    except ValueError as e:
        raise ConfigError(f"config key 'device': {e}") from None
    if device.type == "cuda" and dist_info is not None and dist_info.enabled:
        return torch.device("cuda", dist_info.local_rank)
    return device


# ----------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs a training loop for any model and loss; a task (``training.tasks``) sets it up.

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

    def check_weights(self) -> None:
        """Raise :class:`DivergedWeightsError` unless every weight of the model and its EMA is finite and
        at most :data:`MAX_ABS_WEIGHT` in size, so that every checkpoint written is a good one."""
        for which, module in (("model", self.model), ("ema", self.ema.module)):
            params = [(name, p) for name, p in module.named_parameters() if p.is_floating_point()]
            if not params:
                continue
            largest = torch.stack([p.detach().abs().max().float() for _, p in params]).cpu()
            bad = (~torch.isfinite(largest)) | (largest > MAX_ABS_WEIGHT)
            if bad.any():
                i = int(bad.nonzero()[0])
                raise DivergedWeightsError(
                    f"the {which} weights diverged at step {self.step}: max |w| of {params[i][0]!r} is "
                    f"{float(largest[i]):.3g} (a checkpoint needs finite weights within {MAX_ABS_WEIGHT:g}); "
                    f"training stopped and this step was not saved; the last good checkpoint: "
                    f"{self._last_checkpoint_text()}. Try a lower lr, grad_clip, or precision='fp32'.")

    def save(self) -> Path | None:
        """Write ckpt_<step>.pt (rank 0; every rank contributes its RNG state) and prune old ones.
        Diverged weights are never written (:meth:`check_weights`; every rank checks, so all stop together)."""
        self.check_weights()
        rng_states = gather_objects(ckpt_io.rng_state(), self.dist)
        path = None
        if self.dist.is_main:
            path = ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(self.output_dir, self.step),
                                           self.state_dict(rng_states))
            ckpt_io.prune_checkpoints(self.output_dir, self.config.keep_last)
        barrier(self.dist)
        return path

    def check_resumable(self, state: dict, path: str | Path) -> None:
        """Refuse, before any weight is copied, a checkpoint of another model, schedule or task, or one
        that holds no training state: continuing from it would fail deep in torch or train on silently."""
        missing = [k for k in _TRAINING_KEYS if k not in state]
        if missing:
            raise ConfigError(f"--resume {str(path)!r}: not a training checkpoint (it has no {', '.join(missing)}); "
                              f"resume from a ckpt_*.pt file of a run's checkpoints/ folder")
        differs = [d for k in _MODEL_KEYS if k in state or k in self.extra_state
                   for d in _differences(state.get(k), self.extra_state.get(k), f"{k}.")]
        if differs:
            now = config_to_dict(self.config)
            changed = sorted(k for k, v in state.get("config", {}).items()
                             if k not in _BOOKKEEPING_KEYS and now.get(k) != v)
            raise ConfigError(
                f"--resume {str(path)!r}: the checkpoint was trained with another model, schedule or task than "
                f"this config gives: {'; '.join(differs)} (changed config keys: {', '.join(changed) or 'none'}). "
                f"Resume with the config it was trained with, or start a new run in another output_dir")

    def load(self, path: str | Path) -> None:
        """Restore weights, EMA, optimiser, scaler, step, RNG states and data position from ``path``."""
        state = ckpt_io.load_checkpoint(path)
        self.check_resumable(state, path)
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
        images = images[:, :3].float().clamp(-1, 1)  # latents given as a dataset: their first 3 channels
        nrow = getattr(self.sample_fn, "nrow", None) or math.ceil(math.sqrt(len(images)))
        save_image((images + 1) / 2, path, nrow=nrow)
        return path

    # ------------------------------------------------------------------------------- the loop
    def _batches(self):
        """(x, y) batches of this process's share, in the order of ``self.order``."""
        if getattr(self.dataset, "can_index_batches", False):  # in-memory images: whole batches at once
            yield from self.dataset.batches(self.order, self.device)
        else:
            yield from torch.utils.data.DataLoader(self.dataset, batch_sampler=self.order,
                                                   num_workers=self.config.num_workers,
                                                   pin_memory=self.device.type == "cuda")

    def fit(self, resume: bool | str | Path = False) -> dict:
        """Train until ``max_steps`` (or ``max_minutes``); resume from the latest (``True``) or a given checkpoint.

        ``max_minutes`` is checked every ``log_every`` steps (all DDP ranks agree): training stops there
        with a checkpoint, and ``--resume`` continues exactly as after any other stop. The run holds
        ``output_dir``'s :func:`~diffusion_lib.checkpoint.run_lock`: a second run there fails at once.
        """
        with ckpt_io.run_lock(self.output_dir) if self.dist.is_main else nullcontext():
            return self._fit(resume)

    def _fit(self, resume: bool | str | Path) -> dict:
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
