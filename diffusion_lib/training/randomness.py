"""Deterministic data order and per-step randomness: what makes resume and multi-process runs exact.

Two rules make a run's result a function of (seed, step) only:

1. **Data order.** Epoch ``e`` visits the dataset in the permutation drawn from a generator seeded
   with ``(seed, e)``; step ``s`` takes global batch number ``s mod steps_per_epoch`` of epoch
   ``s // steps_per_epoch`` (incomplete last batches are dropped). Resuming at step ``s`` therefore
   needs only ``s``, and the checkpoint stores (epoch, position, seed) to check it.
2. **Step randomness.** The timesteps, noise, label dropout and flips of step ``s`` are drawn for the
   whole *global* batch from a generator seeded with ``(seed, s)``; each process keeps its slice. So
   K processes with batch B/K each see exactly the samples, t and ε that one process with batch B sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence: stable across versions and platforms)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> 1)


class DataOrder:
    """Batch sampler yielding this rank's indices for each global batch, forever, from ``start_step``.

    Use as ``DataLoader(dataset, batch_sampler=DataOrder(...))``.
    """

    def __init__(self, dataset_size: int, global_batch_size: int, seed: int, *, rank: int = 0,
                 world_size: int = 1, start_step: int = 0):
        if global_batch_size % world_size:
            raise ValueError(f"batch_size ({global_batch_size}) must be divisible by the number of "
                             f"processes ({world_size})")
        if dataset_size < global_batch_size:
            raise ValueError(f"batch_size ({global_batch_size}) is larger than the dataset "
                             f"({dataset_size} items)")
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        self.steps_per_epoch = dataset_size // global_batch_size

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        return torch.randperm(self.dataset_size, generator=g)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of global step ``step``."""
        return divmod(step, self.steps_per_epoch)

    def state(self, step: int) -> dict:
        epoch, position = self.position(step)
        return {"epoch": epoch, "position": position, "seed": self.seed, "step": step,
                "steps_per_epoch": self.steps_per_epoch, "dataset_size": self.dataset_size,
                "global_batch_size": self.global_batch_size}

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        epoch, position = self.position(step)
        perm = self.permutation(epoch)
        per_rank = self.global_batch_size // self.world_size
        while True:
            if position == self.steps_per_epoch:
                epoch, position = epoch + 1, 0
                perm = self.permutation(epoch)
            start = position * self.global_batch_size + self.rank * per_rank
            yield perm[start:start + per_rank].tolist()
            position += 1


class StepRandom:
    """Random draws of one training step: made for the global batch, sliced to this rank's share."""

    def __init__(self, seed: int, step: int, global_batch_size: int, *, rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu"):
        self.generator = torch.Generator(device=device).manual_seed(derive_seed(seed, step, 1))
        per_rank = global_batch_size // world_size
        self.global_batch_size = global_batch_size
        self.rows = slice(rank * per_rank, (rank + 1) * per_rank)
        self.device = torch.device(device)

    def randint(self, high: int) -> torch.Tensor:
        """Integers in [0, high), one per sample (shape (n,))."""
        g = torch.randint(0, high, (self.global_batch_size,), generator=self.generator, device=self.device)
        return g[self.rows]

    def rand(self) -> torch.Tensor:
        """Uniform [0, 1), one per sample (shape (n,))."""
        return torch.rand(self.global_batch_size, generator=self.generator, device=self.device)[self.rows]

    def randn(self) -> torch.Tensor:
        """Standard normal, one per sample (shape (n,))."""
        return torch.randn(self.global_batch_size, generator=self.generator, device=self.device)[self.rows]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like this rank's batch ``x`` (drawn in float32, cast to x's dtype)."""
        shape = (self.global_batch_size, *x.shape[1:])
        return torch.randn(shape, generator=self.generator, device=self.device)[self.rows].to(x.dtype)
