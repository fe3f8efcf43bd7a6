"""The machine a benchmark ran on, one dict for every script's raw results.

::

    from bench.machine import machine_info
    machine_info(torch.device("cpu"), rounds=7)   # {'platform': ..., 'cpu': ..., 'rounds': 7}
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(device: torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """Platform, processor (its architecture and model name), Python, CPU count, torch and its
    threads, the device, the load average when it started, then ``extra`` (the script's own
    settings)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "load_average_at_start": list(os.getloadavg()),
        **extra,
    }


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), or "" where the system does not say."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "")


__all__ = ["cpu_model", "machine_info"]
