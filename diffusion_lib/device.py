"""Which device and which precision. "auto" is CUDA when there is one, else the CPU, everywhere."""

from __future__ import annotations

import torch


DEVICE_TYPES = ("cpu", "cuda", "mps")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None or "auto": CUDA when available, else the CPU.

    A device this machine does not have is refused here, before anything is loaded onto it.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "'auto', 'cpu', 'cuda' or 'cuda:<index>' (or 'mps' on a Mac)"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be {allowed}, got {device!r}") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device must be {allowed}, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asks for CUDA, but CUDA is not available on this machine: "
                             f"use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} asks for Apple's MPS, which is not available on this machine: "
                         f"use 'cpu' or 'auto'")
    return dev


def cuda_bf16_supported() -> bool:
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
        return torch.bfloat16 if cuda_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16
