"""PCGrad gradient surgery (Yu et al., "Gradient Surgery for Multi-Task Learning", 2020).

For task gradients g_1..g_T: each g_i is taken in turn against the other tasks' original
gradients in a random order; whenever g_i conflicts with g_j (g_i . g_j < 0), the component
of g_i along g_j is removed: g_i <- g_i - (g_i . g_j / |g_j|^2) g_j. The update is the sum
of the projected gradients.

::

    combined = pcgrad([g_sst, g_sts, g_quora], generator=torch.Generator().manual_seed(0))

Only shared parameters take part: the trainer flattens the gradients of parameters that more
than one task of the window reached; task-only parameters (a head) keep their own gradient.
"""

from __future__ import annotations

import torch


def pcgrad(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Project conflicting task gradients (flat 1-D tensors) and return their sum."""
    if not grads:
        raise ValueError("pcgrad needs at least one gradient")
    if len(grads) == 1:
        return grads[0].clone()
    originals = [g.float() for g in grads]
    out = torch.zeros_like(originals[0])
    for i, g in enumerate(originals):
        g = g.clone()
        others = [j for j in range(len(originals)) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        for k in order:
            gj = originals[others[k]]
            dot = torch.dot(g, gj)
            if dot < 0:
                g -= dot / gj.pow(2).sum().clamp_min(1e-20) * gj
        out += g
    return out.to(grads[0].dtype)


__all__ = ["pcgrad"]
