"""The padding mask as SDPA takes it, built once per forward by both backbones and the PALs."""

from __future__ import annotations

import torch


def sdpa_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The (B, T) 0/1 padding mask as a (B, 1, 1, T) boolean mask for SDPA (True = attend).

    Returns None when nothing is padded, which lets SDPA take its fastest path. Under
    torch.compile that check would split the graph on a data-dependent branch, so a compiled
    model always gets the mask (an all-True mask changes no result).

    >>> sdpa_padding_mask(torch.tensor([[1, 1, 0]])).shape
    torch.Size([1, 1, 1, 3])
    >>> sdpa_padding_mask(torch.ones(2, 3)) is None
    True
    """
    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]  # broadcasts over heads and queries
