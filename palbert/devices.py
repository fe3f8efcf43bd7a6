"""The device palbert runs on, parsed in one place: a recipe's ``train.device`` and the
``--device`` of ``palbert eval``, ``predict`` and ``serve``.

::

    parse_device("auto", "--device")      # cuda where there is a GPU, else cpu
    parse_device("cuda:1", "train.device")
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that cannot work here; the message names the setting and what to use."""


def parse_device(name: str | None, setting: str) -> torch.device:
    """``name``: auto (or None), cpu, cuda or cuda:N. ``setting`` names where it was given
    (``train.device``, ``--device``), for the error. A bare ``cuda`` keeps no index, so the
    caller picks the GPU (training: the process's local rank)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(
            f"{setting} {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"{setting} {name!r}: palbert runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{setting} {name!r}: no CUDA device is available here; use cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise DeviceError(
            f"{setting} {name!r}: this machine has {count} CUDA device(s), cuda:0 to "
            f"cuda:{count - 1}"
        )
    return device


__all__ = ["DeviceError", "parse_device"]
