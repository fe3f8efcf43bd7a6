"""What the encoder hands a task's head: the contract between the model and palbert.tasks.

A head is an ``nn.Module`` called as ``head(segments)`` with a list of :class:`Encoded`, one
per encoded segment (one for single or cross-encoded inputs, two for a bi-encoder), and
returns ``(batch, num_labels)`` logits or ``(batch,)`` / ``(batch, 1)`` scores. It may set:

- ``encoding``: ``"single"``, ``"cross"`` or ``"bi"`` (default single): a bi-encoder head
  gets each sentence of a pair encoded alone (batch keys ``*_b`` hold the second);
- ``needs_hidden_states``: True to receive every layer's output (``last_k`` pooling).

This module sits below both :mod:`palbert.model` and :mod:`palbert.tasks`, so neither
imports the other for it.
"""

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

    def rows(self, idx: torch.Tensor) -> Encoded:
        hs = None if self.hidden_states is None else tuple(h[idx] for h in self.hidden_states)
        return Encoded(self.last_hidden_state[idx], self.attention_mask[idx], hs)


__all__ = ["Encoded"]
