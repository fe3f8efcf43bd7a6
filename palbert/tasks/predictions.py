"""Predictions: head outputs turned into labels or scores (:func:`decode`, the one place this
happens), and prediction files: the CS224N submission format and plain CSV / JSONL.

CS224N format, as the course's ``multitask_classifier.py`` writes it: a header
``id \\t Predicted_Sentiment `` (``Predicted_Is_Paraphrase`` for Quora, and the course's own
spelling ``Predicted_Similiarity`` for STS), then one ``<id> , <value> `` line per row.
Classification values are label names (SST "0".."4", Quora "0"/"1"), regression values floats.
Default file names follow the course: ``sst-dev-output.csv``, ``para-test-output.csv``, ...

::

    preds = decode(task.spec, logits)                  # {"label", "probs"} or {"score"}
    as_rows(task.spec, preds)                          # [{"label", "label_id", "probs"}, ...]
    write_predictions("predictions/", task, ids, preds, "dev")   # a folder
    write_predictions("sts.jsonl", task, ids, {"score": scores}, "test", fmt="jsonl")
    rows = read_predictions("predictions/sst-dev-output.csv")   # [{"id": ..., "prediction": ...}]
"""

from __future__ import annotations

import csv
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from palbert.choices import check_choice
from palbert.files import atomic_write_with, child

CS224N_COLUMNS = {
    "sst": "Predicted_Sentiment",
    "cfimdb": "Predicted_Sentiment",
    "quora": "Predicted_Is_Paraphrase",
    "sts": "Predicted_Similiarity",  # sic: the course's header
}
CS224N_PREFIX = {"quora": "para"}  # the course calls the Quora task "para"
OutputFormat = Literal["cs224n", "csv", "jsonl"]  # files of predictions
OUTPUT_FORMATS: tuple[str, ...] = typing.get_args(OutputFormat)


def decode(spec: Any, outputs: Any) -> dict[str, Any]:
    """Head outputs -> predictions. Classification (``spec.kind``): ``{"label": LongTensor,
    "probs": FloatTensor}`` (softmax, argmax); regression: ``{"score": FloatTensor}`` (not
    clipped to the label range). Torch is imported here only."""
    import torch

    with torch.no_grad():
        out = outputs.detach().float()
        if spec.kind == "classification":
            probs = out.softmax(-1)
            return {"label": probs.argmax(-1), "probs": probs}
        if out.dim() == 2 and out.shape[-1] == 1:
            out = out.squeeze(-1)
        return {"score": out}


def as_rows(spec: Any, preds: Mapping[str, Any]) -> list:
    """What :meth:`palbert.PalBert.predict` returns for decoded predictions: floats
    (regression) or ``{"label": name, "label_id": i, "probs": {name: p}}`` per row."""
    if spec.kind == "regression":
        return [float(v) for v in _tolist(preds["score"])]
    probs = _tolist(preds["probs"])
    labels = list(spec.labels or [str(i) for i in range(len(probs[0]) if probs else 0)])
    return [
        {"label": labels[i], "label_id": i, "probs": dict(zip(labels, p, strict=True))}
        for i, p in zip(_tolist(preds["label"]), probs, strict=True)
    ]


def _tolist(x: Any) -> list:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu()
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)


def cs224n_column(task: Any) -> str:
    name = task.spec.name
    if name in CS224N_COLUMNS:
        return CS224N_COLUMNS[name]
    return "Predicted_Similarity" if task.spec.kind == "regression" else "Predicted_Label"


def default_filename(task_name: str, split: str, fmt: str = "cs224n") -> str:
    """``sst-dev-output.csv`` (CS224N names), ``quora-dev-output.jsonl`` etc."""
    prefix = CS224N_PREFIX.get(task_name, task_name) if fmt == "cs224n" else task_name
    ext = "jsonl" if fmt == "jsonl" else "csv"
    return f"{prefix}-{split}-output.{ext}"


def _values(task: Any, preds: Any) -> tuple[list, list | None]:
    """(values, probabilities or None): label names or float scores."""
    if isinstance(preds, Mapping):
        if task.spec.kind == "regression":
            return [float(v) for v in _tolist(preds["score"])], None
        ids = [int(v) for v in _tolist(preds["label"])]
        probs = _tolist(preds["probs"]) if preds.get("probs") is not None else None
    else:
        values = _tolist(preds)
        if task.spec.kind == "regression":
            return [float(v) for v in values], None
        ids, probs = [int(v) for v in values], None
    labels = list(task.labels)
    return [labels[i] for i in ids], probs


def write_predictions(
    path: str | Path,
    task: Any,
    ids: Sequence[str],
    preds: Any,
    split: str,
    fmt: str = "cs224n",
) -> Path:
    """Write one task's predictions for ``split``; returns the file written.

    ``task`` is a :class:`palbert.tasks.Task` (its spec's name and kind, its labels). ``preds`` is what
    ``task.predict`` returned (``{"label", "probs"}`` or ``{"score"}``), or plain label ids /
    scores. ``path`` may be a folder: the file is then named by :func:`default_filename`.
    """
    check_choice("fmt", fmt, OUTPUT_FORMATS)
    path = Path(path)
    if path.is_dir() or str(path).endswith(("/", "\\")):
        path = child(path, default_filename(task.spec.name, split, fmt))
    values, probs = _values(task, preds)
    ids = [str(i) for i in _tolist(ids)]
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} ids but {len(values)} predictions")

    # atomic: a kill never leaves a partial file that looks whole at the final path
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if fmt == "cs224n":
                fh.write(f"id \t {cs224n_column(task)} \n")
                for i, v in zip(ids, values, strict=True):
                    fh.write(f"{i} , {v} \n")
            elif fmt == "csv":
                w = csv.writer(fh, lineterminator="\n")
                prob_cols = [f"prob_{n}" for n in task.labels] if probs is not None else []
                w.writerow(["id", "prediction", *prob_cols])
                for j, (i, v) in enumerate(zip(ids, values, strict=True)):
                    w.writerow([i, v, *(probs[j] if probs is not None else [])])
            else:
                for j, (i, v) in enumerate(zip(ids, values, strict=True)):
                    row: dict[str, Any] = {"id": i, "split": split, "task": task.spec.name}
                    if task.spec.kind == "regression":
                        row["score"] = v
                    else:
                        row["label"] = v
                        row["label_id"] = list(task.labels).index(v)
                        if probs is not None:
                            row["probs"] = dict(zip(task.labels, probs[j], strict=True))
                    fh.write(json.dumps(row) + "\n")

    atomic_write_with(path, write)
    return path


def read_predictions(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Read a file written by :func:`write_predictions` back as ``[{"id", "prediction"}]``
    (JSONL rows come back whole). ``fmt`` is guessed from the content when None."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if fmt is None:
        first = text.split("\n", 1)[0]
        fmt = (
            "jsonl"
            if first.startswith("{")
            else ("cs224n" if first.startswith("id \t ") else "csv")
        )
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        return rows
    out = []
    for line in text.splitlines()[1:]:
        if not line.strip():
            continue
        ident, sep, value = line.partition(" , ")
        if not sep:
            raise ValueError(f"{path}: not a CS224N prediction line: {line!r}")
        out.append({"id": ident.strip(), "prediction": value.strip()})
    return out
