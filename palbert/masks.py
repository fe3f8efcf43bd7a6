"""The padding mask as SDPA takes it, built once per forward by both backbones and the PALs."""

from __future__ import annotations

import torch


def sdpa_padding_mask(
    attention_mask: torch.Tensor | None, dtype: torch.dtype | None = None
) -> torch.Tensor | None:
    """The (B, T) 0/1 padding mask as a (B, 1, 1, T) mask for SDPA.

    Boolean (True = attend) without ``dtype``; with it, additive in that dtype: 0 where a
    token is attended, -inf at padding. The additive one is what SDPA makes of a boolean mask
    on every call, so a forward that builds it once spares each attention the conversion
    (three kernels a layer on a GPU); the results are the same bit for bit.

    Returns None when nothing is padded, which lets SDPA take its fastest path. Under
    torch.compile that check would split the graph on a data-dependent branch, so a compiled
    model always gets the mask (an all-True mask changes no result).

    >>> sdpa_padding_mask(torch.tensor([[1, 1, 0]])).shape
    torch.Size([1, 1, 1, 3])
    >>> sdpa_padding_mask(torch.tensor([[1, 1, 0]]), torch.float32).flatten().tolist()
    [0.0, 0.0, -inf]
    >>> sdpa_padding_mask(torch.ones(2, 3)) is None
    True
    """
    if attention_mask is None:
        return None
    if not torch.compiler.is_compiling() and bool(attention_mask.all()):
        return None
    keep = attention_mask.bool()[:, None, None, :]  # broadcasts over heads and queries
    if dtype is None:
        return keep
    return torch.full(keep.shape, float("-inf"), dtype=dtype, device=keep.device).masked_fill_(
        keep, 0.0
    )


def attention_dtype(ref: torch.Tensor) -> torch.dtype:
    """The dtype attention's queries come in when the encoder's input is ``ref``: autocast's
    where it is on for ``ref``'s device (its linears compute in that dtype), else ``ref``'s."""
    device = ref.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return ref.dtype
