"""The activation functions a task module or a head may name: one table for both.

::

    activation("gelu")          # nn.GELU()
    "tanh" in ACTIVATIONS       # True

Importing this module does not import torch (task specs check names without it).
"""

from __future__ import annotations

from typing import Any

# name -> the torch.nn class; "none" is the identity
_TABLE = {"none": "Identity", "relu": "ReLU", "gelu": "GELU", "tanh": "Tanh"}
ACTIVATIONS: tuple[str, ...] = tuple(_TABLE)


def activation(name: str) -> Any:
    """A fresh ``torch.nn`` module for ``name`` (one of :data:`ACTIVATIONS`)."""
    from torch import nn

    if name not in _TABLE:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {name!r}")
    return getattr(nn, _TABLE[name])()


__all__ = ["ACTIVATIONS", "activation"]
