"""Everything a run needs before its folder exists, built and checked: process and device,
tasks and their data, the model, sampler and trainer (:func:`prepare`), and, on resume, the
checkpoint loaded into them (:func:`restore`). Nothing here writes a file, so a run that
cannot start leaves nothing behind.

::

    run = prepare(recipe, device)        # a Run: model, tasks, trainer, sampler, streams, dev
    restore(run, run_dir)                # continue from run_dir/last (refused if it misfits)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from palbert.devices import parse_device
from palbert.inference import resolve_precision
from palbert.model import PalBert
from palbert.recipe import Recipe, RecipeError, resolve_data_dir
from palbert.tasks.batching import Order, Shard
from palbert.training.checkpoint import load_checkpoint, progress_record, recorded_progress
from palbert.training.loop import TaskStream, Trainer
from palbert.training.runlog import RunLog
from palbert.training.samplers import TaskSampler, draws_per_epoch, expected_epochs

# -- processes and devices ----------------------------------------------------------------


def init_distributed(device_pref: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device). Under torchrun (WORLD_SIZE > 1) the process group is
    set up here: nccl on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = parse_device(device_pref, "train.device")
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


def global_batches(loader: Any, world: int) -> int:
    """A task's batches per pass, the same number on every process."""
    if hasattr(loader, "data") and hasattr(loader, "batch_size"):
        n, g = len(loader.data), loader.batch_size * world
        return max(1, n // g if world > 1 else -(-n // g))
    return len(loader)


__all__ = [
    "Run",
    "RunState",
    "build_model",
    "build_tasks",
    "check_lengths",
    "check_sampler",
    "global_batches",
    "init_distributed",
    "prepare",
    "resolved",
    "restore",
    "run_sampler",
    "seed_everything",
]
