"""The run folder's name, and finding runs by it: the newest complete run (export, eval,
predict) and the newest resumable run of a recipe (``palbert train --resume``)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from palbert.training.runfolder import (
    RunFolderError,
    complete_runs,
    find_resumable,
    new_run_dir,
    newest_run,
)


def _run(root: Path, name: str, complete: bool = False, checkpoint: bool = False) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if checkpoint:
        (path / "last").mkdir()
        (path / "last" / "state.json").write_text("{}")
    if complete:
        (path / "COMPLETE").write_text("")
    return path


def test_runs_started_in_one_second_get_numbered_and_sort_in_order(tmp_path):
    recipe = SimpleNamespace(name="sst", output_dir=str(tmp_path))
    folders = [new_run_dir(recipe) for _ in range(11)]
    assert len({f.name for f in folders}) == 11
    for f in folders:
        (f / "COMPLETE").write_text("")
    # the newest is the 11th run, although "-11" sorts before "-2" as text; a second that
    # turned between two calls starts its own count, which sorts after as well
    assert complete_runs(tmp_path)[-1] == folders[-1]
    assert newest_run(tmp_path) == folders[-1]


def test_the_newest_complete_run(tmp_path):
    _run(tmp_path, "a-20260101-120000", complete=True)
    time.sleep(0.01)
    b = _run(tmp_path, "b-20250101-120000", complete=True)  # completed later, started earlier
    _run(tmp_path, "c-20270101-120000")  # not complete
    assert newest_run(tmp_path) == tmp_path / "a-20260101-120000"
    assert complete_runs(tmp_path) == [b, tmp_path / "a-20260101-120000"]
    with pytest.raises(RunFolderError, match=r"no complete run under .*incomplete: x-1"):
        newest_run(_run(tmp_path / "other", "x-1").parent)
    with pytest.raises(RunFolderError, match="no complete run under"):
        newest_run(tmp_path / "missing")


def test_resume_finds_the_newest_unfinished_run_of_that_recipe_only(tmp_path):
    sst = SimpleNamespace(name="sst", output_dir=str(tmp_path))
    _run(tmp_path, "sst-20260101-120000", checkpoint=True)
    newest = _run(tmp_path, "sst-20260101-120000-10", checkpoint=True)
    _run(tmp_path, "sst-20260101-120000-9", checkpoint=True)
    _run(tmp_path, "sst-20270101-120000", checkpoint=True, complete=True)  # finished
    _run(tmp_path, "sst-20280101-120000")  # no checkpoint yet
    _run(tmp_path, "sst-multi-20290101-120000", checkpoint=True)  # another recipe's run
    assert find_resumable(sst) == newest
    with pytest.raises(RunFolderError, match="no unfinished run of 'sst-multi-2'"):
        find_resumable(SimpleNamespace(name="sst-multi-2", output_dir=str(tmp_path)))


def test_a_symlink_planted_at_the_lock_is_refused_not_written_through(tmp_path):
    from palbert.training.runfolder import hold

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "lock").symlink_to(target)
    with pytest.raises(OSError):
        hold(run)
    assert target.read_text() == "keep me\n"
    (run / "lock").unlink()
    fh = hold(run)  # a plain lock file: held, holding our pid
    assert fh is not None and (run / "lock").read_text().strip() == str(os.getpid())
    fh.close()
