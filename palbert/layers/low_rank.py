"""Low-rank task layers (the paper's "low-rank" variant): TS(h) = V^D g(V^E h), per layer."""

from __future__ import annotations

import torch
from torch import nn

from palbert.activations import activation
from palbert.layers.config import ModuleConfig
from palbert.layers.pal import reset_parameters


class LowRank(nn.Module):
    """One task's low-rank residual terms; V^E/V^D per layer unless ``shared``.

    Parameters per layer (unshared): 2*H*r + r + H.
    """

    def __init__(self, config: ModuleConfig, hidden_size: int, layers) -> None:
        super().__init__()
        self.config = config
        self.layer_ids = [int(i) for i in layers]
        r, H = config.size, hidden_size
        if config.shared:
            self.V_E = nn.Linear(H, r)
            self.V_D = nn.Linear(r, H)
        else:
            self.V_E = nn.ModuleDict({str(i): nn.Linear(H, r) for i in self.layer_ids})
            self.V_D = nn.ModuleDict({str(i): nn.Linear(r, H) for i in self.layer_ids})
        self.act = activation(config.activation)
        outputs = [self.V_D] if config.shared else list(self.V_D.values())
        reset_parameters(self, config.init, outputs=outputs)

    def residual(
        self, layer: int, h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """TS(h), or None outside the chosen layers."""
        if layer not in self.layer_ids:
            return None
        V_E = self.V_E if self.config.shared else self.V_E[str(layer)]
        V_D = self.V_D if self.config.shared else self.V_D[str(layer)]
        return V_D(self.act(V_E(h)))
