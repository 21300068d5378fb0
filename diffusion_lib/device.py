"""Which device and which precision. "auto" is CUDA when there is one, else the CPU, everywhere."""

from __future__ import annotations

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None or "auto": CUDA when available, else the CPU."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
