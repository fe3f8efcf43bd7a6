"""One inference path: tokenize, batch by length, forward, decode, score.

Training's dev evaluation, ``palbert eval``, ``palbert predict`` and :meth:`PalBert.predict`
all run through :func:`forward_rows`, with the max_length stored in the model's task spec, so a
run's dev score and ``palbert eval`` of its exported files are equal by construction::

    scores = evaluate(model, tasks, "dev")                  # {"sst": {"accuracy": ...}, ...}
    result = run_split(model, tasks["sst"], "test")         # ids, predictions, labels
    predict(model, "sts", [("a cat sits", "a cat is sitting")])   # [4.1]

Rows are sorted by length into batches (little padding) and results come back in input
order. A model in training mode is switched to eval mode for the call and back; a model in
eval mode (as :meth:`PalBert.from_pretrained` returns it) is not touched, so several threads
may predict with one model at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from palbert.choices import PRECISIONS, check_choice
from palbert.tasks.batching import TokenizedSplit, capped_length, tokenize_examples
from palbert.tasks.errors import DataError
from palbert.tasks.predictions import as_rows, decode
from palbert.tasks.readers import Example, text_problem


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> fp16 on CUDA, fp32 elsewhere; fp16 off CUDA and bf16 where unsupported fail."""
    check_choice("precision", name, PRECISIONS)
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use precision fp16")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.amp.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside the block; a training model is switched back after."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


PAD_TOLERANCE = 0.9  # a batch holds rows at least this fraction of its longest row's length


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices, longest first, in batches of at most ``batch_size`` whose rows are all
    at least ``PAD_TOLERANCE`` of the batch's longest: at most 10% of a batch is padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    for k in range(1, len(order) + 1):
        full = k - start == batch_size
        if k == len(order) or full or lengths[order[k]] < PAD_TOLERANCE * lengths[order[start]]:
            batches.append(order[start:k])
            start = k
    return batches


def padding_waste(lengths: np.ndarray, batch_size: int) -> float:
    """Share of padded positions when rows are batched by :func:`length_batches`."""
    lengths = np.asarray(lengths)
    padded = sum(int(lengths[b].max()) * len(b) for b in length_batches(lengths, batch_size))
    return 1.0 - float(lengths.sum()) / padded if padded else 0.0


def forward_rows(
    model: nn.Module,
    task: str,
    data: TokenizedSplit,
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> torch.Tensor:
    """Head outputs of ``task`` for every row of ``data``, in row order (float32, CPU)."""
    device = device or next(model.parameters()).device
    outputs: list[torch.Tensor | None] = [None] * len(data)
    with eval_mode(model):
        for idx in length_batches(data.lengths, batch_size):
            batch = data.collate(idx)
            batch = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with autocast(precision, device):
                out = model(batch, task=task)
            for i, row in zip(idx.tolist(), out.float().cpu(), strict=True):
                outputs[i] = row
    if not outputs:
        return torch.empty(0)
    return torch.stack(outputs)  # type: ignore[arg-type]


@dataclass
class SplitResult:
    """One task over one split: row ids, decoded predictions, labels (None if unlabelled)."""

    ids: list[str]
    predictions: dict[str, torch.Tensor]
    labels: torch.Tensor | None


def run_split(
    model: nn.Module,
    task: Any,
    split: str,
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: str = "fp32",
    on_error: str = "raise",
) -> SplitResult:
    """``task`` (a :class:`palbert.tasks.Task` of the model) over its file for ``split``,
    tokenized at the max_length of the model's spec for it."""
    spec = model.spec(task.spec.name)
    data = task.tokenized(split, model.tokenizer, max_length=spec.max_length, on_error=on_error)
    if len(data) == 0:
        raise DataError(f"task {task.spec.name!r} split {split!r} has no rows")
    out = forward_rows(model, task.spec.name, data, batch_size, device, precision)
    labels = torch.from_numpy(data.labels) if data.labels is not None else None
    return SplitResult(list(data.ids), decode(spec, out), labels)


def evaluate(
    model: nn.Module,
    tasks: Mapping[str, Any],
    split: str = "dev",
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: str = "fp32",
    on_error: Mapping[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Each task's metrics over a whole split: ``{task: {metric: value}}``.

    ``on_error`` maps a task to ``"skip"`` to drop rows its reader rejects (reported).
    """
    scores = {}
    for name, task in tasks.items():
        res = run_split(
            model, task, split, batch_size, device, precision, (on_error or {}).get(name, "raise")
        )
        if res.labels is None:
            raise DataError(f"task {name!r} split {split!r} has no labels to evaluate")
        scores[name] = task.evaluate(res.predictions, res.labels)
    return scores


class InputError(ValueError):
    """An input that does not fit its task: ``index`` is its position, ``part`` names its
    second text where that is at fault, ``reason`` says why, ``code`` is the kind of fault
    (``wrong_input_kind`` or ``invalid_text``, as ``palbert serve`` answers it)."""

    def __init__(self, index: int, reason: str, code: str, part: str = "") -> None:
        super().__init__(f"input {index}{part}: {reason}")
        self.index, self.reason, self.code, self.part = index, reason, code, part


def check_input(spec: Any, x: Any, index: int) -> tuple[str, str | None]:
    """``(text_a, text_b)`` of one input of a task, or :class:`InputError`: a sentence (str)
    for single-sentence tasks, a pair of strings for pair tasks, each text one
    :func:`text_problem` finds nothing wrong with. The one check of what :func:`predict` and
    ``palbert serve`` accept."""
    if isinstance(x, str):
        a, b = x, None
    elif isinstance(x, Sequence) and len(x) == 2 and all(isinstance(s, str) for s in x):
        a, b = x
    else:
        raise InputError(
            index, f"expected a string or a pair of strings, not {x!r}", "wrong_input_kind"
        )
    if bool(spec.pair) != (b is not None):
        want = "sentence pairs" if spec.pair else "single sentences"
        got = "one string" if b is None else "a pair"
        reason = f"task {spec.name!r} takes {want}; this input is {got}"
        raise InputError(index, reason, "wrong_input_kind")
    for part, text in (("", a), (" (its second text)", b)):
        bad = text_problem(text) if text is not None else None
        if bad:
            raise InputError(index, bad, "invalid_text", part)
    return a, b


def _examples(spec: Any, inputs: Iterable[str | Sequence[str]]) -> list[Example]:
    if isinstance(inputs, (str, bytes)):
        raise TypeError(
            f"inputs of task {spec.name!r} must be a list of sentences or pairs, not one "
            "string (wrap it in a list)"
        )
    out = []
    for i, x in enumerate(inputs):
        a, b = check_input(spec, x, i)
        out.append(Example(id=str(i), text_a=a, text_b=b, label=None, line=i))
    return out


def predict(
    model: nn.Module,
    task: str,
    inputs: Iterable[str | Sequence[str]],
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> list:
    """Predictions of ``task`` for sentences (str) or pairs ((a, b)), in input order: floats
    (regression) or ``{"label", "label_id", "probs"}`` (classification)."""
    spec = model.spec(task)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if not isinstance(inputs, (str, bytes)):
        inputs = list(inputs)
        if not inputs:
            return []
    data = tokenize_inputs(model, task, inputs)
    if device is not None:
        model.to(device)
    out = forward_rows(model, task, data, batch_size)
    return as_rows(spec, decode(spec, out))


def tokenize_inputs(
    model: nn.Module, task: str, inputs: Iterable[str | Sequence[str]]
) -> TokenizedSplit:
    """Sentences or pairs of ``task`` tokenized as :func:`predict` (and ``palbert serve``)
    feed them: checked against the task's ``pair``, truncated to its max_length; at least
    one input."""
    spec = model.spec(task)
    examples = _examples(spec, inputs)
    tokenizer = model.tokenizer
    max_length = capped_length(spec.max_length, tokenizer)  # as palbert.tasks.Task does
    return tokenize_examples(examples, tokenizer, max_length, spec.encoding, None)


__all__ = [
    "InputError",
    "check_input",
    "SplitResult",
    "autocast",
    "eval_mode",
    "evaluate",
    "forward_rows",
    "length_batches",
    "padding_waste",
    "predict",
    "resolve_precision",
    "run_split",
    "tokenize_inputs",
]
