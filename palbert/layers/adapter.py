"""Houlsby-style bottleneck adapters (Houlsby et al., 2019), one module per task.

Two adapters per layer, after the attention output projection and after the feed-forward
output projection, each before its residual and LayerNorm: x -> x + W_up g(W_down x).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from palbert.activations import activation as make_activation
from palbert.layers.config import ModuleConfig
from palbert.layers.module import TaskModule


class Bottleneck(nn.Module):
    def __init__(self, hidden_size: int, m: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, m)
        self.up = nn.Linear(m, hidden_size)
        self.act = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """W_up g(W_down x)."""
        return self.up(self.act(self.down(x)))


class Adapter(TaskModule):
    """One task's adapters. Parameters per layer: 2 * (2*H*m + m + H)."""

    def __init__(self, config: ModuleConfig, hidden_size: int, layers: Iterable[int]) -> None:
        super().__init__(config, hidden_size, layers)
        H, m, act = hidden_size, config.size, config.activation
        self.attention = nn.ModuleDict({str(i): Bottleneck(H, m, act) for i in self.layer_ids})
        self.ffn = nn.ModuleDict({str(i): Bottleneck(H, m, act) for i in self.layer_ids})
        self.reset_parameters()

    def outputs(self) -> list[nn.Linear]:
        return [b.up for b in [*self.attention.values(), *self.ffn.values()]]

    def attention_bottleneck(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The adapter's addition to the attention output projection's result x."""
        return self.attention[str(layer)](x) if layer in self.layer_ids else None

    def ffn_bottleneck(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """The adapter's addition to the feed-forward output projection's result x."""
        return self.ffn[str(layer)](x) if layer in self.layer_ids else None
