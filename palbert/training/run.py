"""A training run from a recipe, and the run folder it leaves.

::

    from palbert.recipe import load_recipe
    from palbert.training.run import train, load_run
    run_dir = train(load_recipe("recipes/quickstart.yaml"))
    model, tasks, recipe = load_run(run_dir)              # the best dev checkpoint

The run folder, ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>/``::

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
schedule (``progress_step``, ``progress_epoch``: the step and epoch the saved weights last
trained under); :func:`load_run` restores it with ``model.set_progress``.

:func:`train` reads in three parts: :func:`prepare` builds and checks everything (device and
precision, task specs and data, sampler against the tasks, backbone, tokenizer against the
encoder's vocabulary, tokenized batches); only then is the run folder made (or, on resume,
the checkpoint loaded, before anything in the folder changes); then :func:`_loop` trains,
carrying a :class:`RunState`. A run that cannot start leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist

from palbert.files import append_line, atomic_write_text, remove_temporaries
from palbert.inference import evaluate, resolve_precision
from palbert.integrity import read_sealed, write_sealed
from palbert.model import PalBert
from palbert.recipe import (
    Recipe,
    RecipeError,
    dump_recipe,
    load_recipe,
    resolve_data_dir,
)
from palbert.tasks.batching import Order, Shard
from palbert.training.checkpoint import (
    FORMAT,
    FORMAT_KEY,
    checkpoint_dir,
    load_checkpoint,
    read_state,
    save_checkpoint,
    saved_weights,
)
from palbert.training.data_record import check_same_data, fingerprint_data, write_data_record
from palbert.training.loop import NonFinite, TaskStream, Trainer, selection_score
from palbert.training.samplers import TaskSampler, draws_per_epoch, expected_epochs


class TrainingInterrupted(RuntimeError):
    """Raised by ``train(..., stop_at_step=k)`` right after step k's checkpoint (tests use it
    to stand for a killed process)."""


# -- processes and devices ----------------------------------------------------------------


def init_distributed(device_pref: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) the process group is
    set up here: nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_pref)
    except RuntimeError:
        raise RecipeError(
            f"train.device {device_pref!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(
            f"train.device {device_pref!r}: no CUDA device is available here; "
            "use train.device=auto or cpu"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local % torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- building -----------------------------------------------------------------------------


def build_tasks(recipe: Recipe, data_dir: Path | None) -> dict[str, Any]:
    """The recipe's tasks bound to the data folder (no data read yet)."""
    from palbert.tasks import build_task

    return {e.name: build_task(e.spec, data_dir=data_dir) for e in recipe.tasks}


def build_model(recipe: Recipe, tasks: dict[str, Any], model: PalBert | None = None) -> PalBert:
    """Backbone from the recipe (unless given), each task's module, head (drawn from the
    recipe's seed) and resolved spec: labels, and the max_length that training, evaluation
    and export all use (the task's own, else ``train.max_length``)."""
    if model is None:
        model = PalBert.from_pretrained(
            recipe.backbone.name, impl=recipe.backbone.impl, module=recipe.module
        )
    torch.manual_seed(recipe.train.seed)
    for entry in recipe.tasks:
        task = tasks[entry.name]
        head = task.build_head(model.hidden_size)
        spec = task.resolved_spec(recipe.train.max_length)
        model.add_task(entry.name, head, module=entry.module, spec=spec)
    model.set_train_mode(recipe.train.mode)
    return model


def resolved(recipe: Recipe, tasks: dict[str, Any], data_dir: Path) -> Recipe:
    """The recipe with its data folder absolute and every task spelled out in full."""
    import copy

    from palbert.tasks import DataError, TaskSpec

    r = copy.deepcopy(recipe)
    r.data_dir = str(data_dir)
    for e in r.tasks:
        full = tasks[e.name].to_dict()
        try:  # keep the spelled-out form only if it reads back as the same task
            if TaskSpec.from_dict(full) == tasks[e.name].spec:
                e.spec = full
        except DataError:
            pass
    return r


def _new_run_dir(recipe: Recipe) -> Path:
    root = Path(recipe.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{recipe.name}-{stamp}"
    n = 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = root / f"{recipe.name}-{stamp}-{n}"


def _hold(run_dir: Path) -> IO[str] | None:
    """Lock the run folder for this process (an advisory ``flock`` on ``run_dir/lock``, let go
    when the process ends, even by ``kill -9``), so that a second writer is refused with the
    process id of the first. None where the system has no ``flock``."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fh = open(run_dir / "lock", "a+", encoding="utf-8")  # noqa: SIM115 (held until the end)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise RecipeError(
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


def find_resumable(recipe: Recipe) -> Path:
    """The newest unfinished run of this recipe's name that has a checkpoint."""
    root = Path(recipe.output_dir)
    runs = sorted(root.glob(f"{recipe.name}-*"), key=lambda p: p.name, reverse=True)
    for run in runs:
        if run.is_dir() and not (run / "COMPLETE").exists() and checkpoint_dir(run / "last"):
            return run
    raise RecipeError(f"no unfinished run of {recipe.name!r} with a checkpoint under {root}")


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
            keep = [  # damaged lines go too (undecodable bytes make them invalid JSON)
                line
                for line in path.read_text("utf-8", errors="replace").splitlines()
                if _record(line) is not None and _record(line).get("step", 0) <= resume_step
            ]
            atomic_write_text(path, "".join(x + "\n" for x in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
            print("palbert: tensorboard is not installed; no tb/ events", file=sys.stderr)

    def write(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        append_line(self.run_dir / "metrics.jsonl", json.dumps(_json_safe(record)))
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


# -- the run ------------------------------------------------------------------------------


@dataclass
class RunState:
    """Where a run stands: what it carries from step to step and, through last/state.json,
    across a resume."""

    best: dict[str, Any] | None = None  # {"step", "score", "scores"} of the best evaluation
    final: dict[str, Any] | None = None  # the latest evaluation
    elapsed: float = 0.0  # seconds spent by earlier sessions
    examples: int = 0  # training examples seen
    progress: tuple[int, int] = (0, 0)  # (step, epoch) the progressive schedule trained under
    resumed_at: int | None = None  # the step this session resumed from

    def saved(self, session_seconds: float) -> dict[str, Any]:
        """The JSON a checkpoint keeps (see :meth:`restored`)."""
        return {
            "best": self.best,
            "final": self.final,
            "elapsed": self.elapsed + session_seconds,
            "examples": self.examples,
            **progress_record(self.progress),
        }

    @classmethod
    def restored(cls, saved: dict[str, Any], step: int) -> RunState:
        return cls(
            best=saved["best"],
            final=saved.get("final"),  # absent in checkpoints of older versions
            elapsed=saved["elapsed"],
            examples=saved["examples"],
            progress=recorded_progress(saved) or (0, 0),
            resumed_at=step,
        )


@dataclass
class Run:
    """A run's parts, built and checked by :func:`prepare` before anything is written."""

    recipe: Recipe
    model: PalBert
    tasks: dict[str, Any]
    trainer: Trainer
    sampler: TaskSampler
    streams: dict[str, TaskStream]
    dev: dict[str, Any]  # dev batches by task
    data_dir: Path
    world: int = 1
    main: bool = True  # rank 0: the process that writes the files
    state: RunState = field(default_factory=RunState)
    dir: Path | None = None
    log: RunLog | None = None


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
    run_dir = _to_resume(recipe, resume)
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
        run_dir = _new_run_dir(recipe)
    lock = _hold(run_dir) if run.main else None
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


def _to_resume(recipe: Recipe, resume: str | Path | bool | None) -> Path | None:
    """The run folder that ``resume`` names, if it can be resumed (None: a new run)."""
    if not resume:
        return None
    run_dir = Path(resume) if not isinstance(resume, bool) else find_resumable(recipe)
    if not checkpoint_dir(run_dir / "last"):
        raise RecipeError(f"{run_dir} has no checkpoint to resume from (last/ is missing)")
    if (run_dir / "COMPLETE").exists():
        raise RecipeError(f"{run_dir} is complete (it has COMPLETE); there is nothing to resume")
    return run_dir


def prepare(recipe: Recipe, device: torch.device, rank: int = 0, world: int = 1) -> Run:
    """Build a run and check everything that can fail on the user's setup, writing nothing:
    precision on this device, the task specs and data folder, the sampler against the tasks,
    the backbone (whose unreachable-hub message says what to do), the tokenizer against the
    encoder's vocabulary, max_length against its positions, and every task's data (read
    and tokenized)."""
    t = recipe.train
    resolve_precision(t.precision, device)
    data_dir = resolve_data_dir(recipe)
    tasks = build_tasks(recipe, data_dir)
    check_sampler(recipe)
    model = build_model(recipe, tasks)
    tokenizer = model.tokenizer  # checked against the encoder's vocabulary
    check_lengths(model, tokenizer)
    train_batches, dev = _batches(recipe, model, tasks, tokenizer, rank, world)
    model.gradient_checkpointing(t.gradient_checkpointing)
    model.to(device)
    if world > 1:  # every process starts from rank 0's weights
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    sizes = [global_batches(train_batches[n], world) for n in model.tasks]
    sampler, total = run_sampler(recipe, sizes)
    trainer = Trainer(
        model,
        recipe.optimizer,
        recipe.schedule,
        t,
        tasks=tasks,
        total_steps=total,
        mixed=recipe.sampler.mixed,
    )
    streams = {n: TaskStream(train_batches[n]) for n in model.tasks}
    return Run(recipe, model, tasks, trainer, sampler, streams, dev, data_dir, world, rank == 0)


def check_sampler(recipe: Recipe) -> None:
    """Refuse a ``sampler:`` section whose mixed batches would do nothing: they merge the
    tasks of one optimizer step into one forward pass."""
    s, where = recipe.sampler, Path(recipe.source).name if recipe.source else "recipe"
    if not s.mixed:
        return
    if s.per == "step" or recipe.train.grad_accum < 2:
        raise RecipeError(
            f"{where}: sampler.mixed merges the micro-batches of different tasks in one "
            "optimizer step, but with sampler.per: step or train.grad_accum 1 every step has "
            "one task; set sampler.per: micro_batch and train.grad_accum >= 2, or mixed: false"
        )


def check_lengths(model: PalBert, tokenizer: Any) -> None:
    """Refuse a task whose max_length (capped by the tokenizer's, as tokenizing does) cannot
    work: longer than the encoder's position embeddings (its long rows would fail mid-run),
    or too short to hold the tokenizer's special tokens and one token of text (the
    tokenizer then truncates nothing, and long rows fail mid-run too)."""
    positions = getattr(model.backbone_info.config, "max_position_embeddings", None)
    cap = getattr(tokenizer, "model_max_length", None)
    for name, spec in model.specs.items():
        n = spec.max_length
        if isinstance(cap, int) and 0 < cap < n:
            n = cap
        if positions and n > positions:
            raise RecipeError(
                f"task {name!r}: max_length {n} is longer than the encoder's {positions} "
                f"positions; set train.max_length (or the task's max_length) to at most "
                f"{positions}"
            )
        special = tokenizer.num_special_tokens_to_add(pair=spec.encoding == "cross")
        if n <= special:
            raise RecipeError(
                f"task {name!r}: max_length {n} leaves no room for text after the "
                f"{special} special tokens of each input; set train.max_length (or the "
                f"task's max_length) to at least {special + 1}"
            )


def _batches(recipe, model, tasks, tokenizer, rank, world):
    """Each task's training batches (this process's share) and dev batches, tokenized at the
    max_length of the model's spec, the length evaluation and export use too."""
    t = recipe.train
    train_batches, dev = {}, {}
    for e in recipe.tasks:
        task, max_length = tasks[e.name], model.specs[e.name].max_length
        train_batches[e.name] = task.batches(
            "train",
            tokenizer,
            task.spec.batch_size or t.batch_size,
            max_length,
            Order(shuffle=True, seed=t.seed, group_by_length=t.group_by_length),
            Shard(rank, world, drop_last=world > 1),
            on_error=e.on_error,
        )
        if recipe.eval.split in task.splits():
            dev[e.name] = task.batches(
                recipe.eval.split,
                tokenizer,
                batch_size=t.eval_batch_size,
                max_length=max_length,
                on_error=e.on_error,
            )
    return train_batches, dev


def run_sampler(recipe: Recipe, sizes: list[int]) -> tuple[TaskSampler, int]:
    """The run's one sampler and its length in optimizer steps (``max_steps``, else
    ``epochs`` epochs of the sampler's epoch policy)."""
    s, t = recipe.sampler, recipe.train
    steps_per_epoch = draws_per_epoch(sizes, s.epoch, s.steps_per_epoch, t.grad_accum)
    steps_per_epoch //= t.grad_accum
    if t.max_steps is not None:
        total = t.max_steps
        epochs = expected_epochs(total, steps_per_epoch)
    else:
        epochs = t.epochs or 1
        total = epochs * steps_per_epoch
    sampler = TaskSampler(s, sizes, seed=t.seed, epochs=epochs, grad_accum=t.grad_accum)
    return sampler, total


def restore(run: Run, run_dir: Path) -> None:
    """Continue ``run`` from the last checkpoint in ``run_dir``. A checkpoint that does not
    fit (another model, sampler or data) is refused before anything in the folder changes."""
    saved = load_checkpoint(run_dir / "last", run.model, run.trainer)
    if not 0 < run.trainer.step_count <= run.trainer.total:
        raise ValueError(
            f"the checkpoint in {run_dir} is at step {run.trainer.step_count}, outside the "
            f"run's {run.trainer.total} steps"
        )
    run.sampler.load_state_dict(saved["sampler"])
    for name, stream in run.streams.items():
        stream.load_state_dict(saved["streams"][name])
    run.state = RunState.restored(saved, run.trainer.step_count)


def _same_on_every_process(run_dir: Path | None, world: int) -> Path:
    """Rank 0's run folder, on every process."""
    if world > 1:
        box = [str(run_dir) if run_dir is not None else None]
        dist.broadcast_object_list(box, 0)
        run_dir = Path(box[0])
    assert run_dir is not None
    return run_dir


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null, so the files are strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def global_batches(loader: Any, world: int) -> int:
    """A task's batches per pass, the same number on every process."""
    if hasattr(loader, "data") and hasattr(loader, "batch_size"):
        n, g = len(loader.data), loader.batch_size * world
        return max(1, n // g if world > 1 else -(-n // g))
    return len(loader)


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
    from tqdm import tqdm

    recipe, model, trainer = run.recipe, run.model, run.trainer
    sampler, state = run.sampler, run.state
    t, total, names = recipe.train, trainer.total, model.tasks
    bar = tqdm(
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


def _leave_out(bar: Any, meter: _Meter, seconds: float) -> None:
    """Leave ``seconds`` spent outside training steps out of the bar's rate and elapsed time
    and out of the logged examples_per_s."""
    meter.start += seconds
    if not bar.disable:
        bar.start_t += seconds
        bar.last_print_t += seconds


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
        meta = {"step": step, "epoch": sampler.epoch, "score": score, "format": "palbert-run"}
        meta["total_steps"] = run.trainer.total  # export tells "step k of n" of unfinished runs
        meta |= progress_record(state.progress) | {FORMAT_KEY: FORMAT}
        meta = {k: str(v) for k, v in meta.items()}
        write_sealed(run.dir / "best.safetensors", saved_weights(run.model), meta)
    primary = " ".join(f"{n} {s[run.tasks[n].primary_metric]:.3f}" for n, s in scores.items())
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
    atomic_write_text(run.dir / "summary.json", json.dumps(_json_safe(summary), indent=1))
    atomic_write_text(run.dir / "COMPLETE", "")


# -- the progressive schedule's position ----------------------------------------------------

PROGRESS_KEYS = ("progress_step", "progress_epoch")


def progress_record(progress: tuple[int, int]) -> dict[str, int]:
    """How best.safetensors' metadata and last/state.json record the (step, epoch) that the
    progressive schedule trained the saved weights under."""
    return dict(zip(PROGRESS_KEYS, progress, strict=True))


def recorded_progress(record: dict[str, Any]) -> tuple[int, int] | None:
    """The (step, epoch) of :func:`progress_record`, or None where none was recorded."""
    if not all(k in record for k in PROGRESS_KEYS):
        return None
    return int(record["progress_step"]), int(record["progress_epoch"])


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


def _record(line: str) -> dict | None:
    """One metrics.jsonl record, or None for a blank, partial (a run killed mid-write) or
    damaged line."""
    try:
        record = json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


__all__ = [
    "Run",
    "RunState",
    "TrainingInterrupted",
    "build_model",
    "build_tasks",
    "check_lengths",
    "check_sampler",
    "global_batches",
    "load_run",
    "prepare",
    "run_sampler",
    "train",
]
