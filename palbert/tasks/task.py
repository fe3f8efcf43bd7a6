"""A task: its spec plus everything that acts on it (read, batch, head, loss, metrics).

::

    task = build_task("sst", data_dir="../shared/data/cs224n")
    rows = task.read("dev")                                   # strict: bad rows raise
    loader = task.batches("train", tokenizer, 32, order=Order(shuffle=True, seed=0))
    head = task.build_head(384)
    loss = task.loss(head([encoded]), batch["labels"])
    scores = task.evaluate(task.predict(logits), labels)     # {"accuracy": ...}

Torch is imported only by the methods that need it, so reading and checking data works
without it (``palbert.tasks.readers`` and ``palbert.tasks.spec`` never import it).
"""

from __future__ import annotations

import logging
import os
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palbert.choices import ON_ERRORS, check_choice
from palbert.files import child
from palbert.tasks.errors import DataError, format_problems
from palbert.tasks.paths import DATA_ENV, default_data_dir
from palbert.tasks.readers import (
    Example,
    ParseResult,
    Table,
    infer_labels,
    not_a_file,
    parse_examples,
    read_hf_dataset,
    read_records,
)
from palbert.tasks.spec import BUILTIN_SPECS, DEFAULT_MAX_LENGTH, TaskSpec, unknown_task

if TYPE_CHECKING:
    import torch
    from torch import nn

    from palbert.tasks.batching import Batches, Order, Shard, TokenizedSplit

log = logging.getLogger("palbert.tasks")

DEFAULT_BATCH_SIZE = 32


class DataWarning(UserWarning):
    """Rows were skipped (``on_error="skip"``); the message says how many and which."""


BUILTIN_TASKS: Mapping[str, TaskSpec] = types.MappingProxyType(
    {name: TaskSpec.from_dict({"name": name}) for name in BUILTIN_SPECS}
)


class Task:
    """One task bound to a data folder. Build with :func:`build_task`.

    What the task is lives in ``spec`` (``task.spec.name``, ``.kind``, ``.metrics`` ...);
    the task adds what needs its data: the resolved ``labels`` / ``num_labels``.
    ``skipped`` lists ``(file, line, reason)`` of rows the last read skipped.
    """

    def __init__(
        self,
        spec: TaskSpec,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | bool | None = None,
    ) -> None:
        self.spec = spec
        if data_dir is None:
            data_dir = _default_data_dir(spec)
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        # cache_dir: None -> the default folder, False -> no disk cache, else that folder
        self._cache_dir_arg = cache_dir
        self.skipped: list[tuple[str, int, str]] = []
        self.skipped_by_split: dict[str, list[tuple[str, int, str]]] = {}
        self._labels: list[str] | None = list(spec.labels) if spec.labels is not None else None
        self._tables: dict[str, Table] = {}
        self._memory: dict[tuple, TokenizedSplit] = {}

    def __repr__(self) -> str:
        return f"Task({self.spec.name!r}, kind={self.spec.kind!r}, encoding={self.spec.encoding!r}, splits={self.splits()})"

    # -- what the task is ---------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Class names in id order ([] for regression). Undeclared ones are inferred from the
        train split (sorted) the first time they are needed."""
        if self.spec.kind == "regression":
            return []
        if self._labels is None:
            splits = self.splits()
            source = ["train"] if "train" in splits else splits[:1]
            if not source:
                raise DataError(
                    f"task {self.spec.name!r}: no data to infer labels from; declare labels:"
                )
            self._labels = infer_labels([self._table(s) for s in source], self.spec)
        return list(self._labels)

    @property
    def num_labels(self) -> int:
        return 1 if self.spec.kind == "regression" else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a mapping with the labels resolved, for run folders and exports."""
        d = self.spec.to_dict()
        if self.spec.kind == "classification":
            d["labels"] = self.labels
            d["num_labels"] = len(d["labels"])
        return d

    def resolved_spec(self, max_length: int | None = None) -> TaskSpec:
        """The spec with everything a model needs to predict without the data: labels
        resolved and ``max_length`` filled (the spec's own, else ``max_length``, e.g. the
        recipe's ``train.max_length``, else :data:`DEFAULT_MAX_LENGTH`)."""
        import dataclasses

        labels = tuple(self.labels) if self.spec.kind == "classification" else None
        return dataclasses.replace(
            self.spec,
            labels=labels,
            num_labels=len(labels) if labels is not None else None,
            max_length=self.spec.max_length or max_length or DEFAULT_MAX_LENGTH,
        )

    # -- files ----------------------------------------------------------------------------
    def splits(self) -> list[str]:
        """Splits that can be read: those whose file exists (or all of a dataset's splits)."""
        if self.spec.dataset is not None:
            return list(self.spec.dataset.splits)
        # exists, not is_file: a split whose path is a device or folder is read, and refused
        return [s for s in self.spec.files if self.path(s).exists()]

    def path(self, split: str) -> Path:
        """The file of ``split``: absolute, or relative to the data folder."""
        if split not in self.spec.files:
            raise DataError(
                f"task {self.spec.name!r} has no split {split!r}; its splits are {', '.join(self.spec.files)}"
            )
        p = Path(self.spec.files[split]).expanduser()
        if not p.is_absolute() and self.data_dir is not None:
            p = self.data_dir / p
        return p

    def _check_file(self, split: str) -> Path:
        p = self.path(split)
        if p.exists() and not p.is_file():  # /dev/null, a folder: not "not found"
            raise DataError(f"task {self.spec.name!r} split {split!r}: {not_a_file(p)}")
        if not p.is_file():
            where = (
                f"data folder {self.data_dir}"
                if self.data_dir is not None
                else "the current folder"
            )
            hint = ""
            if self.spec.name in BUILTIN_SPECS and self.spec.files.get(split) == BUILTIN_SPECS[
                self.spec.name
            ]["files"].get(split):
                hint = (
                    f"; the built-in task {self.spec.name!r} expects the CS224N file "
                    f"{self.spec.files[split]!r} in the data folder (data_dir=..., or files: to override)"
                )
            raise DataError(
                f"task {self.spec.name!r} split {split!r}: data file not found: {p} (relative paths are under {where}){hint}"
            )
        return p

    def _table(self, split: str) -> Table:
        if split in self._tables:
            return self._tables[split]
        if self.spec.dataset is not None:
            table = read_hf_dataset(self.spec.dataset, split)
        else:
            table = read_records(self._check_file(split), self.spec.format, self.spec.multiline)
        self._tables[split] = table
        return table

    def _parse(self, split: str) -> ParseResult:
        labels = self.labels if self.spec.kind == "classification" else None
        table = self._table(split)
        try:
            return parse_examples(table, self.spec, split, labels)
        finally:
            self._tables.pop(split, None)  # raw rows are not needed once parsed

    def _report(
        self, split: str, problems: list[tuple[str, int, str]], on_error: str, again: bool = True
    ) -> None:
        # again=False: rows served from memory were reported when first read; stay quiet
        self.skipped = list(problems)
        self.skipped_by_split[split] = list(problems)
        if not problems:
            return
        files = sorted({f for f, _, _ in problems})
        head = f"task {self.spec.name!r} split {split!r}: {len(problems)} bad row(s) in {', '.join(files)}"
        if on_error == "raise":
            raise DataError(
                f"{head}:\n{format_problems(problems)}\n"
                "Fix the file, or skip and report these rows with `on_error: skip` in the "
                'recipe\'s task entry (on_error="skip" from Python).',
                problems,
            )
        if not again:
            return
        # Reported once, as a DataWarning (filters and pytest.warns see it), placed at no
        # source line: Python would otherwise print a line of palbert's code after it.
        warnings.warn_explicit(
            f"{head} skipped:\n{format_problems(problems)}",
            DataWarning,
            filename="<palbert>",
            lineno=0,
            module=__name__,
        )

    def read(self, split: str, on_error: str = "raise") -> list[Example]:
        """The checked rows of ``split``. Strict by default: any bad row raises
        :class:`DataError` listing every bad row (file:line reason, the first 20 shown).
        ``on_error="skip"`` drops them, records them in ``task.skipped`` and warns."""
        check_choice("on_error", on_error, ON_ERRORS)
        result = self._parse(split)
        self._report(split, result.problems, on_error)
        return result.examples

    # -- tokens and batches ---------------------------------------------------------------
    def cache_dir(self) -> Path | None:
        from palbert.tasks.batching import default_cache_dir

        arg = self._cache_dir_arg
        if arg is False:
            return None
        if arg is None or arg is True:
            return default_cache_dir()
        return Path(arg)

    def tokenized(
        self,
        split: str,
        tokenizer: Any,
        max_length: int | None = None,
        on_error: str = "raise",
    ) -> TokenizedSplit:
        """``split`` tokenized once for this tokenizer and max length, then served from memory
        and from an on-disk cache keyed by the file's content hash, the tokenizer's vocabulary
        and rules, ``max_length`` and everything in the spec that changes the rows."""
        import palbert.tasks.batching as B

        check_choice("on_error", on_error, ON_ERRORS)
        max_length = self._max_length(max_length, tokenizer)
        tok_key = B.tokenizer_fingerprint(tokenizer)
        mem_key = (split, tok_key, max_length)
        data = self._memory.get(mem_key)
        if data is not None:
            self._report(split, data.skipped, on_error, again=False)
            return data
        path = self._cache_path(split, tok_key, max_length)
        data = B.load_tokenized(path) if path is not None else None
        if data is not None:
            if self.spec.dataset is None:
                # the cache is keyed by content: name this copy, not the one that filled it
                here = str(self._check_file(split))
                data.skipped = [(here, line, why) for _, line, why in data.skipped]
            self._report(split, data.skipped, on_error)
        else:
            result = self._parse(split)
            self._report(split, result.problems, on_error)  # raises before anything is cached
            dtype = None
            if result.labelled:
                dtype = "int64" if self.spec.kind == "classification" else "float32"
            data = B.tokenize_examples(
                result.examples, tokenizer, max_length, self.spec.encoding, dtype, result.problems
            )
            if path is not None:
                try:
                    B.save_tokenized(path, data)
                except OSError as e:  # a read-only cache is no reason to stop training
                    log.warning("could not write the token cache %s: %s", path, e)
        self._memory[mem_key] = data
        return data

    def _cache_path(self, split: str, tok_key: str, max_length: int) -> Path | None:
        from palbert.tasks.batching import cache_key

        cache_dir = self.cache_dir()
        if cache_dir is None:
            return None
        source = self._source_fingerprint(split)
        if source is None:
            return None
        key = cache_key(
            {
                "source": source,
                "split_unlabelled_ok": split.startswith("test"),
                "spec": self._parse_fields(),
                "tokenizer": tok_key,
                "max_length": max_length,
            }
        )
        return child(cache_dir, f"{self.spec.name}-{split}-{key}.npz")

    def _max_length(self, max_length: int | None, tokenizer: Any) -> int:
        from palbert.tasks.batching import capped_length

        return capped_length(max_length or self.spec.max_length or DEFAULT_MAX_LENGTH, tokenizer)

    def _source_fingerprint(self, split: str) -> str | None:
        from palbert.tasks.batching import file_fingerprint

        if self.spec.dataset is not None:
            return self._table(split).fingerprint
        return file_fingerprint(self._check_file(split))

    def _parse_fields(self) -> dict[str, Any]:
        s = self.spec
        return {
            "kind": s.kind,
            "pair": s.pair,
            "text": list(s.text),
            "label": s.label,
            "id": s.id,
            "labels": self.labels,
            "label_range": s.label_range,
            "format": s.format,
            "multiline": s.multiline,
            "encoding": s.encoding,
        }

    def batches(
        self,
        split: str,
        tokenizer: Any,
        batch_size: int | None = None,
        max_length: int | None = None,
        order: Order | None = None,
        shard: Shard | None = None,
        on_error: str = "raise",
    ) -> Batches:
        """Batches of ``split`` (see :class:`palbert.tasks.batching.Batches`): dynamically
        padded, in the ``order`` of epoch 0 (call ``loader.set_epoch(e)`` for another),
        ``shard``-ed between processes; ``batch_size`` defaults to the spec's, then 32."""
        from palbert.tasks.batching import Batches

        data = self.tokenized(split, tokenizer, max_length=max_length, on_error=on_error)
        size = batch_size or self.spec.batch_size or DEFAULT_BATCH_SIZE
        return Batches(data, size, order, shard)

    # -- head, loss, predictions, metrics -------------------------------------------------
    def build_head(self, hidden_size: int) -> nn.Module:
        """A fresh head for an encoder of ``hidden_size`` (see :mod:`palbert.tasks.heads`)."""
        from palbert.tasks.heads import build_head

        return build_head(
            self.spec.head,
            hidden_size,
            self.num_labels,
            self.spec.kind,
            self.spec.encoding,
            self.spec.label_range,
        )

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over classes (for two classes this equals binary cross-entropy
        on the logit difference) or mean squared error for regression."""
        import torch.nn.functional as F

        if self.spec.kind == "classification":
            return F.cross_entropy(outputs, labels.long())
        if outputs.dim() == 2 and outputs.shape[-1] == 1:
            outputs = outputs.squeeze(-1)
        return F.mse_loss(outputs.float(), labels.float())

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """See :func:`palbert.tasks.predictions.decode`."""
        from palbert.tasks.predictions import decode

        return decode(self.spec, outputs)

    def evaluate(self, pred_values: Any, labels: Any) -> dict[str, float]:
        """The task's metrics over a whole split. ``pred_values``: what :meth:`predict`
        returned, label ids or scores (tensors, arrays or lists; logits are argmaxed)."""
        import numpy as np

        from palbert.tasks.metrics import compute_metrics

        if isinstance(pred_values, Mapping):
            pred_values = pred_values["label" if self.spec.kind == "classification" else "score"]
        p = _numpy(pred_values)
        y = _numpy(labels)
        if self.spec.kind == "classification":
            if p.ndim == 2:
                p = p.argmax(-1)
            p, y = p.astype(np.int64), y.astype(np.int64)
        else:
            p, y = p.astype(np.float64).reshape(-1), y.astype(np.float64).reshape(-1)
        return compute_metrics(self.spec.metrics, p, y)


def _numpy(x: Any):
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _default_data_dir(spec: TaskSpec) -> Path | None:
    """``$PALBERT_DATA_DIR``, else the default folder of :mod:`palbert.tasks.paths` when it holds
    any of the spec's relative files (the CS224N ones for built-in tasks: a copy without the
    test split still serves train and dev), else None: the current folder."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    needed = [f for f in spec.files.values() if not Path(f).expanduser().is_absolute()]
    found = default_data_dir(needed) if needed else None
    return found if found is not None and any((found / f).is_file() for f in needed) else None


def build_task(
    spec: str | Mapping[str, Any] | TaskSpec,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | bool | None = None,
) -> Task:
    """A :class:`Task` from a built-in name, a recipe mapping or a :class:`TaskSpec`.

    ``data_dir`` (default ``$PALBERT_DATA_DIR``, else the current folder) is where relative
    file paths point; ``cache_dir`` holds tokenized splits (``False`` disables the disk cache).

    >>> build_task("sts", data_dir="../shared/data/cs224n").spec.kind      # doctest: +SKIP
    'regression'
    """
    if isinstance(spec, TaskSpec):
        s = spec
    elif isinstance(spec, str):
        if spec not in BUILTIN_TASKS:
            raise DataError(unknown_task(spec))
        s = BUILTIN_TASKS[spec]
    elif isinstance(spec, Mapping):
        s = TaskSpec.from_dict(dict(spec))
    else:
        raise TypeError(
            f"build_task takes a name, a mapping or a TaskSpec, not {type(spec).__name__}"
        )
    return Task(s, data_dir=data_dir, cache_dir=cache_dir)
