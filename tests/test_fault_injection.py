"""``kill -9`` a training run at random moments, many times, and resume it each time: it must
end exactly as the same run does uninterrupted (weights, optimizer and RNG states bit for bit,
metrics.jsonl and summary.json record for record), with nothing left behind.

Half of the kills come at a random time; the other half at a random ``fsync`` or rename (the
process SIGKILLs itself just before it), which lands them inside checkpoint swaps and atomic
writes. Each attempt is a forked process (no second import of torch), killed with SIGKILL.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.tiny_run import write_recipe

STEPS = 30  # long enough that a kill at <= 0.3 of a whole run lands before its end, under load
KILLS = 16  # half at a random time, half at a random fsync or rename
SEED = 11
TIME_FIELDS = {"examples_per_s", "time_s", "elapsed"}

pytestmark = [
    pytest.mark.skipif(
        "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (POSIX)"
    ),
    pytest.mark.usefixtures("one_thread", "token_cache"),
]


def _arm(k: int) -> None:
    """SIGKILL this process just before its k-th fsync or rename."""
    calls = [0]

    def trap(real):
        def call(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return call

    os.fsync = trap(os.fsync)
    os.replace = trap(os.replace)


def _child(recipe: str, run: str | None, trap: int | None) -> None:
    torch.set_num_threads(1)
    if trap is not None:
        _arm(trap)
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    train(load_recipe(recipe), resume=run, progress=False)


def resumable(runs: Path) -> Path | None:
    """The run folder with a checkpoint (None before the first one: start afresh)."""
    from palbert.training.checkpoint import checkpoint_dir

    found = (
        [r for r in sorted(runs.glob("*")) if checkpoint_dir(r / "last")] if runs.is_dir() else []
    )
    assert len(found) <= 1, found
    return found[0] if found else None


def attempt(
    recipe: Path, runs: Path, *, after: float | None = None, trap: int | None = None
) -> bool:
    """Train (resuming where there is a checkpoint) in a forked process, SIGKILLed ``after``
    seconds or at its ``trap``-th fsync or rename; whether it was killed."""
    run = resumable(runs)
    args = (str(recipe), str(run) if run else None, trap)
    return killed(_child, args, after, "the training process")


def killed(target, args: tuple, after: float | None, what: str) -> bool:
    """Run ``target(*args)`` in a forked process, SIGKILLed after ``after`` seconds if it is
    still running (a trap in ``args`` may kill it sooner); whether it was killed."""
    p = multiprocessing.get_context("fork").Process(target=target, args=args)
    p.start()
    p.join(after)
    if p.is_alive():
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    assert p.exitcode in (0, -signal.SIGKILL), f"{what} failed ({p.exitcode})"
    return p.exitcode == -signal.SIGKILL


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from palbert.integrity import read_sealed

    return read_sealed(path)[0]


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys(), a.name
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{a.name}: {k}"


def untimed(obj):
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in TIME_FIELDS}
    return obj


def records(run: Path) -> list[dict]:
    return [untimed(json.loads(x)) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_as_an_uninterrupted_run(
    dropout_backbone,
    tiny_setup,
    tmp_path,
    monkeypatch,
):
    from palbert.integrity import metadata

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    _, data = tiny_setup
    common = dict(
        train={"max_steps": STEPS, "save_every": 1, "grad_accum": 2},
        sampler={"kind": "sqrt"},
        eval={"every": 2},  # best.safetensors is written at steps 2 and 4
    )
    ref_recipe = write_recipe(tmp_path / "a", dropout_backbone, data, **common)
    start = time.monotonic()
    assert not attempt(ref_recipe, tmp_path / "a" / "runs")
    full = time.monotonic() - start  # how long a whole attempt takes here, to place kills
    (ref,) = (tmp_path / "a" / "runs").iterdir()

    recipe = write_recipe(tmp_path / "b", dropout_backbone, data, **common)
    runs = tmp_path / "b" / "runs"
    rng = random.Random(SEED)
    killed = 0
    for i in range(KILLS):
        if i % 2:
            killed += attempt(recipe, runs, trap=rng.randint(1, 10))
        else:
            killed += attempt(recipe, runs, after=rng.uniform(0.05, 0.3) * full)
        run = resumable(runs)
        if run is not None and (run / "COMPLETE").exists():
            break
    assert killed >= KILLS // 2, f"only {killed} of {KILLS} attempts were killed"
    if not (run / "COMPLETE").exists():
        assert not attempt(recipe, runs)  # the last resume runs to the end
    assert (run / "COMPLETE").exists()
    # started afresh only while no checkpoint existed: those folders hold no weights
    assert all(not (r / "best.safetensors").exists() for r in runs.iterdir() if r != run)

    same_tensors(ref / "best.safetensors", run / "best.safetensors")
    assert metadata(ref / "best.safetensors") == metadata(run / "best.safetensors")
    for name in ("weights.safetensors", "state.safetensors"):  # + optimizer moments, RNG
        same_tensors(ref / "last" / name, run / "last" / name)
    ref_state = json.loads((ref / "last" / "state.json").read_text())
    assert untimed(ref_state) == untimed(json.loads((run / "last" / "state.json").read_text()))
    assert records(ref) == records(run)  # nothing lost, nothing logged twice
    summary = [untimed(json.loads((r / "summary.json").read_text())) for r in (ref, run)]
    assert summary[0] == summary[1]
    assert not [p.name for p in run.glob(".*")]  # no temporaries, no previous checkpoint


# -- export and predict -------------------------------------------------------------------

CLI_KILLS = 6  # per command: half at a random fsync or rename, half at a random time


def _cli(args: list[str], trap: int | None) -> None:
    torch.set_num_threads(1)
    if trap is not None:
        _arm(trap)
    from palbert.cli import main

    os._exit(main(args))


def command(args: list[str], *, after: float | None = None, trap: int | None = None) -> bool:
    """Run ``palbert ARGS`` in a forked process, SIGKILLed ``after`` seconds or at its
    ``trap``-th fsync or rename; whether it was killed."""
    return killed(_cli, (args, trap), after, f"palbert {args[0]}")


def files(folder: Path) -> dict[str, bytes]:
    """The visible files under ``folder`` (temporaries are hidden), path -> bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["export", "predict"])
def test_kill_9_during_export_or_predict_leaves_whole_files_or_none(
    tiny_setup, tmp_path, monkeypatch, name
):
    """Every file at its final path is whole (byte for byte what an uninterrupted command
    writes) or absent, after any kill; the next command removes the temporaries left."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    backbone, data = tiny_setup
    recipe = write_recipe(tmp_path, backbone, data, train={"max_steps": 2}, eval={"every": 2})
    assert not attempt(recipe, tmp_path / "runs")  # a run that fine-tuned its encoder
    (run,) = (tmp_path / "runs").iterdir()

    def args(out: Path) -> list[str]:
        if name == "export":
            return ["export", str(run), "--task", "all", "--out", str(out)]
        return ["predict", str(run), "--split", "dev", "--out", str(out)]

    start = time.monotonic()
    assert not command(args(tmp_path / "ref"))
    full = time.monotonic() - start
    want = files(tmp_path / "ref")
    assert len(want) >= (6 if name == "export" else 2)  # task files, encoder; predictions

    out = tmp_path / "out"
    rng = random.Random(SEED)
    killed = 0
    for i in range(CLI_KILLS):
        if i % 2:
            killed += command(args(out), trap=rng.randint(1, 12 if name == "export" else 5))
        else:
            killed += command(args(out), after=rng.uniform(0.3, 0.95) * full)
        got = files(out) if out.is_dir() else {}
        assert all(want[k] == v for k, v in got.items()), "a partial file at its final path"
    assert killed >= CLI_KILLS // 2, f"only {killed} of {CLI_KILLS} attempts were killed"
    assert not command(args(out))
    assert files(out) == want
    assert not [str(p) for p in out.rglob(".*")], "temporaries left behind"
