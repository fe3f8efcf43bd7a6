"""What a task module is to the encoder: the contract every per-task module keeps.

A :class:`TaskModule` may add a term at three places of each encoder layer l (the Router of
:mod:`palbert.layers.inject` calls these hooks on the rows of the module's task):

- :meth:`~TaskModule.residual` ``(l, h, mask)``: a term TS(h) of the layer's input h joining
  its final residual, LN(FFN(a) + a + TS(h)) (PAL, low-rank);
- :meth:`~TaskModule.attention_bottleneck` ``(l, x)``: a term added to the attention output
  projection's result x (adapters);
- :meth:`~TaskModule.ffn_bottleneck` ``(l, x)``: a term added to the feed-forward output
  projection's result x (adapters).

Each returns None by default, meaning "adds nothing here" (the layer then computes what the
bare encoder computes, at no cost). :meth:`~TaskModule.set_progress` advances schedules that
depend on training progress; ``active`` says which layers a schedule has switched on (None:
no schedule). Initialisation: every Linear from N(0, 0.02) with zero biases, and under
``init="zero"`` the :meth:`~TaskModule.outputs` maps are zero too, so a freshly injected
module adds exactly nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from palbert.layers.config import ModuleConfig


class TaskModule(nn.Module):
    """One task's module for every injected layer (``layer_ids``)."""

    # the layers a progressive schedule has switched on; None: the module has no schedule
    active: set[int] | None = None

    def __init__(self, config: ModuleConfig, hidden_size: int, layers: Iterable[int]) -> None:
        super().__init__()
        self.config = config
        self.layer_ids = [int(i) for i in layers]

    def residual(
        self, layer: int, h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """TS(h), joining layer ``layer``'s final residual; ``mask`` is the rows' padding mask
        as :func:`palbert.masks.sdpa_padding_mask` builds it (None: nothing padded)."""
        return None

    def attention_bottleneck(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """A term added to the attention output projection's result ``x``."""
        return None

    def ffn_bottleneck(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
        """A term added to the feed-forward output projection's result ``x``."""
        return None

    def set_progress(self, step: int, epoch: int) -> None:
        """Advance schedules that depend on training progress (none by default)."""

    def outputs(self) -> list[nn.Linear]:
        """The maps that write the module's terms: zero under ``init="zero"``."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Weights from N(0, 0.02), biases zero; under init="zero" the output maps are zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.config.init == "zero":
            for m in self.outputs():
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)


class Projected(TaskModule):
    """A module working in d dimensions between V^E: H -> d and V^D: d -> H, one pair shared
    by all layers (``config.shared``) or one per layer (PAL, low-rank)."""

    def __init__(self, config: ModuleConfig, hidden_size: int, layers: Iterable[int]) -> None:
        super().__init__(config, hidden_size, layers)
        d, H = config.size, hidden_size
        if config.shared:
            self.V_E = nn.Linear(H, d)
            self.V_D = nn.Linear(d, H)
        else:
            self.V_E = nn.ModuleDict({str(i): nn.Linear(H, d) for i in self.layer_ids})
            self.V_D = nn.ModuleDict({str(i): nn.Linear(d, H) for i in self.layer_ids})

    def projections(self, layer: int) -> tuple[nn.Linear, nn.Linear]:
        """(V^E, V^D) of layer ``layer``."""
        if self.config.shared:
            return self.V_E, self.V_D
        return self.V_E[str(layer)], self.V_D[str(layer)]

    def outputs(self) -> list[nn.Linear]:
        return [self.V_D] if self.config.shared else list(self.V_D.values())


__all__ = ["Projected", "TaskModule"]
