"""The multi-task model: one shared encoder, per-task modules and heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Encoded:
    """What a head sees of one encoded segment.

    ``hidden_states`` holds the embedding output then each layer's output (as transformers
    returns them) when the head asked for it (``head.needs_hidden_states``), else None.
    """

    last_hidden_state: torch.Tensor  # (batch, seq, hidden)
    attention_mask: torch.Tensor  # (batch, seq), 1 for real tokens
    hidden_states: tuple[torch.Tensor, ...] | None = None
