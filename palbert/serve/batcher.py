"""The task-aware batcher: rows of any tasks packed into one padded forward pass.

::

    batcher = Batcher(model, BatchLimits(max_batch_tokens=16384, max_batch_rows=64))
    batcher.start()                       # the one inference thread
    batcher.admit(3)                      # count rows before tokenizing (QueueFull beyond)
    fut = batcher.submit(request)         # an asyncio future of the request's predictions
    batcher.call(fn)                      # run fn(model) between batches (load / unload tasks)
    batcher.close()                       # finish admitted rows, stop the thread

:func:`pack` is the packing rule, pure (no threads, no model): a batch starts with the oldest
waiting unit, so no task starves, and fills with units of any task closest to it in length
while ``rows x longest row`` (padded tokens, as text-embeddings-inference counts them) stays
under ``max_batch_tokens`` and the rows under ``max_batch_rows``. A unit is one input: one
row, or two for a bi-encoded pair (each sentence a row of its task, ``side`` 0 and 1, as
:meth:`palbert.model.PalBert.forward` takes them).

The model is touched only by the inference thread: forwards, and the loads and unloads that
:meth:`Batcher.call` queues, which run between batches, so a batch never sees a task change.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from palbert.tasks.batching import merge_batches
from palbert.tasks.predictions import as_rows, decode


class QueueFull(Exception):
    """More rows than ``max_queue`` would be admitted and not yet computed."""


class Closed(Exception):
    """The batcher is draining or stopped: nothing new is admitted."""


@dataclass(frozen=True)
class BatchLimits:
    """The batcher's knobs; the defaults are ``palbert serve``'s."""

    max_batch_tokens: int = 16384  # padded tokens per forward (rows x longest row)
    max_batch_rows: int = 64
    max_wait_ms: float = 2.0  # how long the oldest row may wait for company
    max_queue: int = 1024  # rows admitted and not yet computed

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_rows", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, not {self.max_wait_ms}")


def pack(
    widths: Sequence[int], rows: Sequence[int], max_tokens: int, max_rows: int
) -> tuple[list[int], bool]:
    """Which waiting units (oldest first: index 0 is the oldest) go into the next batch.

    ``widths[i]`` is unit i's longest row, ``rows[i]`` its rows (1, or 2 for a bi pair).
    Returns (indices, full): the oldest unit always, then the others in order of closeness
    of length (ties: the older first) while the padded tokens and rows stay in the limits;
    ``full`` is True when a waiting unit was left out for lack of room (send now).
    """
    if not widths:
        return [], False
    chosen, width, n = [0], int(widths[0]), int(rows[0])
    others = sorted(range(1, len(widths)), key=lambda i: (abs(widths[i] - widths[0]), i))
    full = False
    for i in others:
        w, r = max(width, int(widths[i])), n + int(rows[i])
        if r > max_rows or r * w > max_tokens:
            full = True
            if r > max_rows:
                break
            continue
        chosen.append(i)
        width, n = w, r
    return sorted(chosen), full


@dataclass
class Request:
    """One client request for one task version: its tokenized inputs and its future."""

    task: str  # the model's name of the task version (see palbert.serve.app.Served)
    spec: Any
    data: Any  # palbert.tasks.batching.TokenizedSplit
    future: asyncio.Future
    admitted: float = field(default_factory=time.perf_counter)
    outputs: list = field(default_factory=list)
    left: int = 0
    on_done: Callable[[Request], None] | None = None

    def __post_init__(self) -> None:
        self.outputs = [None] * len(self.data)
        self.left = len(self.data)

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()


@dataclass
class Unit:
    request: Request
    index: int  # row of request.data
    width: int
    rows: int
    queued: float


def _resolve(fut: asyncio.Future, result: Any = None, error: BaseException | None = None):
    def set_() -> None:
        if fut.done():  # cancelled by a client that left
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    fut.get_loop().call_soon_threadsafe(set_)


class Batcher:
    """One inference thread, fed by a queue of units of any tasks (see the module doc)."""

    def __init__(
        self,
        model: Any,
        limits: BatchLimits | None = None,
        device: torch.device | None = None,
        observe: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.model = model
        self.limits = limits or BatchLimits()
        self.device = device or next(model.parameters()).device
        self.observe = observe or (lambda event, values: None)
        self._cond = threading.Condition()
        self._units: list[Unit] = []
        self._jobs: list[tuple[Callable[[Any], Any], asyncio.Future | None, threading.Event]] = []
        self._admitted = 0  # rows admitted and not yet computed (or dropped)
        self._closing = False
        self._thread: threading.Thread | None = None
        self.hold = threading.Event()  # tests: set() pauses the thread before each batch
        self.hold.set()

    # -- admission (event loop) -----------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._admitted

    def admit(self, rows: int) -> None:
        """Count ``rows`` before their text is tokenized; QueueFull / Closed refuse them."""
        with self._cond:
            if self._closing:
                raise Closed("the server is shutting down")
            if self._admitted + rows > self.limits.max_queue:
                raise QueueFull(
                    f"the queue holds {self._admitted} rows of at most {self.limits.max_queue} "
                    f"(--max-queue); {rows} more do not fit"
                )
            self._admitted += rows
            self.observe("depth", {"value": self._admitted})

    def release(self, rows: int) -> None:
        """Give back admitted rows that will not be computed (bad input, a client gone)."""
        with self._cond:
            self._admitted -= rows
            self.observe("depth", {"value": self._admitted})
            self._cond.notify_all()

    def submit(self, request: Request) -> asyncio.Future:
        """Queue an admitted request's rows; its future gets the decoded predictions."""
        now = time.perf_counter()
        data = request.data
        widths = data.a.lengths if data.b is None else np.maximum(data.a.lengths, data.b.lengths)
        rows = 1 if data.b is None else 2
        units = [Unit(request, i, int(w), rows, now) for i, w in enumerate(widths)]
        with self._cond:
            self._units.extend(units)
            self._cond.notify_all()
        return request.future

    def call(self, fn: Callable[[Any], Any], future: asyncio.Future | None = None) -> None:
        """Run ``fn(model)`` on the inference thread between batches; its result (or error)
        goes to ``future``. Without a running thread it runs here and now."""
        done = threading.Event()
        if self._thread is None or not self._thread.is_alive():
            self._run_job(fn, future)
            return
        with self._cond:
            self._jobs.append((fn, future, done))
            self._cond.notify_all()

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="palbert-infer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> bool:
        """Refuse new rows, finish the admitted ones, stop; True if all finished in time."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def draining(self) -> None:
        """Refuse new rows from now on (the rows admitted so far are still computed)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def idle(self) -> bool:
        with self._cond:
            return self._admitted == 0 and not self._units and not self._jobs

    def _run_job(self, fn, future) -> None:
        try:
            result = fn(self.model)
        except Exception as e:  # the job's caller answers it
            if future is not None:
                _resolve(future, error=e)
            return
        if future is not None:
            _resolve(future, result)

    def _next(self) -> list[Unit] | None:
        """Wait for the next batch (None: closing and nothing left); runs jobs meanwhile."""
        wait_s = self.limits.max_wait_ms / 1000
        with self._cond:
            while True:
                while self._jobs:
                    fn, fut, _ = self._jobs.pop(0)
                    self._cond.release()
                    try:
                        self._run_job(fn, fut)
                    finally:
                        self._cond.acquire()
                dropped = [u for u in self._units if u.request.cancelled]
                if dropped:  # a client that left: its rows are not computed
                    self._units = [u for u in self._units if not u.request.cancelled]
                    self._admitted -= len(dropped)
                    self.observe("dropped", {"rows": len(dropped)})
                    self.observe("depth", {"value": self._admitted})
                if not self._units:
                    if self._closing and self._admitted <= 0:
                        return None
                    self._cond.wait(0.05 if self._closing else 1.0)
                    continue
                idx, full = pack(
                    [u.width for u in self._units],
                    [u.rows for u in self._units],
                    self.limits.max_batch_tokens,
                    self.limits.max_batch_rows,
                )
                if not self.hold.is_set():  # paused (tests): nothing is computed
                    self._cond.wait(0.01)
                    continue
                waited = time.perf_counter() - self._units[0].queued
                if full or waited >= wait_s or self._closing:
                    chosen = set(idx)
                    batch = [self._units[i] for i in idx]
                    self._units = [u for i, u in enumerate(self._units) if i not in chosen]
                    return batch
                self._cond.wait(wait_s - waited)

    def _loop(self) -> None:
        while True:
            batch = self._next()
            if batch is None:
                return
            try:
                self.compute(batch)
            except Exception as e:  # a server fault: every request of the batch hears it
                for req in {id(u.request): u.request for u in batch}.values():
                    _resolve(req.future, error=e)
            finally:
                with self._cond:
                    self._admitted -= len(batch)
                    self.observe("depth", {"value": self._admitted})
                    self._cond.notify_all()

    # -- one forward ----------------------------------------------------------------------
    def compute(self, batch: list[Unit]) -> None:
        """One mixed-task forward over ``batch``; finished requests are decoded and answered."""
        start = time.perf_counter()
        tensors, order = assemble(self.model, batch, self.device)
        with torch.inference_mode():
            outs = self.model(tensors)
        for task, units in order.items():
            for u, row in zip(units, outs[task].float().cpu(), strict=True):
                u.request.outputs[u.index] = row
                u.request.left -= 1
        done = time.perf_counter()
        n, width = tensors["input_ids"].shape
        real = int(tensors["attention_mask"].sum())
        self.observe(
            "batch",
            {
                "rows": n,
                "padded_tokens": n * width,
                "tasks": len(order),
                "padding_ratio": 1 - real / (n * width),
                "seconds": done - start,
                "queued": [start - u.queued for u in batch],
            },
        )
        for req in {id(u.request): u.request for u in batch}.values():
            if req.left == 0:
                preds = as_rows(req.spec, decode(req.spec, torch.stack(req.outputs)))
                if req.on_done is not None:
                    req.on_done(req)
                _resolve(req.future, preds)


def assemble(
    model: Any, units: Sequence[Unit], device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, list[Unit]]]:
    """The padded mixed batch of ``units`` (task_ids, side) and each task's units in the
    order of its outputs: each request's units are collated together, then merged."""
    parts, order = [], {}
    for _, group in itertools.groupby(units, key=lambda u: id(u.request)):
        group = list(group)
        request = group[0].request
        parts.append((request.task, request.data.collate([u.index for u in group])))
        order.setdefault(request.task, []).extend(group)
    batch, _ = merge_batches(parts, model.tasks, units[0].request.data.pad_id)
    return {k: v.to(device) for k, v in batch.items()}, order


__all__ = ["BatchLimits", "Batcher", "Closed", "QueueFull", "Request", "assemble", "pack"]
