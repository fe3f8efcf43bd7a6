"""The run folder: its layout and name, its lock, what a killed run leaves in it, finding a
run to resume, and reading a run back (:func:`load_run`).

A run folder, ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>/`` (``-2``, ``-3`` ... appended when
two runs of one name start in the same second)::

    recipe.yaml        the resolved recipe (every default filled in, tasks spelled out)
    data.json          size and sha256 of every data file the run read (a resume checks it)
    last/              resume checkpoint: weights.safetensors, state.safetensors, state.json
    best.safetensors   PalBert state dict at the best dev score: every task_modules.* and
                       heads.* key, plus backbone.* when the backbone was trained
    metrics.jsonl      one JSON object per line: {"type": "train"|"eval"|"error", "step", ...}
    summary.json       final and best dev scores per task, steps, time
    tb/                TensorBoard event files
    COMPLETE           empty, written last when the run finished
    lock               the process id of the process training the run (locked while it does)

Every ``.safetensors`` file of the folder carries a hash in its header, checked whenever it
is read (:mod:`palbert.integrity`): a damaged file is refused, never loaded.

best.safetensors' metadata and last/state.json record the position of the progressive PAL
schedule (:func:`palbert.training.checkpoint.progress_record`); :func:`load_run` restores it
with ``model.set_progress``.

::

    model, tasks, recipe = load_run("checkpoints/quickstart-20260101-120000")
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from palbert.files import atomic_write_text, remove_temporaries
from palbert.integrity import read_sealed, write_sealed
from palbert.model import PalBert
from palbert.recipe import DEFAULT_OUTPUT_DIR, Recipe, load_recipe
from palbert.training.checkpoint import (
    FORMAT,
    FORMAT_KEY,
    PROGRESS_KEYS,
    checkpoint_dir,
    read_state,
    recorded_progress,
    saved_weights,
)
from palbert.training.prepare import build_model, build_tasks

STAMP = "%Y%m%d-%H%M%S"  # the time in a run folder's name, as strftime writes it
# <name>-<STAMP>[-n], the name new_run_dir gives (n: the n-th run of a name in one second)
_FOLDER_NAME = re.compile(r"^(?P<name>.*)-(?P<stamp>\d{8}-\d{6})(?:-(?P<n>\d+))?$")


class RunFolderError(ValueError):
    """No run folder to use (none complete, none to resume, one being trained); the message
    says what exists and what to do."""


# -- naming and finding ---------------------------------------------------------------------


def new_run_dir(recipe: Recipe) -> Path:
    """A new, empty run folder ``<output_dir>/<name>-<STAMP>`` (``-2``, ``-3`` ... when a run
    of that name already started in the same second)."""
    root = Path(recipe.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime(STAMP)
    path = root / f"{recipe.name}-{stamp}"
    n = 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{recipe.name}-{stamp}-{n}"


def _order(run_dir: Path) -> tuple[str, int]:
    """Where a run folder sorts among others, oldest first: by the time in its name, then by
    its ``-n``; a folder not named by :func:`new_run_dir` sorts first."""
    m = _FOLDER_NAME.match(run_dir.name)
    return (m["stamp"], int(m["n"] or 1)) if m else ("", 0)


def _recipe_name(run_dir: Path) -> str | None:
    m = _FOLDER_NAME.match(run_dir.name)
    return m["name"] if m else None


def _folders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []


def is_complete(run_dir: Path) -> bool:
    """Whether the run finished: ``COMPLETE`` is written last, after summary.json."""
    return (run_dir / "COMPLETE").is_file()


def mark_complete(run_dir: Path) -> None:
    atomic_write_text(run_dir / "COMPLETE", "")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run folder that can be read back (it has best.safetensors)."""
    p = Path(path)
    return p.is_dir() and (p / "best.safetensors").is_file()


def complete_runs(root: str | Path = DEFAULT_OUTPUT_DIR) -> list[Path]:
    """Complete run folders under ``root``, oldest first (by the time in their name, then by
    when they completed)."""
    runs = [p for p in _folders(Path(root)) if is_complete(p)]
    return sorted(runs, key=lambda p: (*_order(p), (p / "COMPLETE").stat().st_mtime))


def newest_run(root: str | Path = DEFAULT_OUTPUT_DIR) -> Path:
    """The newest complete run under ``root``; an error that says what exists otherwise."""
    runs = complete_runs(root)
    if not runs:
        root = Path(root)
        partial = sorted(p.name for p in _folders(root))
        extra = f" (incomplete: {', '.join(partial)})" if partial else ""
        raise RunFolderError(
            f"no complete run under {root}/{extra}; train one with `palbert train RECIPE` or "
            "name a run folder"
        )
    return runs[-1]


def find_resumable(recipe: Recipe) -> Path:
    """The newest unfinished run of this recipe's name that has a checkpoint."""
    root = Path(recipe.output_dir)
    runs = [
        p
        for p in _folders(root)
        if _recipe_name(p) == recipe.name and not is_complete(p) and checkpoint_dir(p / "last")
    ]
    if not runs:
        raise RunFolderError(f"no unfinished run of {recipe.name!r} with a checkpoint under {root}")
    return max(runs, key=_order)


def to_resume(recipe: Recipe, resume: str | Path | bool | None) -> Path | None:
    """The run folder that ``resume`` names, if it can be resumed (None: a new run)."""
    if not resume:
        return None
    run_dir = Path(resume) if not isinstance(resume, bool) else find_resumable(recipe)
    if not checkpoint_dir(run_dir / "last"):
        raise RunFolderError(f"{run_dir} has no checkpoint to resume from (last/ is missing)")
    if is_complete(run_dir):
        raise RunFolderError(f"{run_dir} is complete (it has COMPLETE); there is nothing to resume")
    return run_dir


# -- while a run trains ---------------------------------------------------------------------


def hold(run_dir: Path) -> IO[str] | None:
    """Lock the run folder for this process (an advisory ``flock`` on ``run_dir/lock``, let go
    when the process ends, even by ``kill -9``), so that a second writer is refused with the
    process id of the first. None where the system has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    # O_NOFOLLOW: a symlink planted at lock is refused, not truncated through (issue 23)
    fd = os.open(run_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    fh = os.fdopen(fd, "r+", encoding="utf-8")  # held open until the run ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise RunFolderError(
            f"{run_dir} is being trained by process {holder}; wait for it or stop it first"
        ) from None
    # the lock file itself, not a renamed copy, so written in place: it holds only the pid
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def clean_leftovers(run_dir: Path) -> None:
    """Remove the temporary files and folders that a killed run left behind (the swap's
    ``.last.tmp-*``, the atomic writes' ``.*.tmp``), and ``.last.old`` once ``last/`` holds a
    checkpoint (until then it is the last good one)."""
    remove_temporaries(run_dir)
    old = run_dir / ".last.old"
    if old.is_dir() and checkpoint_dir(run_dir / "last") != old:
        shutil.rmtree(old, ignore_errors=True)


def save_best(run_dir: Path, model: PalBert, record: dict[str, Any]) -> None:
    """Write ``best.safetensors``: the weights a checkpoint keeps, ``record`` (step, epoch,
    score, the progressive schedule's position) in its metadata, as :func:`load_run` reads
    them."""
    meta = {**record, "format": "palbert-run", FORMAT_KEY: FORMAT}
    meta = {k: str(v) for k, v in meta.items()}
    write_sealed(run_dir / "best.safetensors", saved_weights(model), meta)


# -- reading a run back -------------------------------------------------------------------


def load_run(run_dir: str | Path, which: str = "best") -> tuple[PalBert, dict[str, Any], Recipe]:
    """Rebuild a run's model from its recipe.yaml and load its weights (safetensors only).

    ``which``: "best" (best.safetensors) or "last" (the resume checkpoint's weights).
    Returns (model in eval mode, tasks by name, recipe); the model holds every task's spec,
    so it can predict::

        model, tasks, recipe = load_run("checkpoints/quickstart-20260101-120000")
        model.predict("sst", ["a gripping film"])
    """
    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    data_dir = Path(recipe.data_dir) if recipe.data_dir else None
    tasks = build_tasks(recipe, data_dir)
    model = build_model(recipe, tasks)
    if which == "best":
        path = run_dir / "best.safetensors"
    elif which == "last":
        path = (checkpoint_dir(run_dir / "last") or run_dir / "last") / "weights.safetensors"
    else:
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    weights, meta = read_sealed(path)  # IntegrityError (a ValueError) naming a damaged file
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"{path} has weights the model lacks: {unexpected[:5]}")
    record = meta if which == "best" else read_state(path.parent)
    progress = recorded_progress(record)
    if progress is not None:
        model.set_progress(*progress)
    elif any(c.progressive is not None for c in model.task_configs.values()):
        raise ValueError(
            f"{path}: the run has a progressive PAL schedule but the file does not record its "
            f"position ({', '.join(PROGRESS_KEYS)}); it was written by an older palbert"
        )
    model.eval()
    return model, tasks, recipe


__all__ = [
    "STAMP",
    "RunFolderError",
    "clean_leftovers",
    "complete_runs",
    "find_resumable",
    "hold",
    "is_complete",
    "is_run_dir",
    "load_run",
    "mark_complete",
    "new_run_dir",
    "newest_run",
    "save_best",
    "to_resume",
]
