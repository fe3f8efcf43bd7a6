"""Injection of per-task modules into the layers of either backbone, in parallel.

Both backbones share transformers' layer structure, so one mechanism serves both:

- each layer's ``forward`` is wrapped to remember its input h (and, when asked, to run under
  activation checkpointing with the routing it was called with, so the recomputation in the
  backward pass sees the same tasks);
- a forward pre-hook on ``layer.output``, called as ``output(FFN_inner, a)``, turns ``a`` into
  ``a + TS(h)``, so the layer computes LN(FFN(a) + a + TS(h)) (PAL and low-rank);
- forward hooks on the two output projections add the bottleneck adapters' terms.

A :class:`Route` says, for one forward, which task's module runs on which rows: one task for
the whole batch, or ``task_ids`` (one index per example) for mixed batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class Route:
    """Which task module each example of the current forward goes through."""

    mask: torch.Tensor | None  # (batch, seq) padding mask; None when nothing is padded
    task: str | None = None  # one task for the whole batch ...
    groups: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # ... or (task, rows)
    h: dict[int, torch.Tensor] = field(default_factory=dict)  # each layer's input

    @classmethod
    def of(
        cls,
        mask: torch.Tensor,
        task: str | None = None,
        task_ids: torch.Tensor | None = None,
        names: list[str] | None = None,
    ) -> Route:
        # One check per forward (not per layer): no mask lets SDPA take its fast path.
        mask = None if bool(mask.all()) else mask
        if task_ids is None:
            return cls(mask=mask, task=task)
        groups = []
        for i in torch.unique(task_ids).tolist():
            groups.append((names[i], (task_ids == i).nonzero(as_tuple=True)[0]))
        return cls(mask=mask, groups=groups)


class Router:
    """Owns the hooks of one model and the route of the forward in progress."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = modules  # task name -> PAL / LowRank / Adapter (absent: no module)
        self.current: Route | None = None
        self.checkpointing = False
        self.handles: list = []

    @contextlib.contextmanager
    def routing(self, route: Route) -> Iterator[None]:
        """Run the forwards inside the block with ``route`` (restored afterwards)."""
        previous, self.current = self.current, route
        try:
            yield
        finally:
            self.current = previous

    def term(
        self, method: str, layer: int, x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The summed contribution of the routed task modules, or None if there is none."""
        route = self.current
        if route is None:
            return None
        if route.task is not None:
            module = self.modules[route.task] if route.task in self.modules else None
            fn = getattr(module, method, None)
            return None if fn is None else fn(layer, x, mask)
        out = None
        for name, rows in route.groups:
            fn = getattr(self.modules[name] if name in self.modules else None, method, None)
            if fn is None:
                continue
            t = fn(layer, x[rows], None if mask is None else mask[rows])
            if t is None:
                continue
            out = (x.new_zeros(x.shape) if out is None else out).index_add(0, rows, t)
        return out

    def inject(self, layers: list[nn.Module]) -> None:
        for l, layer in enumerate(layers):
            self._wrap_forward(l, layer)
            self.handles.append(layer.output.register_forward_pre_hook(self._residual_hook(l)))
            for method, dense in (
                ("attention_bottleneck", layer.attention.output.dense),
                ("ffn_bottleneck", layer.output.dense),
            ):
                self.handles.append(dense.register_forward_hook(self._adapter_hook(l, method)))

    def _wrap_forward(self, l: int, layer: nn.Module) -> None:
        original = layer.forward

        def forward(hidden_states, *args, **kwargs):
            route = self.current

            def run(h, *a):
                previous, self.current = self.current, route
                try:
                    if route is not None:
                        route.h[l] = h
                    return original(h, *a, **kwargs)
                finally:
                    self.current = previous

            if self.checkpointing and layer.training and torch.is_grad_enabled():
                return checkpoint(run, hidden_states, *args, use_reentrant=False)
            return run(hidden_states, *args)

        layer.forward = forward

    def _residual_hook(self, l: int):
        def hook(module, args):
            inner, a = args
            route = self.current
            if route is None or l not in route.h:
                return None
            ts = self.term("residual", l, route.h[l], route.mask)
            return None if ts is None else (inner, a + ts)

        return hook

    def _adapter_hook(self, l: int, method: str):
        def hook(module, args, out):
            route = self.current
            add = None if route is None else self.term(method, l, out, route.mask)
            return None if add is None else out + add

        return hook
