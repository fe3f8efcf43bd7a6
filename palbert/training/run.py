"""A training run from a recipe: train, loop, finish.

::

    from palbert.recipe import load_recipe
    from palbert.training.run import train, load_run
    run_dir = train(load_recipe("recipes/quickstart.yaml"))
    model, tasks, recipe = load_run(run_dir)              # the best dev checkpoint

:func:`train` reads in three parts: :func:`palbert.training.prepare.prepare` builds and checks
everything (device and precision, task specs and data, sampler against the tasks, backbone,
tokenizer against the encoder's vocabulary, tokenized batches); only then is the run folder
made (:mod:`palbert.training.runfolder`: its layout, lock and reading it back) or, on resume,
the checkpoint loaded, before anything in the folder changes; then :func:`_loop` trains,
carrying a :class:`~palbert.training.prepare.RunState`. A run that cannot start leaves
nothing behind.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from palbert.files import atomic_write_text
from palbert.inference import evaluate
from palbert.recipe import Recipe, dump_recipe, load_recipe
from palbert.training.checkpoint import (
    progress_record,
    save_checkpoint,
)
from palbert.training.data_record import check_same_data, fingerprint_data, write_data_record
from palbert.training.loop import NonFinite, Trainer, selection_score
from palbert.training.prepare import (
    Run,
    init_distributed,
    prepare,
    resolved,
    restore,
    seed_everything,
)
from palbert.training.runfolder import (
    clean_leftovers,
    hold,
    load_run,
    mark_complete,
    new_run_dir,
    save_best,
    to_resume,
)
from palbert.training.runlog import RunLog, json_safe


class TrainingInterrupted(RuntimeError):
    """Raised by ``train(..., stop_at_step=k)`` right after step k's checkpoint (tests use it
    to stand for a killed process)."""


# -- the run ------------------------------------------------------------------------------


def train(
    recipe: Recipe,
    resume: str | Path | bool | None = None,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    allow_data_change: bool = False,
) -> Path:
    """Train a recipe; return its run folder.

    ``resume``: a run folder, or True for the newest unfinished run of this recipe. The
    resumed run follows the folder's recipe.yaml with ``overrides`` (``key.sub=value``)
    applied on top; recipe.yaml is rewritten only once the checkpoint has loaded, so a
    refused resume leaves the folder as it was.
    A resume on data other than the run recorded in data.json is refused unless
    ``allow_data_change`` (:mod:`palbert.training.data_record`).
    ``stop_at_step``: stop as if killed right after step k's checkpoint (for tests).
    """
    rank, world, device = init_distributed(recipe.train.device)
    run_dir = to_resume(recipe, resume)
    if run_dir is not None:
        recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    seed_everything(recipe.train.seed)

    # Every check before anything is written: a run that cannot start leaves nothing behind.
    run = prepare(recipe, device, rank, world)
    resuming = run_dir is not None
    data = fingerprint_data(run.tasks, ("train", recipe.eval.split))
    if resuming:
        check_same_data(run_dir, data, allow_data_change)
        restore(run, run_dir)
    elif run.main:
        run_dir = new_run_dir(recipe)
    lock = hold(run_dir) if run.main else None
    try:
        if run.main and resuming:
            clean_leftovers(run_dir)
        if run.main and (overrides or not resuming):
            text = dump_recipe(resolved(recipe, run.tasks, run.data_dir))
            atomic_write_text(run_dir / "recipe.yaml", text)
        if run.main:
            write_data_record(run_dir, data)
        run.dir = _same_on_every_process(run_dir, world)
        run.log = RunLog(run.dir if run.main else None, run.state.resumed_at)
        if run.main:
            _announce(run, device)
        _loop(run, progress, stop_at_step)
    except NonFinite as err:
        run.log.write({"type": "error", "step": err.at_step, "message": str(err)})
        err.args = (f"{err.args[0]} The last good checkpoint is {run.dir / 'last'}.",)
        raise
    except KeyboardInterrupt as err:  # the command line says how to continue
        err.run_dir = run_dir  # type: ignore[attr-defined]
        raise
    finally:
        if run.log is not None:
            run.log.close()
        if lock is not None:
            lock.close()  # releases the lock
    if world > 1:
        dist.barrier()
    return run.dir


def _same_on_every_process(run_dir: Path | None, world: int) -> Path:
    """Rank 0's run folder, on every process."""
    if world > 1:
        box = [str(run_dir) if run_dir is not None else None]
        dist.broadcast_object_list(box, 0)
        run_dir = Path(box[0])
    assert run_dir is not None
    return run_dir


def _announce(run: Run, device: torch.device) -> None:
    recipe, model, sampler = run.recipe, run.model, run.sampler
    rep = model.parameter_report()
    sizes = zip(model.tasks, sampler.sizes, strict=True)
    print(
        f"palbert: run {run.dir}\n"
        f"  backbone {recipe.backbone.name} ({recipe.backbone.impl}), module "
        f"{recipe.module.kind}, mode {recipe.train.mode}: {rep['trainable']:,} trainable of "
        f"{rep['total']:,} parameters\n"
        f"  tasks {', '.join(f'{n} ({s} batches)' for n, s in sizes)}\n"
        f"  sampler {recipe.sampler.kind}, epoch = {sampler.steps_per_epoch} steps "
        f"({recipe.sampler.epoch}), {run.trainer.total} steps in all; "
        f"{run.trainer.precision} on {device}"
        + (f", {run.world} processes" if run.world > 1 else ""),
        file=sys.stderr,
        flush=True,
    )


# -- the loop -----------------------------------------------------------------------------


def _loop(run: Run, progress: bool, stop_at_step: int | None) -> None:
    """Optimizer steps until the run's length, logging, evaluating and checkpointing."""
    recipe, model, trainer = run.recipe, run.model, run.trainer
    sampler, state = run.sampler, run.state
    t, total, names = recipe.train, trainer.total, model.tasks
    bar = _TrainingBar(
        total=total,
        initial=trainer.step_count,
        disable=not (run.main and progress),
        mininterval=1.0 if sys.stderr.isatty() else 10.0,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    meter = _Meter()
    session_start = _clock()
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)

    while trainer.step_count < total:
        window = sampler.next_window()
        # The schedule this step trains under; best.safetensors and last/ record it, so a
        # loaded model has exactly the PALs that were active.
        state.progress = (trainer.step_count, sampler.epoch)
        model.set_progress(*state.progress)
        res = trainer.step([(names[i], run.streams[names[i]].next()) for i in window])
        step = trainer.step_count
        state.examples += res.examples
        meter.add(res)
        bar.update(1)
        tasks_now = "+".join(dict.fromkeys(names[i] for i in window))
        loss = sum(res.losses.values())
        bar.set_postfix_str(f"{tasks_now} loss {loss:.3f} lr {res.lr:.2e}", refresh=False)
        if run.main and (step % t.log_every == 0 or step == total):
            run.log.write(meter.record(step, sampler.epoch, res, trainer))

        paused = _clock()  # evaluation and checkpoints stay out of the training rate
        evaluate_now = run.dev and _eval_due(recipe, step, total, sampler.epoch_done)
        save_now = step == total or _save_due(recipe, step, sampler.epoch_done)
        if evaluate_now or save_now:  # nothing non-finite is evaluated or saved
            trainer.check_weights()
        if run.main and evaluate_now:
            bar.write(_evaluate(run, step))
        if run.main and save_now:
            extra = {
                "sampler": sampler.state_dict(),
                "streams": {n: s.state_dict() for n, s in run.streams.items()},
                **state.saved(_clock() - session_start),
            }
            save_checkpoint(run.dir / "last", model, trainer, extra)
        _leave_out(bar, meter, _clock() - paused)
        if stop_at_step is not None and step >= stop_at_step:
            bar.close()
            raise TrainingInterrupted(f"stopped after step {step} (stop_at_step)")
    bar.close()
    if run.main:
        _finish(run, _clock() - session_start)


def _clock() -> float:
    return time.perf_counter()


def _eval_due(recipe: Recipe, step: int, total: int, epoch_done: bool) -> bool:
    every = recipe.eval.every
    if step == total:
        return True
    if every == "epoch":
        return epoch_done
    return step % every == 0


def _save_due(recipe: Recipe, step: int, epoch_done: bool) -> bool:
    """A resume checkpoint every ``save_every`` steps, else at each evaluation (the last
    step always saves)."""
    if recipe.train.save_every:
        return step % recipe.train.save_every == 0
    return _eval_due(recipe, step, -1, epoch_done)


class _Meter:
    """Losses, examples and seconds of training since the last train record."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {}
        self.examples = 0
        self.start = _clock()

    def add(self, res: Any) -> None:
        self.examples += res.examples
        for task, v in res.losses.items():
            self.losses.setdefault(task, []).append(v)

    def record(self, step: int, epoch: int, res: Any, trainer: Trainer) -> dict[str, Any]:
        """The train record of the interval, which starts a new one."""
        now = _clock()
        rec = {
            "type": "train",
            "step": step,
            "epoch": epoch,
            "loss": {k: float(np.mean(v)) for k, v in self.losses.items()},
            "lr": res.lr,
            "examples_per_s": self.examples / max(now - self.start, 1e-9),
            "skipped_steps": trainer.skipped_steps,
        }
        if res.grad_norm is not None:
            rec["grad_norm"] = res.grad_norm
        if trainer.device.type == "cuda":
            rec["peak_cuda_memory"] = torch.cuda.max_memory_allocated(trainer.device)
        self.losses, self.examples, self.start = {}, 0, now
        return rec


class _TrainingBar(tqdm):
    """The progress bar, its elapsed time and rate counting training steps only.

    tqdm has no public way to pause its clock; its documented way to change what the bar
    shows is overriding ``format_dict`` (its README's ``TqdmExtraFormat``), so the seconds
    spent outside training steps are taken off there. The rate is then the mean over the
    training time: tqdm's smoothed rate would count each pause in the interval around it.
    """

    paused = 0.0  # seconds spent outside training steps (evaluation, checkpoints)

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["elapsed"] = max(0.0, d["elapsed"] - self.paused)
        d["rate"] = None  # tqdm then shows (n - initial) / elapsed
        return d


def _leave_out(bar: _TrainingBar, meter: _Meter, seconds: float) -> None:
    """Leave ``seconds`` spent outside training steps out of the bar's rate and elapsed time
    and out of the logged examples_per_s."""
    meter.start += seconds
    bar.paused += seconds


def dev_scores(run: Run) -> dict[str, dict[str, float]]:
    """Every task's metrics on the dev split: the one place training evaluates."""
    recipe = run.recipe
    return evaluate(
        run.model,
        {name: run.tasks[name] for name in run.dev},
        recipe.eval.split,
        recipe.train.eval_batch_size,
        run.trainer.device,
        run.trainer.precision,
        on_error={e.name: e.on_error for e in recipe.tasks},
    )


def _evaluate(run: Run, step: int) -> str:
    """Evaluate on dev, log it, keep best.safetensors; return the line for the console."""
    scores = dev_scores(run)
    score = selection_score(scores, run.tasks, run.recipe.eval.metric)
    if not np.isfinite(score):  # e.g. Pearson of constant predictions
        score = float("-inf")
    state, sampler = run.state, run.sampler
    state.final = {"step": step, "score": score, "scores": scores}
    epoch = sampler.epoch + (1 if sampler.epoch_done else 0)
    run.log.write({"type": "eval", "step": step, "epoch": epoch, "scores": scores, "score": score})
    if state.best is None or score > state.best["score"]:
        state.best = dict(state.final)
        # total_steps: export tells "step k of n" of an unfinished run
        record = {"step": step, "epoch": sampler.epoch, "score": score}
        record["total_steps"] = run.trainer.total
        save_best(run.dir, run.model, record | progress_record(state.progress))
    primary = " ".join(f"{n} {s[run.tasks[n].spec.primary_metric]:.3f}" for n, s in scores.items())
    best = f"best {state.best['score']:.4f} at {state.best['step']}"
    return f"step {step}: dev {primary} | score {score:.4f} ({best})"


def _finish(run: Run, session_seconds: float) -> None:
    """summary.json, then COMPLETE."""
    trainer, sampler, state = run.trainer, run.sampler, run.state
    summary = {
        "recipe": run.recipe.name,
        "steps": trainer.step_count,
        "epochs": sampler.epoch + (1 if sampler.epoch_done else 0),
        "examples": state.examples,
        "time_s": round(state.elapsed + session_seconds, 1),
        "skipped_steps": trainer.skipped_steps,
        "final": state.final,
        "best": state.best,
        "selection_metric": run.recipe.eval.metric,
    }
    if trainer.device.type == "cuda":
        summary["peak_cuda_memory"] = torch.cuda.max_memory_allocated(trainer.device)
    atomic_write_text(run.dir / "summary.json", json.dumps(json_safe(summary), indent=1))
    mark_complete(run.dir)


__all__ = ["TrainingInterrupted", "dev_scores", "load_run", "train"]
