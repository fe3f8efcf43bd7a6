"""The machine a benchmark ran on, one dict for every script's raw results.

::

    from bench.machine import machine_info
    machine_info(torch.device("cpu"), rounds=7)   # {'platform': ..., 'cpu': ..., 'rounds': 7}
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine_info(device: torch.device | None = None, **extra: Any) -> dict[str, Any]:
    """Platform, processor, Python, CPU count, torch and its threads, the device, the load
    average when it started, then ``extra`` (the script's own settings)."""
    device = device or torch.device("cpu")
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "load_average_at_start": list(os.getloadavg()),
        **extra,
    }


__all__ = ["machine_info"]
