"""Tasks: how rows are read and checked, batched, scored and written out.

::

    from palbert.tasks import build_task
    task = build_task("sst", data_dir="../shared/data/cs224n")
    loader = task.batches("train", tokenizer, 32, order=Order(shuffle=True, seed=0))
    head = task.build_head(hidden_size=384)

Built-in tasks: ``sst``, ``cfimdb``, ``quora``, ``sts`` (the CS224N multitask project).
Others come from a mapping, see :class:`TaskSpec`. Modules: ``spec`` (definitions),
``readers`` (files -> checked rows), ``batching`` (tokens, cache, batches), ``heads``,
``metrics`` (offline ``evaluate`` metrics), ``predictions`` (output files). Importing this
package does not import torch; the parts that need it load it when used.
"""

from __future__ import annotations

from typing import Any

from palbert.tasks.errors import DataError
from palbert.tasks.predictions import as_rows, decode, read_predictions, write_predictions
from palbert.tasks.readers import Example
from palbert.tasks.spec import DatasetSpec, HeadSpec, TaskSpec
from palbert.tasks.task import BUILTIN_TASKS, DataWarning, Task, build_task

__all__ = [
    "BUILTIN_TASKS",
    "DataError",
    "DataWarning",
    "DatasetSpec",
    "Example",
    "HeadSpec",
    "Task",
    "TaskSpec",
    "as_rows",
    "build_task",
    "decode",
    "read_predictions",
    "write_predictions",
]

_LAZY = {
    "Batches": "palbert.tasks.batching",
    "Order": "palbert.tasks.batching",
    "Shard": "palbert.tasks.batching",
    "TokenizedSplit": "palbert.tasks.batching",
    "build_head": "palbert.tasks.heads",
    "compute_metrics": "palbert.tasks.metrics",
}


def __getattr__(name: str) -> Any:
    # torch-backed parts load on first use, keeping `import palbert.tasks` light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'palbert.tasks' has no attribute {name!r}")
