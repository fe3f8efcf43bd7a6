"""Per-task modules (PAL, low-rank, bottleneck adapter) and their injection into a layer.

Nothing here knows about tasks' data or training.
"""

from palbert.layers.adapter import Adapter
from palbert.layers.config import MODULE_KINDS, ModuleConfig, Progressive, default_size
from palbert.layers.inject import Route, Router
from palbert.layers.low_rank import LowRank
from palbert.layers.module import Projected, TaskModule
from palbert.layers.pal import PAL, LowDimAttention


def build_module(config: ModuleConfig, hidden_size: int, num_layers: int) -> TaskModule | None:
    """The task module for a config (None for kind "none"), sized for this encoder."""
    config = config.resolved(hidden_size)
    layers = config.layers if config.layers is not None else range(num_layers)
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"module.layers {bad} out of range for an encoder of {num_layers} layers")
    cls = {"pal": PAL, "low_rank": LowRank, "adapter": Adapter}.get(config.kind)
    return None if cls is None else cls(config, hidden_size, layers)


__all__ = [
    "MODULE_KINDS",
    "PAL",
    "Adapter",
    "LowDimAttention",
    "LowRank",
    "ModuleConfig",
    "Progressive",
    "Projected",
    "Route",
    "Router",
    "TaskModule",
    "build_module",
    "default_size",
]
