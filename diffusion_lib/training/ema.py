"""Exponential moving average of the weights, with a warm-up of the decay.

Samples come from the EMA weights θ̄ ← d·θ̄ + (1 − d)·θ (Ho et al. 2020 use d = 0.9999). Early in
training θ̄ would stay close to the random initialisation for ~1/(1 − d) steps, so the decay warms
up as d_n = min(d, (1 + n)/(10 + n)) after n updates (the schedule of TensorFlow's
ExponentialMovingAverage ``num_updates`` and of many diffusion codebases).
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_averaged: int, warmup: bool = True) -> float:
    """The decay used for the update after ``num_averaged`` earlier updates."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged)) if warmup else decay


class EMAModel(AveragedModel):
    """``torch.optim.swa_utils.AveragedModel`` keeping an EMA of a model's weights and buffers.

    Same state dict and ``n_averaged`` counter as ``AveragedModel(model,
    multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)``, plus the decay warm-up.
    ``update_parameters`` reads the counter on the CPU, so unlike the parent class it adds no
    GPU synchronisation to a training step.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__(model, use_buffers=True)
        self.decay = decay
        self.warmup = warmup

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        n = int(self.n_averaged)  # a CPU tensor: no device sync
        pairs = zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()])
        ema_float, model_float = [], []
        for ema_t, model_t in pairs:
            if n == 0 or not ema_t.is_floating_point():  # first call copies; integer buffers are copied
                ema_t.copy_(model_t)
            else:
                ema_float.append(ema_t)
                model_float.append(model_t.detach())
        if ema_float:
            # θ̄ + (1 − d)(θ − θ̄) = d·θ̄ + (1 − d)·θ
            torch._foreach_lerp_(ema_float, model_float, 1.0 - ema_decay_at(self.decay, n, self.warmup))
        self.n_averaged += 1


def make_ema(model: torch.nn.Module, decay: float = 0.9999, warmup: bool = True) -> EMAModel:
    """An EMA copy of ``model`` (same device and dtype). Call ``ema.update_parameters(model)``
    after every optimiser step; ``ema.module`` is the averaged network."""
    return EMAModel(model, decay, warmup)
