"""Injection of per-task modules into the layers of either backbone, in parallel.

Both backbones share transformers' layer structure, so one mechanism serves both:

- each layer's ``forward`` is wrapped to remember its input h (and, when asked, to run under
  activation checkpointing with the routing it was called with, so the recomputation in the
  backward pass sees the same tasks);
- a forward pre-hook on ``layer.output``, called as ``output(FFN_inner, a)``, turns ``a`` into
  ``a + TS(h)``, so the layer computes LN(FFN(a) + a + TS(h)) (:meth:`TaskModule.residual`:
  PAL and low-rank);
- forward hooks on the two output projections add :meth:`TaskModule.attention_bottleneck`
  and :meth:`TaskModule.ffn_bottleneck` (the bottleneck adapters).

A :class:`Route` says, for one forward, which task's module runs on which rows: one task for
the whole batch, or ``task_ids`` (one index per example) for mixed batches. The route belongs
to the call, not to the model: :meth:`Router.routing` keeps it in a thread-local slot, so
threads can run forwards through one model at the same time (and torch.compile traces it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from palbert.layers.module import TaskModule
from palbert.masks import sdpa_padding_mask

Rows = slice | torch.Tensor  # a contiguous run of rows (a view, no copy) or their indices
# one place of a layer as a call on a task module: (module, rows' input, rows' mask) -> term
Term = Callable[[TaskModule, torch.Tensor, torch.Tensor | None], torch.Tensor | None]


@dataclass
class Route:
    """Which task module each example of the current forward goes through."""

    # (batch, 1, 1, seq) SDPA mask, built once (additive in the attention's dtype where the
    # caller gives it); None: nothing padded
    mask: torch.Tensor | None
    task: str | None = None  # one task for the whole batch ...
    # ... or (task, rows, the rows' mask) per task; slices in batch order when every task's
    # rows are contiguous (as the trainer's mixed batches are), index tensors otherwise
    groups: list[tuple[str, Rows, torch.Tensor | None]] = field(default_factory=list)
    # each task's rows as indices, in order of task id (what the heads of a mixed batch take)
    index: dict[str, torch.Tensor] = field(default_factory=dict)
    # each layer's input, from the layer's start until its residual hook takes it: held no
    # longer, so in inference a layer's input is freed as soon as the bare layer frees it
    h: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        mask: torch.Tensor,
        task: str | None = None,
        task_ids: torch.Tensor | None = None,
        names: list[str] | None = None,
        dtype: torch.dtype | None = None,
    ) -> Route:
        mask = sdpa_padding_mask(mask, dtype)  # once per forward, shared by every layer's PAL
        if task_ids is None:
            return cls(mask=mask, task=task)
        found = []
        for i in torch.unique(task_ids).tolist():
            idx = (task_ids == i).nonzero(as_tuple=True)[0]
            first, last = idx[0].item(), idx[-1].item()
            found.append((names[i], idx, first, last))
        contiguous = all(last - first + 1 == len(idx) for _, idx, first, last in found)
        groups = []
        for name, idx, first, last in sorted(found, key=lambda g: g[2]):
            rows = slice(first, last + 1) if contiguous else idx
            groups.append((name, rows, None if mask is None else mask[rows]))
        return cls(mask=mask, groups=groups, index={name: idx for name, idx, _, _ in found})

    @property
    def contiguous(self) -> bool:
        return bool(self.groups) and isinstance(self.groups[0][1], slice)


class Router:
    """Owns the hooks of one model; the route of each forward lives in that call's context."""

    def __init__(self, modules: Mapping[str, TaskModule]) -> None:
        self.modules = modules  # task name -> its TaskModule (absent: the task has none)
        self._local = threading.local()  # .route: the route of this thread's forward
        self.checkpointing = False
        self.handles: list = []

    @property
    def current(self) -> Route | None:
        """The route of the forward running in this thread, or None outside one."""
        return getattr(self._local, "route", None)

    @contextlib.contextmanager
    def routing(self, route: Route) -> Iterator[None]:
        """Run the forwards inside the block with ``route`` (restored afterwards)."""
        previous, self._local.route = self.current, route
        try:
            yield
        finally:
            self._local.route = previous

    def module(self, task: str) -> TaskModule | None:
        return self.modules[task] if task in self.modules else None

    def term(
        self, fn: Term, x: torch.Tensor, base: torch.Tensor, route: Route
    ) -> torch.Tensor | None:
        """``base`` plus the routed task modules' terms ``fn`` computes from ``x``, or None if
        no module contributes (the caller then keeps ``base`` as it is)."""
        if route.task is not None:
            module = self.module(route.task)
            t = None if module is None else fn(module, x, route.mask)
            return None if t is None else base + t
        if route.contiguous:
            # every task's rows are one slice: views in, one concatenation out
            pieces, added = [], False
            for name, rows, mask in route.groups:
                module = self.module(name)
                t = None if module is None else fn(module, x[rows], mask)
                added |= t is not None
                pieces.append(base[rows] if t is None else base[rows] + t)
            return torch.cat(pieces) if added else None
        out = None
        for name, rows, mask in route.groups:
            module = self.module(name)
            t = None if module is None else fn(module, x[rows], mask)
            if t is not None:  # the first sum copies base; later ones add in place
                out = base.index_add(0, rows, t) if out is None else out.index_add_(0, rows, t)
        return out

    def inject(self, layers: list[nn.Module]) -> None:
        for l, layer in enumerate(layers):
            residual, attention, ffn = terms(l)
            self._wrap_forward(l, layer)
            self.handles.append(
                layer.output.register_forward_pre_hook(self._residual_hook(l, residual))
            )
            for term, dense in (
                (attention, layer.attention.output.dense),
                (ffn, layer.output.dense),
            ):
                self.handles.append(dense.register_forward_hook(self._output_hook(term)))

    def _wrap_forward(self, l: int, layer: nn.Module) -> None:
        original = layer.forward

        def forward(hidden_states, *args, **kwargs):
            route = self.current

            def run(h, *a):
                # set again here: checkpointing recomputes this in the backward pass, outside
                # the routing block (and, on GPUs, in autograd's own thread)
                previous, self._local.route = self.current, route
                try:
                    if route is not None:
                        route.h[l] = h
                    return original(h, *a, **kwargs)
                finally:
                    self._local.route = previous

            if self.checkpointing and layer.training and torch.is_grad_enabled():
                return checkpoint(run, hidden_states, *args, use_reentrant=False)
            return run(hidden_states, *args)

        layer.forward = forward

    def _residual_hook(self, l: int, residual: Term):
        def hook(module, args):
            inner, a = args
            route = self.current
            if route is None or l not in route.h:
                return None
            a_ts = self.term(residual, route.h.pop(l), a, route)
            return None if a_ts is None else (inner, a_ts)

        return hook

    def _output_hook(self, term: Term):
        def hook(module, args, out):
            route = self.current
            return None if route is None else self.term(term, out, out, route)

        return hook


def terms(l: int) -> tuple[Term, Term, Term]:
    """Layer ``l``'s three places as calls on a task module: the residual (from the layer's
    input h), after the attention output projection, after the feed-forward one."""
    return (
        lambda m, h, mask: m.residual(l, h, mask),
        lambda m, x, mask: m.attention_bottleneck(l, x),
        lambda m, x, mask: m.ffn_bottleneck(l, x),
    )
