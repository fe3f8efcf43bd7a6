"""The data a run trained on: a fingerprint of every file it read, kept in its run folder.

A run writes ``data.json`` when it starts (and again when it resumes)::

    {"format": 1, "tasks": {"sst": {"train": {"file": "/data/ids-sst-train.csv",
                                              "size": 1234567, "sha256": "9f2c..."}, ...}}}

``palbert train --resume`` compares the files it is about to read with this record and
refuses a run whose files changed (size or content, wherever they now lie), naming each
one, unless the user says to go on (``--allow-data-change``; ``train(...,
allow_data_change=True)`` from Python): a resume that silently trains on other rows is a
different experiment under the old run's name. Hugging Face datasets are recorded by name,
config, split and revision. A run folder written before palbert recorded its data resumes
with a one-line warning.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from palbert.files import atomic_write_text
from palbert.recipe import RecipeError
from palbert.tasks.batching import file_fingerprint  # the token cache's hash too

DATA_FILE = "data.json"
FORMAT = 1
ALLOW_FLAG = "--allow-data-change"  # the command-line switch that lets a resume go on


def fingerprint_data(tasks: Mapping[str, Any], splits: Iterable[str]) -> dict[str, dict]:
    """``{task: {split: fingerprint}}`` for each of ``splits`` that a task has (the splits a
    run reads: "train" and the evaluation split): a file's path, size and sha256, or a
    dataset's name, config, split and revision."""
    splits = list(dict.fromkeys(splits))
    out: dict[str, dict] = {}
    for name, task in tasks.items():
        have = task.splits()
        out[name] = {s: _fingerprint(task, s) for s in splits if s in have}
    return out


def _fingerprint(task: Any, split: str) -> dict[str, Any]:
    ds = task.spec.dataset
    if ds is not None:
        return {
            "dataset": ds.name,
            "config": ds.config,
            "split": ds.splits[split],
            "revision": ds.revision,
        }
    path = task.path(split).resolve()
    return {"file": str(path), "size": path.stat().st_size, "sha256": file_fingerprint(path)}


def write_data_record(run_dir: Path, data: Mapping[str, dict]) -> None:
    """Record ``data`` (from :func:`fingerprint_data`) in the run folder."""
    record = {"format": FORMAT, "tasks": data}
    atomic_write_text(Path(run_dir) / DATA_FILE, json.dumps(record, indent=1) + "\n")


def check_same_data(run_dir: Path, data: Mapping[str, dict], allow_change: bool = False) -> None:
    """Refuse to resume ``run_dir`` on data other than it recorded (a :class:`RecipeError`
    naming every changed file), or warn and go on when ``allow_change``. A run folder without
    a record (written by an older palbert) resumes with a warning."""
    path = Path(run_dir) / DATA_FILE
    if not path.is_file():
        print(
            f"palbert train: warning: {run_dir} records no fingerprint of its data (an older "
            "palbert wrote it); resuming without checking that the data is the same",
            file=sys.stderr,
        )
        return
    try:
        before = json.loads(path.read_text("utf-8"))["tasks"]
        ok = isinstance(before, dict) and all(
            isinstance(splits, dict) and all(isinstance(f, dict) for f in splits.values())
            for splits in before.values()
        )
        changes = data_changes(before, data) if ok else None
    except (ValueError, KeyError, TypeError):
        changes = None
    if changes == []:
        return
    what = "; ".join(changes) if changes else f"{path} is damaged"
    if allow_change:
        print(
            f"palbert train: warning: resuming {run_dir} without the same data ({ALLOW_FLAG}): {what}",
            file=sys.stderr,
        )
        return
    head = "was trained on other data" if changes else "cannot tell what data it was trained on"
    raise RecipeError(
        f"{run_dir} {head}: {what}. Restore those files, or resume on this data with "
        f"{ALLOW_FLAG} (allow_data_change=True from Python; the run then mixes both)"
    )


def data_changes(before: Mapping[str, Any], now: Mapping[str, dict]) -> list[str]:
    """One phrase per task split whose data differs between two records."""
    changes = []
    for task in sorted(set(before) | set(now)):
        old, new = before.get(task) or {}, now.get(task) or {}
        for split in sorted(set(old) | set(new)):
            a, b = old.get(split), new.get(split)
            where = f"task {task!r} split {split!r}"
            if b is None:
                changes.append(f"{where} is no longer read ({_name(a)})")
            elif a is None:
                changes.append(f"{where} was not read before ({_name(b)})")
            elif _same(a, b):
                continue
            elif "sha256" in b and "sha256" in a:
                size = (
                    b["size"] if a.get("size") == b["size"] else f"{a.get('size')} -> {b['size']}"
                )
                changes.append(f"{where}: {b['file']} changed ({size} bytes, other content)")
            else:
                changes.append(f"{where}: {_name(a)} -> {_name(b)}")
    return changes


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """The same data: the same bytes wherever the file now lies, or the same dataset."""
    if "sha256" in a and "sha256" in b:
        return a["sha256"] == b["sha256"] and a.get("size") == b.get("size")
    return dict(a) == dict(b)


def _name(fp: Any) -> str:
    if not isinstance(fp, Mapping):
        return "?"
    if "file" in fp:
        return str(fp["file"])
    return f"dataset {fp.get('dataset')}" + (f"/{fp['config']}" if fp.get("config") else "")


__all__ = [
    "ALLOW_FLAG",
    "DATA_FILE",
    "check_same_data",
    "data_changes",
    "fingerprint_data",
    "write_data_record",
]
