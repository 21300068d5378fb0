"""What a measured number depends on: one description of the machine, for every result file."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch


def machine_info(device: str | torch.device = "cpu") -> dict:
    """What a measured number depends on: platform, versions, device name, CPU, torch threads, cores, the
    load average (how busy a shared machine was), date (UTC). Every result file describes its machine so."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": str(torch.__version__),
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "cpu": cpu, "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": load,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def peak_rss_mib() -> float:
    """Peak resident set of this process in MiB (Linux VmHWM; elsewhere getrusage's maximum): the CPU
    counterpart of CUDA's max_memory_allocated, meaningful in a fresh process per measurement."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
