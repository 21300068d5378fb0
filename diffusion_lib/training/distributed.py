"""Multi-process training with torch.distributed, as launched by ``torchrun``.

``torchrun --nproc_per_node=K -m diffusion_lib train ...`` starts K processes with RANK, WORLD_SIZE
and LOCAL_RANK in their environment. Each joins a process group (NCCL between GPUs, Gloo on CPU),
trains on its share of every global batch, and DistributedDataParallel averages the gradients, so
the update equals one process's update on the whole batch. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over all processes (the tensor itself when there is one)."""
    if not info.enabled:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / info.world_size


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
