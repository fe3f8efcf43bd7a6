"""A run's log: ``metrics.jsonl`` (one JSON object per line), TensorBoard events in ``tb/``,
written by rank 0 only. On resume, what was logged after the checkpoint is dropped, so the
log reads as one uninterrupted run. ``read_metrics`` reads it back::

    evals = [r for r in read_metrics(run_dir) if r["type"] == "eval"]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from palbert.files import append_line, atomic_write_text

# -- logging ------------------------------------------------------------------------------


class RunLog:
    """metrics.jsonl, TensorBoard and the console, written by rank 0 only."""

    def __init__(self, run_dir: Path | None, resume_step: int | None = None) -> None:
        self.run_dir = run_dir
        self.writer = None
        if run_dir is None:
            return
        path = run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            # drop what was logged after the checkpoint we resume from
            keep = []
            for line in path.read_bytes().splitlines():
                try:
                    record = parse_record(line)
                except ValueError:  # blank, partial or damaged lines go too
                    continue
                if record.get("step", 0) <= resume_step:
                    keep.append(line.decode("utf-8") + "\n")
            atomic_write_text(path, "".join(keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
            print(
                "palbert train: warning: tensorboard is not installed; no tb/ events",
                file=sys.stderr,
            )

    def write(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        append_line(self.run_dir / "metrics.jsonl", json.dumps(json_safe(record)))
        if self.writer is None:
            return
        step = record.get("step", 0)
        if record["type"] == "train":
            for t, v in record["loss"].items():
                self.writer.add_scalar(f"train/loss/{t}", v, step)
            self.writer.add_scalar("train/lr", record["lr"], step)
            if record.get("examples_per_s"):
                self.writer.add_scalar("train/examples_per_s", record["examples_per_s"], step)
        elif record["type"] == "eval":
            for t, scores in record["scores"].items():
                for m, v in scores.items():
                    self.writer.add_scalar(f"dev/{t}/{m}", v, step)
            self.writer.add_scalar("dev/score", record["score"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null, so the files are strict JSON."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# -- reading it back ----------------------------------------------------------------------


def parse_record(line: bytes) -> dict[str, Any]:
    """One ``metrics.jsonl`` line as its record; a ValueError says why a line is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not a JSON record (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON record ({e.msg})") from None
    if not isinstance(record, dict) or "type" not in record:
        raise ValueError("not a palbert metrics record")
    return record


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's ``metrics.jsonl``, in order. Blank lines are passed over and a
    damaged last line with no newline is taken as a run killed mid-write (each record is one
    write, newline included); any other damaged line is an error naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a palbert run folder?")
    records = []
    raw = path.read_bytes()
    lines = raw.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(line))
        except ValueError as e:
            if i == len(lines) and not raw.endswith(b"\n"):
                break
            raise ValueError(f"{path}:{i}: {e}") from None
    return records


__all__ = ["RunLog", "json_safe", "parse_record", "read_metrics"]
