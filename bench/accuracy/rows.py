"""The rows of the accuracy table and every setting in which they differ, in one place.

Every row starts from ``recipes/quickstart.yaml`` (backbone, tasks, heads, batch size,
max_length, optimizer, schedule, seed) and changes only what is written here; its
learning rates are today's (``TODAY``), the one it sweeps at its choice: the quickstart *is*
the ``pal-full-annealed`` row at its chosen rate, and follows that choice without moving the
other rows. The budget is
the same for every row: ``budget`` micro-batches of ``train.batch_size`` rows in all. The
tasks' shares are the plan of ``PLAN_ROW``: the micro-batches per task that palbert's
proportional sampler draws (a pure function of the seed and the tasks' sizes), so each task
sees the same examples in every row (within a few percent for the shared rows).

How each row spends the budget:

- one task per optimizer step (PAL, adapter, low-rank rows): ``budget`` optimizer steps
  (the annealed row draws its own shares: that is what annealing changes);
- ``shared``/``shared-pcgrad``: every step holds one micro-batch of every task (round-robin
  over micro-batches, ``grad_accum`` = number of tasks), the losses summed with equal
  weights; ``ceil(budget / T)`` steps with per-task batch sizes in proportion to the plan's
  shares (summing to ``T * batch_size``);
- ``separate``: one run per task, as many steps as the plan gives the task, each run with
  its own schedule;
- ``peft-lora``/``adapterhub``: one adapter + head per task trained alone on the frozen
  encoder, replaying the task's steps of the plan (see ``per_task.py``).

Equal-effort tuning (issue 22): every row sweeps its one main learning rate over
``SWEEP_TRIALS`` values, today's among them (``Row.sweep``), on a validation split carved from
the training files (``run.py sweep``); the best validation mean is the row's choice, which
``run.py ROW`` / ``all --seed S`` then use. Dev is never read to choose.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BASE_RECIPE = ROOT / "recipes" / "quickstart.yaml"
TASKS = ("sst", "quora", "sts")  # + cfimdb with --cfimdb
# Tasks the quickstart leaves out, with the task entry ``--cfimdb`` adds to every row.
OPTIONAL_TASKS = {"cfimdb": {"name": "cfimdb", "head": {"type": "linear", "pooling": "mean"}}}

# Micro-batches of 32 in all: the quickstart's 600 steps (14 minutes alone on 2 CPU
# cores); the ten rows take about 2.5 hours.
DEFAULT_BUDGET = 600
# The multi-task row whose task plan sets every row's micro-batches per task.
PLAN_ROW = "pal-frozen"
# Trials of every row's learning-rate sweep: the same number for every row (equal effort).
SWEEP_TRIALS = 3


# The encoder and task-module learning rates every row ran at before any sweep (the v0.1
# quickstart's). Every row runs at these but for the one it sweeps, which runs at its choice.
# Fixed here, not read from the quickstart, which follows `pal-full-annealed`'s choice
# (issue 22): so the quickstart moves without moving the other rows.
TODAY = {"optimizer.lr": 5e-5, "optimizer.task_lr": 2e-4}


@dataclass(frozen=True)
class Sweep:
    """The one learning rate a row tunes (a dotted recipe key) and the values it tries,
    today's (``TODAY``) among them."""

    param: str
    values: tuple[float, ...]


# Rows that fine-tune the encoder tune the encoder lr: today's 5e-5, halved and doubled.
ENCODER_LR = Sweep("optimizer.lr", (2.5e-5, 5e-5, 1e-4))
# Frozen-encoder rows tune the task-module lr: today's 2e-4 (chosen for PALs on a trained
# encoder) and about 3x and 10x, where LoRA and adapters are usually run.
MODULE_LR = Sweep("optimizer.task_lr", (2e-4, 6e-4, 2e-3))


@dataclass(frozen=True)
class Row:
    """One row: how it runs (``runner``) and its settings on top of the base recipe."""

    name: str
    runner: str  # "palbert" (one multi-task run), "separate", "per_task" (PEFT / AdapterHub)
    title: str
    recipe: dict[str, Any] = field(default_factory=dict)  # deep-merged into the quickstart
    method: dict[str, Any] = field(default_factory=dict)  # the per-task method's settings
    plan_from: str | None = None  # per_task rows: the row whose task plan they replay
    annealed_epochs: int | None = None  # sampler epochs within the budget (annealed rows)
    sweep: Sweep = ENCODER_LR  # the learning rate tuned on the validation split


# the quickstart's annealed sampler replaced (its fixed 200-step epochs included)
PROPORTIONAL = {"kind": "proportional", "epoch": "sum", "steps_per_epoch": None}
ONE_TASK_PER_STEP = {"sampler": {**PROPORTIONAL, "per": "step"}}
# per_task rows: the plan_from row's steps replayed on a frozen encoder (see per_task.py)
REPLAYED = {"train": {"mode": "frozen"}, **ONE_TASK_PER_STEP}
SHARED = {
    "module": {"kind": "none"},
    "train": {"mode": "full"},  # grad_accum and per-task batch sizes set from the budget
    "sampler": {**PROPORTIONAL, "kind": "round_robin", "per": "micro_batch"},
}

ROWS: dict[str, Row] = {
    r.name: r
    for r in [
        Row(
            "pal-full",
            "palbert",
            "palbert PALs, encoder fine-tuned (proportional sampling)",
            {"module": {"kind": "pal"}, "train": {"mode": "full"}, **ONE_TASK_PER_STEP},
        ),
        Row(
            "pal-full-annealed",
            "palbert",
            "palbert PALs, encoder fine-tuned (annealed sampling): the quickstart",
            {"module": {"kind": "pal"}, "train": {"mode": "full"}},
            # alpha 1.0, 0.6, 0.2 over three equal thirds of the budget (with one epoch the
            # annealed sampler is the proportional one)
            annealed_epochs=3,
        ),
        Row(
            "pal-frozen",
            "palbert",
            "palbert PALs, frozen encoder",
            {"module": {"kind": "pal"}, "train": {"mode": "frozen"}, **ONE_TASK_PER_STEP},
            sweep=MODULE_LR,
        ),
        Row(
            "shared",
            "palbert",
            "shared encoder + heads, losses summed (equal weights)",
            SHARED,
        ),
        Row(
            "shared-pcgrad",
            "palbert",
            "shared encoder + heads, losses summed, PCGrad",
            {**SHARED, "train": {"mode": "full", "pcgrad": True}},
        ),
        Row(
            "separate",
            "separate",
            "separately fine-tuned models, one per task",
            {"module": {"kind": "none"}, "train": {"mode": "full"}, **ONE_TASK_PER_STEP},
        ),
        Row(
            "peft-lora",
            "per_task",
            "Hugging Face PEFT LoRA (r=8, query/value), one adapter per task, frozen encoder",
            REPLAYED,
            method={
                "library": "peft",
                "r": 8,
                "lora_alpha": 16,
                "lora_dropout": 0.1,
                "target_modules": ["query", "value"],
            },
            plan_from="pal-frozen",
            sweep=MODULE_LR,
        ),
        Row(
            "palbert-adapters",
            "palbert",
            "palbert Houlsby adapters, frozen encoder",
            {"module": {"kind": "adapter"}, "train": {"mode": "frozen"}, **ONE_TASK_PER_STEP},
            sweep=MODULE_LR,
        ),
        Row(
            "palbert-low-rank",
            "palbert",
            "palbert low-rank layers, frozen encoder",
            {"module": {"kind": "low_rank"}, "train": {"mode": "frozen"}, **ONE_TASK_PER_STEP},
            sweep=MODULE_LR,
        ),
        Row(
            "adapterhub",
            "per_task",
            "AdapterHub `adapters` Houlsby adapters (double_seq_bn), frozen encoder",
            REPLAYED,
            # the bottleneck of palbert's adapters for MiniLM (round(64 H / 768) = 32,
            # i.e. reduction factor 384 / 32 = 12), so the two adapter rows differ only by
            # library; AdapterHub's other Houlsby defaults are kept
            method={"library": "adapters", "config": "double_seq_bn", "reduction_factor": 12},
            plan_from="pal-frozen",
            sweep=MODULE_LR,
        ),
    ]
}


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings merged key by key (a copy)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def get_path(raw: dict[str, Any], key: str) -> Any:
    """The value at a dotted key (``optimizer.lr``) of a recipe as plain data."""
    for part in key.split("."):
        raw = raw[part]
    return raw


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at a dotted key of a recipe as plain data (in place)."""
    *parents, last = key.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
    raw[last] = value


def result_lr(result: dict[str, Any]) -> float | None:
    """The swept learning rate a row's result JSON ran with: its ``tuning`` record, or (for
    results from before the sweep) the value in the resolved recipe it saved."""
    if "tuning" in result:
        return result["tuning"]["value"]
    row = ROWS.get(result.get("row", ""))
    settings = result.get("settings") or {}
    recipe = settings.get("recipe") or next(iter(settings.get("recipes", {}).values()), None)
    if row is None or recipe is None:
        return None
    return get_path(recipe, row.sweep.param)


def at_rates(raw: dict[str, Any], row: Row, lr: float | None) -> dict[str, Any]:
    """``raw`` (a recipe as data) at the rates a row trains at, in place: today's
    (``TODAY``), the row's swept one at ``lr`` where given."""
    for key, value in TODAY.items():
        set_path(raw, key, value)
    if lr is not None:
        set_path(raw, row.sweep.param, lr)
    return raw


def today_lr(row: Row) -> float:
    """The row's swept learning rate before any sweep (one of its sweep values)."""
    return TODAY[row.sweep.param]


def choice_path(root: Path) -> Path:
    """Where the sweep's choices go: ``results/sweep/choice.json``."""
    return root / "sweep" / "choice.json"


def choices(root: Path) -> dict[str, dict[str, Any]]:
    """Each chosen row's entry in ``choice.json`` (its ``param``, ``chosen`` value, ...);
    empty before any row is chosen."""
    path = choice_path(root)
    return json.loads(path.read_text())["rows"] if path.is_file() else {}


def trial_file(name: str, value: float) -> str:
    """A sweep trial's JSON under ``results/sweep/``: ``ROW-lrVALUE.json``."""
    return f"{name}-lr{value:g}.json"


def get_row(name: str) -> Row:
    if name not in ROWS:
        raise SystemExit(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
    return ROWS[name]
