"""Low-rank task layers (the paper's "low-rank" variant): TS(h) = V^D g(V^E h), per layer."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from palbert.activations import activation
from palbert.layers.config import ModuleConfig
from palbert.layers.module import Projected


class LowRank(Projected):
    """One task's low-rank residual terms; V^E/V^D per layer unless ``shared``.

    Parameters per layer (unshared): 2*H*r + r + H.
    """

    def __init__(self, config: ModuleConfig, hidden_size: int, layers: Iterable[int]) -> None:
        super().__init__(config, hidden_size, layers)  # V^E: H -> r, V^D: r -> H
        self.act = activation(config.activation)
        self.reset_parameters()

    def residual(
        self, layer: int, h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """TS(h), or None outside the chosen layers."""
        if layer not in self.layer_ids:
            return None
        V_E, V_D = self.projections(layer)
        return V_D(self.act(V_E(h)))


__all__ = ["LowRank"]
