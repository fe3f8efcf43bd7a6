"""Projected Attention Layers (Stickland & Murray, ICML 2019), one module per task.

For layer l with input h (batch, seq, H) the task-specific term joining the layer's final
residual is

    TS(h) = V^D  MHA_l( V^E h )

V^E: H -> d_pal and V^D: d_pal -> H are shared across all layers (``shared=True``, the paper's
choice); MHA_l is a per-layer multi-head self-attention in d_pal dimensions with Q/K/V of
d_pal x d_pal, the encoder's own padding mask and no output projection (V^D plays that role).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from palbert.activations import activation
from palbert.layers.config import ModuleConfig
from palbert.layers.module import Projected
from palbert.masks import sdpa_padding_mask


class LowDimAttention(nn.Module):
    """MHA_{t,l}: self-attention inside the d_pal space, no output projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask``: (B, T) with 1 for real tokens, its :func:`sdpa_padding_mask` (boolean or
        additive), or None."""
        B, T, d = x.shape
        # Q, K and V in one GEMM: three small d x d matmuls run far below a big one's speed.
        # The weights stay three Linears (the state-dict keys and the optimizer's parameters).
        w = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        b = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        # (B, T, 3d) -> three (B, heads, T, d/heads) views; SDPA takes them as they are
        q, k, v = F.linear(x, w, b).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is not None and mask.dim() == 2:
            mask = sdpa_padding_mask(mask, q.dtype)
        elif mask is not None and mask.is_floating_point() and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # the Route guessed another dtype: SDPA wants q's
        # None (nothing padded, decided once per forward by the Route) is SDPA's fast path.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return y.transpose(1, 2).reshape(B, T, d)


class PAL(Projected):
    """One task's PALs for every injected layer.

    >>> pal = PAL(ModuleConfig(kind="pal").resolved(768), hidden_size=768, layers=range(12))
    >>> sum(p.numel() for p in pal.parameters())
    1819836
    """

    def __init__(self, config: ModuleConfig, hidden_size: int, layers: Iterable[int]) -> None:
        super().__init__(config, hidden_size, layers)  # V^E, V^D
        self.attn = nn.ModuleDict(
            {str(i): LowDimAttention(config.size, config.heads) for i in self.layer_ids}
        )
        self.act = activation(config.activation)
        # Progressive depth: layers whose PAL is switched on (all unless a schedule says so).
        self.active: set[int] = set(self.layer_ids)
        self.reset_parameters()

    def set_progress(self, step: int, epoch: int) -> None:
        """Switch on the PALs of the top layers that the progressive schedule allows."""
        prog = self.config.progressive
        if prog is None:
            return
        n = prog.num_active(step, epoch, len(self.layer_ids))
        self.active = set(sorted(self.layer_ids)[-n:]) if n > 0 else set()

    def residual(
        self, layer: int, h: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """TS(h) for this layer, or None where no PAL is active. ``mask`` as in
        :meth:`LowDimAttention.forward`."""
        if layer not in self.active:
            return None
        V_E, V_D = self.projections(layer)
        return self.act(V_D(self.attn[str(layer)](V_E(h), mask)))


__all__ = ["PAL", "LowDimAttention"]
