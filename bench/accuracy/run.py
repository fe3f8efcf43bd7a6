"""The accuracy table of issue 9: palbert's rows against the methods users pick instead.

::

    python -m bench.accuracy.run ROW [--budget N] [--seed S] [--cfimdb] [--quick]
    python -m bench.accuracy.run all [--budget N] ...     # every row, each in its own process
    python -m bench.accuracy.run table                    # the README's markdown table
    python -m bench.accuracy.run plot [--out PNG]         # dev mean against trainable/task
    python -m bench.accuracy.run rows                     # each row's settings
    python -m bench.accuracy.run timing                   # seconds per micro-batch, load
    python -m bench.accuracy.run summary                  # per-seed values, mean, sd (JSON)
    python -m bench.accuracy.run sweep [--dry-run]        # every row's lr sweep, then choice
    python -m bench.accuracy.run ROW --tune [--lr X]      # one trial on the validation carve
    python -m bench.accuracy.run add-task [--seed S]      # a task added later, four ways
    python -m bench.accuracy.run add-task-table           # its table (add_task.py)

Rows and their settings: ``bench/accuracy/rows.py`` (on top of ``recipes/quickstart.yaml``).
Every row writes ``bench/accuracy/results/ROW.json``: dev metrics per task and their mean,
trainable parameters per task, stored parameters for all tasks as a multiple of one encoder,
optimizer steps, batches and examples seen per task, wall seconds, the exact settings, seed,
torch version and machine. A row that cannot run writes its reason (``status: failed``).

``--quick`` smoke-tests the harness: the first rows of each data file (copied to
``bench/accuracy/runs/quick-data``) and results in ``bench/accuracy/results-quick/``.
Real data: ``--data DIR``, else ``$PALBERT_DATA_DIR``, else ``../shared/data/cs224n``.

Seeds: seed 0 writes ``results/ROW.json``, seed S ``results/seed-S/ROW.json``; ``table`` shows
mean +- sample standard deviation over the seeds it finds. Tuning: ``--tune`` trains on 90% of
each training file and evaluates on the other 10% (``carve``, a fixed seed; the dev files are
never read) and writes ``results/sweep/ROW-lrX.json``; ``sweep`` runs every row's
``SWEEP_TRIALS`` values (rows.py) and writes ``results/sweep/choice.json``, whose choice every
later run of the row uses (recorded in its JSON's ``tuning``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.accuracy import add_task, report
from bench.accuracy.rows import (
    BASE_RECIPE,
    DEFAULT_BUDGET,
    OPTIONAL_TASKS,
    PLAN_ROW,
    ROOT,
    ROWS,
    SWEEP_TRIALS,
    TASKS,
    Row,
    at_rates,
    choice_path,
    choices,
    deep_merge,
    get_path,
    get_row,
    result_lr,
    today_lr,
    trial_file,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_RESULTS = HERE / "results-quick"
RUNS = HERE / "runs"
ADAPTERS_VENV = HERE / ".venv-adapters"
TORCH_PIN = "torch==2.13.0"
QUICK_ROWS = (256, 64)  # train and dev rows per task in --quick
# The validation split of --tune: this share of each training file's rows, drawn with this
# seed (fixed: every row and every trial tunes on the same rows).
CARVE_FRACTION = 0.1
CARVE_SEED = 0
PEFT_NOTE = (
    "The encoder is frozen and each task's adapter and head are disjoint from the other "
    "tasks', so training each task alone on exactly the batches and global steps (learning-"
    "rate factors) it gets in the multi-task plan equals training them together: parameters "
    "of tasks absent from a step get no gradient, hence no AdamW update or decay."
)


@dataclass
class Context:
    budget: int
    seed: int
    tasks: list[str]
    data_dir: Path
    results: Path
    runs: Path
    quick: bool
    progress: bool
    command: str = ""
    lr: float | None = None  # the row's swept learning rate (None: today's)
    lr_source: str = "not swept: today's value"
    tune: bool = False  # a sweep trial: data_dir is the validation carve, scores not dev


# -- shared pieces ------------------------------------------------------------------------


def row_raw(row: Row, ctx: Context) -> dict[str, Any]:
    """The row's settings on the quickstart at today's learning rates (``rows.TODAY``, not
    the quickstart's), the swept one at ``ctx.lr`` where set."""
    return at_rates(deep_merge(base_raw(ctx), row.recipe), row, ctx.lr)


def base_raw(ctx: Context) -> dict[str, Any]:
    """The quickstart as plain data with the context's tasks, seed, data and output folders,
    and one metrics line per step (the bench counts each task's batches from them)."""
    raw = yaml.safe_load(BASE_RECIPE.read_text())
    by_name = {(e if isinstance(e, str) else e["name"]): e for e in raw["tasks"]}
    by_name.update({k: v for k, v in OPTIONAL_TASKS.items() if k not in by_name})
    missing = [t for t in ctx.tasks if t not in by_name]
    if missing:
        raise SystemExit(f"{BASE_RECIPE}: no task entry for {', '.join(missing)}")
    raw["tasks"] = [by_name[t] for t in ctx.tasks]
    raw["train"]["seed"] = ctx.seed
    raw["data_dir"] = str(ctx.data_dir)
    raw["output_dir"] = str(ctx.runs)
    raw["train"]["log_every"] = 1
    return raw


def task_sizes(raw: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Each task's training rows, batch size and batches per pass (from the data)."""
    from bench.accuracy.per_task import task_spec
    from palbert.backbones import load_tokenizer
    from palbert.tasks import build_task

    tokenizer = load_tokenizer(raw["backbone"]["name"])
    out = {}
    for e in raw["tasks"]:
        task = build_task(task_spec(e), data_dir=raw["data_dir"])
        on_error = "raise" if isinstance(e, str) else e.get("on_error", "raise")
        max_len = task.spec.max_length or raw["train"]["max_length"]
        rows = len(task.tokenized("train", tokenizer, max_length=max_len, on_error=on_error))
        bs = task.spec.batch_size or raw["train"]["batch_size"]
        out[task.spec.name] = {"rows": rows, "batch_size": bs, "batches": math.ceil(rows / bs)}
    return out


def split(total: int, weights: dict[str, float], minimum: int = 1) -> dict[str, int]:
    """``total`` split in proportion to ``weights`` (largest remainder), each >= minimum."""
    s = sum(weights.values())
    exact = {k: total * w / s for k, w in weights.items()}
    out = {k: max(minimum, math.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True):
        if sum(out.values()) >= total:
            break
        out[k] += 1
    return out


def examples_seen(batches: int, rows: int, batch_size: int) -> int:
    """Rows in the first ``batches`` batches of a stream of shuffled passes (the partial
    batch is the last of each pass)."""
    per_pass = math.ceil(rows / batch_size)
    full, rest = divmod(batches, per_pass)
    return full * rows + rest * batch_size


def machine() -> dict[str, Any]:
    from bench.machine import machine_info

    return machine_info()


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "transformers", "palbert", "peft", "adapters"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# -- palbert rows -------------------------------------------------------------------------


def palbert_raw(row: Row, ctx: Context, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The row's recipe as plain data, with the budget applied (see rows.py)."""
    raw = row_raw(row, ctx)
    raw["name"] = row.name
    steps = ctx.budget
    if raw["sampler"].get("per") == "micro_batch":
        # every step one micro-batch per task; batch sizes in proportion to the tasks' rows
        t = len(ctx.tasks)
        steps = max(1, math.ceil(ctx.budget / t))
        raw["train"]["grad_accum"] = t
        bs = split(t * raw["train"]["batch_size"], plan_counts(ctx, sizes))
        raw["tasks"] = [
            {**({"name": e} if isinstance(e, str) else e), "batch_size": bs[n]}
            for e, n in zip(raw["tasks"], ctx.tasks, strict=True)
        ]
    if row.annealed_epochs:
        raw["sampler"]["steps_per_epoch"] = max(1, math.ceil(steps / row.annealed_epochs))
    raw["train"]["max_steps"] = steps
    raw["eval"]["every"] = steps
    return raw


def count_batches(run_dir: Path, raw: dict[str, Any]) -> tuple[dict[str, int], float]:
    """Micro-batches each task trained on, from the run's per-step metrics.jsonl lines, and
    the seconds spent in training steps (each line's rows / examples_per_s; rows taken as
    the batch sizes, so a pass's last, partial batch counts as full)."""
    from palbert.training.runlog import read_metrics

    accum = raw["train"].get("grad_accum", 1)
    per = raw["sampler"].get("per", "step")
    sizes = {
        (e if isinstance(e, str) else e["name"]): (
            e.get("batch_size") if isinstance(e, dict) else None
        )
        or raw["train"]["batch_size"]
        for e in raw["tasks"]
    }
    counts: dict[str, int] = {}
    steps, seconds = 0, 0.0
    for rec in read_metrics(run_dir):
        if rec["type"] != "train":
            continue
        steps += 1
        names = list(rec["loss"])
        if per == "step":
            (task,) = names  # one task per optimizer step
            counts[task] = counts.get(task, 0) + accum
            rows = accum * sizes[task]
        else:  # round-robin over micro-batches with grad_accum = tasks: each task once
            if len(names) != accum:
                raise RuntimeError(f"{run_dir}: step {rec['step']} holds tasks {names}")
            for task in names:
                counts[task] = counts.get(task, 0) + 1
            rows = sum(sizes[t] for t in names)
        if rec.get("examples_per_s"):
            seconds += rows / rec["examples_per_s"]
    if steps != raw["train"]["max_steps"]:
        raise RuntimeError(
            f"{run_dir}/metrics.jsonl has {steps} step records, expected "
            f"{raw['train']['max_steps']} (train.log_every must be 1)"
        )
    return counts, seconds


def train_palbert(raw: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """One palbert run; its dev scores, parameter report and batches per task."""
    from palbert.recipe import recipe_from_dict
    from palbert.training.run import train

    recipe = recipe_from_dict(raw)
    t0 = time.perf_counter()
    run_dir = train(recipe, progress=ctx.progress)
    return run_record(run_dir, raw, time.perf_counter() - t0)


def run_record(run_dir: Path, raw: dict[str, Any], wall: float) -> dict[str, Any]:
    """A finished palbert run's dev scores, parameter report and batches per task."""
    from palbert.training.run import load_run

    summary = json.loads((run_dir / "summary.json").read_text())
    model, tasks, recipe = load_run(run_dir)
    batches, step_s = count_batches(run_dir, raw)
    return {
        "run_dir": str(run_dir),
        "dev": summary["final"]["scores"],
        "primary": {n: tasks[n].spec.primary_metric for n in tasks},
        "report": model.parameter_report(),
        "batches": batches,
        "step_s": step_s,
        "steps": summary["steps"],
        "train_time_s": summary["time_s"],
        "wall_s": wall,
        "recipe": recipe.to_dict(),
    }


def run_palbert_row(row: Row, ctx: Context, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    raw = palbert_raw(row, ctx, sizes)
    r = train_palbert(raw, ctx)
    rep = r["report"]
    full = raw["train"]["mode"] == "full"
    bs = {
        (e if isinstance(e, str) else e["name"]): (
            e.get("batch_size") if isinstance(e, dict) else None
        )
        or raw["train"]["batch_size"]
        for e in raw["tasks"]
    }
    trainable = {
        t: (rep["backbone"] if full else 0) + rep["tasks"][t]["module"] + rep["tasks"][t]["head"]
        for t in ctx.tasks
    }
    return {
        "dev": r["dev"],
        "primary_metric": r["primary"],
        "params": {
            "encoder": rep["backbone"],
            "trainable_per_task": trainable,
            "module_per_task": {t: rep["tasks"][t]["module"] for t in ctx.tasks},
            "head_per_task": {t: rep["tasks"][t]["head"] for t in ctx.tasks},
            "stored": rep["backbone"] + rep["modules"],
            "stored_with_heads": rep["total"],
            "stored_multiple": rep["multiple"],
            "stored_multiple_with_heads": rep["multiple_with_heads"],
        },
        "steps": r["steps"],
        "batches_per_task": r["batches"],
        "examples_per_task": {
            t: examples_seen(r["batches"].get(t, 0), sizes[t]["rows"], bs[t]) for t in ctx.tasks
        },
        "train_time_s": r["train_time_s"],
        "train_step_s": round(r["step_s"], 1),
        "steps_per_s": r["steps"] / r["step_s"] if r["step_s"] else None,
        "runs": [r["run_dir"]],
        "settings": {"recipe": r["recipe"]},
    }


def run_separate_row(row: Row, ctx: Context, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    """One full fine-tuning run per task, the budget split by the tasks' batches per pass."""
    steps = {t: max(1, n) for t, n in plan_counts(ctx, sizes).items()}
    base = row_raw(row, ctx)
    dev, primary, params, batches, runs, recipes = {}, {}, {}, {}, [], {}
    train_s = step_s = 0.0
    encoder = heads = 0
    for t in ctx.tasks:
        raw = deep_merge(base, {})
        raw["tasks"] = [e for e in base["tasks"] if (e if isinstance(e, str) else e["name"]) == t]
        raw["name"] = f"{row.name}-{t}"
        raw["train"]["max_steps"] = steps[t]
        raw["eval"]["every"] = steps[t]
        r = train_palbert(raw, ctx)
        rep = r["report"]
        dev[t], primary[t] = r["dev"][t], r["primary"][t]
        encoder = rep["backbone"]
        head = rep["tasks"][t]["head"]
        heads += head
        params[t] = rep["backbone"] + rep["tasks"][t]["module"] + head
        batches[t] = r["batches"][t]
        train_s += r["train_time_s"]
        step_s += r["step_s"]
        runs.append(r["run_dir"])
        recipes[t] = r["recipe"]
    n = len(ctx.tasks)
    return {
        "dev": dev,
        "primary_metric": primary,
        "params": {
            "encoder": encoder,
            "trainable_per_task": params,
            "head_per_task": {t: params[t] - encoder for t in ctx.tasks},
            "stored": n * encoder,
            "stored_with_heads": n * encoder + heads,
            "stored_multiple": float(n),
            "stored_multiple_with_heads": (n * encoder + heads) / encoder,
        },
        "steps": sum(steps.values()),
        "steps_per_task": steps,
        "batches_per_task": batches,
        "examples_per_task": {
            t: examples_seen(batches[t], sizes[t]["rows"], sizes[t]["batch_size"])
            for t in ctx.tasks
        },
        "train_time_s": round(train_s, 1),
        "train_step_s": round(step_s, 1),
        "steps_per_s": sum(steps.values()) / step_s if step_s else None,
        "runs": runs,
        "settings": {"recipes": recipes},
    }


# -- per-task adapters from other libraries -----------------------------------------------


def task_plan(
    ctx: Context, sizes: dict[str, dict[str, int]], row_name: str = PLAN_ROW
) -> list[str]:
    """The task of every optimizer step of the multi-task row ``row_name``: palbert's
    sampler (a pure function of kind, sizes and seed) drawn for the whole budget."""

    from palbert.recipe import recipe_from_dict
    from palbert.training.samplers import TaskSampler

    # the plan is the sampler's alone: the swept learning rate plays no part in it
    ref = recipe_from_dict(palbert_raw(get_row(row_name), dataclasses.replace(ctx, lr=None), sizes))
    s, tr = ref.sampler, ref.train
    if s.per != "step":
        raise SystemExit(f"the plan row {row_name!r} must draw one task per optimizer step")
    names = list(ctx.tasks)
    batches = [sizes[n]["batches"] for n in names]

    def make_sampler(epochs: int) -> TaskSampler:
        return TaskSampler(s, batches, seed=tr.seed, epochs=epochs, grad_accum=tr.grad_accum)

    # as palbert's run: epochs = the sampler epochs max_steps spans (annealing needs them)
    sampler = make_sampler(max(1, math.ceil(tr.max_steps / make_sampler(1).steps_per_epoch)))
    plan = []
    for _ in range(tr.max_steps):
        window = sampler.next_window()
        plan.append(names[window[0]])
    return plan


def plan_counts(ctx: Context, sizes: dict[str, dict[str, int]]) -> dict[str, int]:
    """Micro-batches per task in the multi-task plan: the budget of every row's tasks."""
    plan = task_plan(ctx, sizes)
    return {t: plan.count(t) for t in ctx.tasks}


def adapters_python() -> Path:
    return ADAPTERS_VENV / "bin" / "python"


def ensure_adapters_venv() -> tuple[bool, str]:
    """Make bench/accuracy/.venv-adapters with AdapterHub's `adapters` (it pins its own
    transformers) and palbert; (ok, pip's output tail)."""
    py = adapters_python()
    marker = ADAPTERS_VENV / "palbert-bench-ok"
    # the marker names the checkout palbert was installed from (an editable install)
    if marker.is_file() and py.is_file() and f"palbert from {ROOT}\n" in marker.read_text():
        return True, marker.read_text()
    log = []
    cmds = [
        [sys.executable, "-m", "venv", str(ADAPTERS_VENV)],
        [str(py), "-m", "pip", "install", TORCH_PIN, "adapters", "-e", f"{ROOT}[minilm]"],
    ]
    for cmd in cmds:
        print("bench:", " ".join(cmd), file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        log.append(f"$ {' '.join(cmd)}\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
        if p.returncode != 0:
            return False, "\n".join(log)[-6000:]
    check = subprocess.run(
        [
            str(py),
            "-c",
            "import adapters, palbert, transformers; print(adapters.__version__, "
            "transformers.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        return False, f"import check failed:\n{check.stderr[-4000:]}"
    marker.write_text(f"adapters, transformers: {check.stdout.strip()}\npalbert from {ROOT}\n")
    return True, marker.read_text()


def run_per_task_row(row: Row, ctx: Context, sizes: dict[str, dict[str, int]]) -> dict[str, Any]:
    raw = row_raw(row, ctx)
    raw["name"] = row.name
    plan = task_plan(ctx, sizes, row.plan_from or PLAN_ROW)
    raw["train"]["max_steps"] = len(plan)
    from palbert.recipe import recipe_from_dict

    raw = recipe_from_dict(raw).to_dict()  # validated, every default filled in
    config = {
        "recipe": raw,
        "data_dir": str(ctx.data_dir),
        "method": row.method,
        "plan": plan,
        "progress": ctx.progress,
    }
    if row.method["library"] == "peft":
        from bench.accuracy import per_task

        res = per_task.run(config)
        env = None
    else:
        ok, log = ensure_adapters_venv()
        if not ok:
            raise RowFailed(f"could not make {ADAPTERS_VENV} with `adapters`:\n{log}")
        ctx.runs.mkdir(parents=True, exist_ok=True)
        cfg_path = ctx.runs / f"{row.name}-config.json"
        out_path = ctx.runs / f"{row.name}-result.json"
        cfg_path.write_text(json.dumps(config))
        out_path.unlink(missing_ok=True)
        p = subprocess.run(
            [str(adapters_python()), str(HERE / "per_task.py"), str(cfg_path), str(out_path)],
            cwd=ROOT,
            stderr=None if ctx.progress else subprocess.PIPE,
            text=True,
        )
        if p.returncode != 0:
            raise RowFailed(f"the AdapterHub run failed:\n{(p.stderr or '')[-4000:]}")
        res = json.loads(out_path.read_text())
        env = {
            "venv": str(ADAPTERS_VENV),
            "torch": res["torch"],
            "transformers": res["transformers"],
        }
    enc = res["encoder_parameters"]
    per = res["tasks"]
    adapters_total = sum(v["adapter_parameters"] for v in per.values())
    heads_total = sum(v["head_parameters"] for v in per.values())
    return {
        "dev": {t: per[t]["dev"] for t in ctx.tasks},
        "primary_metric": {t: per[t]["primary_metric"] for t in ctx.tasks},
        "params": {
            "encoder": enc,
            "trainable_per_task": {
                t: per[t]["adapter_parameters"] + per[t]["head_parameters"] for t in ctx.tasks
            },
            "module_per_task": {t: per[t]["adapter_parameters"] for t in ctx.tasks},
            "head_per_task": {t: per[t]["head_parameters"] for t in ctx.tasks},
            "stored": enc + adapters_total,
            "stored_with_heads": enc + adapters_total + heads_total,
            "stored_multiple": (enc + adapters_total) / enc,
            "stored_multiple_with_heads": (enc + adapters_total + heads_total) / enc,
        },
        "steps": len(plan),
        "batches_per_task": {t: per[t]["batches"] for t in ctx.tasks},
        "examples_per_task": {t: per[t]["examples"] for t in ctx.tasks},
        "train_time_s": round(sum(per[t]["train_s"] + per[t]["eval_s"] for t in ctx.tasks), 1),
        "train_step_s": round(sum(per[t]["train_s"] for t in ctx.tasks), 1),
        "steps_per_s": len(plan) / max(1e-9, sum(per[t]["train_s"] for t in ctx.tasks)),
        "per_task": per,
        "library_version": res.get("library_version"),
        "environment": env,
        "note": PEFT_NOTE,
        "settings": {
            "recipe": raw,
            "method": row.method,
            "plan_from": row.plan_from,
            "plan_counts": {t: plan.count(t) for t in ctx.tasks},
        },
    }


class RowFailed(RuntimeError):
    """A row could not run; its message goes into the row's JSON."""


RUNNERS = {"palbert": run_palbert_row, "separate": run_separate_row, "per_task": run_per_task_row}


def run_row(name: str, ctx: Context) -> dict[str, Any]:
    """Run one row and write its JSON (also when it fails, with the reason)."""
    import torch

    row = get_row(name)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    head = {
        "row": row.name,
        "title": row.title,
        "tasks": list(ctx.tasks),
        "budget": {"micro_batches": ctx.budget, "batch_size": base_raw(ctx)["train"]["batch_size"]},
        "seed": ctx.seed,
        "quick": ctx.quick,
        "data_dir": str(ctx.data_dir),
        "started": started,
        "machine": machine(),
        "versions": versions(),
        "torch": torch.__version__,
        "row_settings": asdict(row),
        "tuning": {
            "param": row.sweep.param,
            "value": get_path(row_raw(row, ctx), row.sweep.param),
            "values": list(row.sweep.values),
            "source": ctx.lr_source,
        },
        "split": "validation" if ctx.tune else "dev",
        # a sweep trial's validation rows: this share of each training file, this seed
        **(
            {"validation_split": {"fraction": CARVE_FRACTION, "seed": CARVE_SEED}}
            if ctx.tune
            else {}
        ),
        "command": ctx.command,
    }
    t0, c0 = time.perf_counter(), cpu_seconds()
    path = ctx.results / result_name(row, ctx)
    try:
        sizes = task_sizes(base_raw(ctx))
        body = RUNNERS[row.runner](row, ctx, sizes)
    except Exception as err:  # the JSON says why; the exit code says it failed
        msg = str(err) if isinstance(err, RowFailed) else traceback.format_exc()
        result = {
            **head,
            "status": "failed",
            "error": msg,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        if path.is_file() and json.loads(path.read_text()).get("status") == "ok":
            path = path.parent / "failed" / path.name  # a failed rerun keeps the finished result
        write_json(path, result)
        print(f"bench: row {row.name} FAILED; reason in {path}:\n{msg}", file=sys.stderr)
        return result
    prim = {t: body["dev"][t][body["primary_metric"][t]] for t in ctx.tasks}
    # a sweep trial's scores are on the validation carve: named so, never read as dev
    split = head["split"]
    body[split] = body.pop("dev")
    result = {
        **head,
        "status": "ok",
        **body,
        f"{split}_primary": prim,
        f"{split}_mean": sum(prim.values()) / len(prim),
        "task_sizes": sizes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
        "load_average_at_end": list(os.getloadavg()),
    }
    write_json(path, result)
    print(
        f"bench: {row.name}: {split} {' '.join(f'{t} {v:.4f}' for t, v in prim.items())} "
        f"mean {result[f'{split}_mean']:.4f} ({result['wall_s']:.0f} s) -> {path}",
        file=sys.stderr,
    )
    return result


def result_name(row: Row, ctx: Context) -> str:
    """``ROW.json``; a sweep trial's name carries its learning rate (``ROW-lr0.0002.json``)."""
    if not ctx.tune:
        return f"{row.name}.json"
    return trial_file(row.name, get_path(row_raw(row, ctx), row.sweep.param))


def done(path: Path, ctx: Context, lr: float | None = None) -> bool:
    """A finished result of the same budget, seed, tasks and data (and swept learning rate
    ``lr``, when given) exists at ``path``."""
    if not path.is_file():
        return False
    r = json.loads(path.read_text())
    same_data = r.get("data_dir") == str(ctx.data_dir)
    if ctx.tune:  # the carve is the same rows wherever the checkout (and its runs/) is
        same_data = Path(r.get("data_dir", "")).name == ctx.data_dir.name and r.get(
            "validation_split"
        ) == {"fraction": CARVE_FRACTION, "seed": CARVE_SEED}
    return (
        r.get("status") == "ok"
        and r.get("budget", {}).get("micro_batches") == ctx.budget
        and r.get("seed") == ctx.seed
        and r.get("tasks") == list(ctx.tasks)
        and same_data
        and (lr is None or result_lr(r) == lr)
    )


# -- the learning-rate sweep on a validation split carved from the training files --------


def carve(source: Path, dest: Path, files: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """A validation split carved from each task's training file: ``CARVE_FRACTION`` of its
    rows (drawn with ``CARVE_SEED`` and the file's name) go to ``dest``'s dev file, the rest
    to ``dest``'s train file, header and rows' bytes as they were. ``files``: task -> (train,
    dev) file names. The real dev files are never opened. Returns what was carved."""
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for task, (train, dev) in files.items():
        header, *rows = (source / train).read_bytes().splitlines(keepends=True)
        rows = [r if r.endswith((b"\n", b"\r")) else r + b"\n" for r in rows]
        k = max(1, round(CARVE_FRACTION * len(rows)))
        held = set(random.Random(f"{CARVE_SEED}:{train}").sample(range(len(rows)), k))
        parts = {
            train: [r for i, r in enumerate(rows) if i not in held],
            dev: [r for i, r in enumerate(rows) if i in held],
        }
        for name, part in parts.items():
            data = header + b"".join(part)
            target = dest / name
            if target.is_symlink():
                target.unlink()
            if not target.is_file() or target.read_bytes() != data:
                target.write_bytes(data)
        out[task] = {
            "train_file": str(source / train),
            "train_rows": len(rows) - k,
            "validation_rows": k,
        }
    return out


def task_files(ctx: Context) -> dict[str, tuple[str, str]]:
    """Each task's train and dev file names (relative to the data folder)."""
    from bench.accuracy.per_task import task_spec
    from palbert.tasks import build_task

    out = {}
    for e in base_raw(ctx)["tasks"]:
        task = build_task(task_spec(e), data_dir=ctx.data_dir)
        out[task.spec.name] = (task.spec.files["train"], task.spec.files["dev"])
    return out


def sweep_plan(names: list[str]) -> list[tuple[str, float]]:
    """Every trial of the sweep of rows ``names``: (row, learning rate), the same number for
    every row."""
    plan = []
    for name in names:
        row = get_row(name)
        if len(set(row.sweep.values)) != SWEEP_TRIALS:
            raise SystemExit(
                f"rows.py: row {name!r} sweeps {row.sweep.values}, not {SWEEP_TRIALS} values"
            )
        plan += [(name, v) for v in row.sweep.values]
    return plan


def choose(row: Row, trials: dict[float, dict[str, Any]], default: float) -> dict[str, Any]:
    """The row's choice: the swept value with the best validation mean (today's value on a
    tie). Reads only sweep trials' ``validation_mean``: a result scored on dev is refused."""
    means = {}
    for value in row.sweep.values:
        r = trials.get(value)
        if r is None:
            raise SystemExit(f"sweep of {row.name}: no trial at {row.sweep.param} = {value:g}")
        if r.get("split") != "validation" or "validation_mean" not in r:
            raise SystemExit(
                f"sweep of {row.name}: the trial at {value:g} was not scored on the validation"
                " split (only --tune trials choose; dev never does)"
            )
        if r["status"] != "ok":
            raise SystemExit(f"sweep of {row.name}: the trial at {value:g} failed (see its JSON)")
        if result_lr(r) != value:
            raise SystemExit(
                f"sweep of {row.name}: the trial named {value:g} ran at {result_lr(r)}"
            )
        means[value] = r["validation_mean"]
    chosen = max(row.sweep.values, key=lambda v: (means[v], v == default))
    return {
        "param": row.sweep.param,
        "values": list(row.sweep.values),
        "validation_mean": {f"{v:g}": means[v] for v in row.sweep.values},
        "today": default,
        "chosen": chosen,
        "changed": chosen != default,
    }


def chosen_lr(row: Row, root: Path) -> tuple[float | None, str]:
    """The row's learning rate chosen by the sweep and where it comes from; (None, reason)
    while the row has not been swept (today's, ``rows.TODAY``, is used)."""
    choice = choices(root).get(row.name)
    if choice is None:
        return None, "not swept: today's value"
    path = choice_path(root)
    if choice["param"] != row.sweep.param:
        raise SystemExit(
            f"{path}: row {row.name!r} swept {choice['param']}, rows.py says {row.sweep.param}"
        )
    return choice["chosen"], str(path)


def row_lr(row: Row, root: Path) -> float:
    """The rate a row runs at now: its sweep's choice, else today's."""
    lr = chosen_lr(row, root)[0]
    return lr if lr is not None else today_lr(row)


# -- quick data ---------------------------------------------------------------------------


def quick_data(source: Path, dest: Path, n_train: int | None, n_dev: int) -> Path:
    """The first rows of each CS224N file (header kept), for smoke tests of the harness;
    ``n_train=None`` keeps the whole training files (linked)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(source.glob("*.csv")):
        n = n_train if "-train" in f.name else n_dev
        target = dest / f.name
        if n is None:
            if not target.is_symlink() or target.resolve() != f.resolve():
                target.unlink(missing_ok=True)
                target.symlink_to(f.resolve())
            continue
        if target.is_symlink():
            target.unlink()
        with open(f, encoding="utf-8") as src:
            lines = [line for _, line in zip(range(n + 1), src, strict=False)]
        text = "".join(lines)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return dest


def default_data_dir() -> Path:
    env = os.environ.get("PALBERT_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "cs224n"


# -- command line -------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/accuracy/run.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rows: " + ", ".join(ROWS),
    )
    ap.add_argument(
        "what",
        help="a row name, 'all', 'sweep', 'table', 'summary', 'plot', 'timing', 'rows', "
        "'add-task', 'add-task-table' or 'sweep-table'",
    )
    ap.add_argument(
        "--budget",
        type=int,
        default=None,
        help=f"micro-batches of 32 in all (default {DEFAULT_BUDGET}; 6 with --quick)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--seeds",
        default=None,
        help="all: these seeds, comma-separated (e.g. 0,1,2); seed S > 0 goes to results/seed-S/",
    )
    ap.add_argument("--only", default=None, help="all: only these rows, comma-separated")
    ap.add_argument("--cfimdb", action="store_true", help="add the CFIMDB task")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: the first {QUICK_ROWS[0]} train / {QUICK_ROWS[1]} dev rows",
    )
    ap.add_argument(
        "--dev-rows",
        type=int,
        default=None,
        help="smoke test on the real training data with only the first N dev rows per task",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data", type=Path, default=None, help="the CS224N data folder")
    ap.add_argument("--results", type=Path, default=None, help="where ROW.json files go")
    ap.add_argument(
        "--runs", type=Path, default=None, help="where run folders go (default bench/accuracy/runs)"
    )
    ap.add_argument("--out", type=Path, default=None, help="plot: the PNG to write")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--tune",
        action="store_true",
        help="a sweep trial: train on 90%% of each training file, score the other 10%% "
        "(results/sweep/ROW-lrX.json); dev is never read",
    )
    ap.add_argument(
        "--lr", type=float, default=None, help="--tune: the row's swept learning rate (rows.py)"
    )
    ap.add_argument("--dry-run", action="store_true", help="sweep: list the trials, run none")
    ap.add_argument(
        "--skip-done",
        action="store_true",
        help="skip a row or sweep trial whose JSON finished with the same budget, seed, "
        "tasks, data and learning rate",
    )
    return ap


def seed_results(results: Path, seed: int) -> Path:
    """Where rows of ``seed`` go: ``results/`` for seed 0 (the table's committed JSONs),
    ``results/seed-S/`` for another seed, so a second seed never overwrites the first."""
    return results if seed == 0 else results / f"seed-{seed}"


def forward(argv: list[str], drop: tuple[str, ...], drop_valued: tuple[str, ...]) -> list[str]:
    """``argv`` without the flags ``drop`` and the options ``drop_valued`` (with values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in drop_valued:
            skip = True
        elif a not in drop and not any(a.startswith(f"{d}=") for d in drop_valued):
            out.append(a)
    return out


def child(argv: list[str]) -> int:
    """One row in its own process (a fresh interpreter: rows share no state)."""
    return subprocess.run([sys.executable, "-m", "bench.accuracy.run", *argv], cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    args = parser().parse_args(argv)
    smoke = args.quick or args.dev_rows
    root = args.results or (QUICK_RESULTS if smoke else RESULTS)
    if args.what == "all" and args.seeds:
        # one `all` per seed, each in its own results folder (seed_results)
        rest = forward(argv, (), ("--seeds",))
        codes = [main([*rest, "--seed", s.strip()]) for s in args.seeds.split(",") if s.strip()]
        return max(codes, default=0)
    if args.lr is not None and not args.tune:
        raise SystemExit(
            "--lr goes with --tune: a row's learning rate is chosen on the validation split "
            "(run.py sweep), never on dev"
        )
    tune = args.tune or args.what == "sweep"
    if args.tune and args.what in ("all", "sweep", "add-task"):
        raise SystemExit(f"--tune runs one row; `{args.what}` is not one (sweep runs the trials)")
    results = seed_results(root / "sweep" if tune else root, args.seed)
    if args.what == "table":
        print(report.table(root))
        return 0
    if args.what == "summary":
        print(json.dumps(report.summary(root), indent=1))
        return 0
    if args.what == "plot":
        out = report.plot(root, args.out or root / "accuracy.png")
        print(out)
        return 0
    if args.what == "timing":
        print(report.timing(results))
        return 0
    if args.what == "rows":
        print(report.describe_rows(root))
        return 0
    if args.what == "add-task-table":
        print(add_task.table(root))
        return 0
    if args.what == "sweep-table":
        print(report.sweep_table(root))
        return 0
    names = [n.strip() for n in args.only.split(",")] if args.only else list(ROWS)
    for name in names:
        get_row(name)  # an unknown name stops here, before any run
    if args.dry_run and args.what != "sweep":
        raise SystemExit("--dry-run goes with sweep (it lists the trials); other commands run")
    if args.what == "sweep" and args.dry_run:
        rest = forward(argv, ("sweep", "--dry-run", "--skip-done"), ("--only",))
        plan = sweep_plan(names)
        print(f"{len(plan)} trials, {SWEEP_TRIALS} per row, seed {args.seed}, validation split:")
        for name, lr in plan:
            print(
                f"python -m bench.accuracy.run {name} --tune --lr {lr:g} {' '.join(rest)}".strip()
            )
        return 0
    if args.budget is not None and args.budget < 1:
        raise SystemExit("--budget must be >= 1")
    data = args.data or default_data_dir()
    if not data.is_dir():
        raise SystemExit(f"data folder {data} not found (--data DIR or $PALBERT_DATA_DIR)")
    runs = args.runs or RUNS
    if args.quick:
        data = quick_data(data, runs / "quick-data", *QUICK_ROWS)
        runs = runs / "quick"
    elif args.dev_rows:
        data = quick_data(data, runs / f"dev{args.dev_rows}-data", None, args.dev_rows)
        runs = runs / "smoke"
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    ctx = Context(
        budget=args.budget or (6 if args.quick else DEFAULT_BUDGET),
        seed=args.seed,
        tasks=list(TASKS) + (list(OPTIONAL_TASKS) if args.cfimdb else []),
        data_dir=data.resolve(),
        results=results,
        runs=runs,
        quick=bool(smoke),
        progress=not args.no_progress,
        command="python -m bench.accuracy.run " + " ".join(argv),
    )
    if tune:
        # the validation carve: the run trains on 90% of the training files and is scored
        # on the other 10%; no file under it comes from a dev file
        carved = carve(ctx.data_dir, runs / "validation-data", task_files(ctx))
        ctx = dataclasses.replace(ctx, data_dir=(runs / "validation-data").resolve(), tune=True)
        print(f"bench: validation carve {json.dumps(carved)}", file=sys.stderr)
    if args.what == "sweep":
        return sweep(names, ctx, root, argv, args.skip_done)
    if args.what == "add-task":
        if args.skip_done and add_task.done(ctx, root):
            path = add_task.results_path(root, ctx.seed)
            print(f"bench: {path} done already, skipped", file=sys.stderr)
            return 0
        add_task.run(ctx, root, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        print(add_task.table(root))
        return 0
    if args.what == "all":
        failed = []
        forwarded = forward(argv, ("all", "--skip-done"), ("--only",))
        for name in names:
            if args.skip_done and done(results / f"{name}.json", ctx, row_lr(get_row(name), root)):
                print(f"bench: {name} done already, skipped", file=sys.stderr)
                continue
            if child([name, *forwarded]) != 0:
                failed.append(name)
        print(report.table(root))
        if failed:
            print(f"failed rows: {', '.join(failed)} (reasons in their JSON)", file=sys.stderr)
        return 1 if failed else 0
    row = get_row(args.what)
    if args.tune:
        ctx = dataclasses.replace(
            ctx, lr=args.lr, lr_source="--tune --lr" if args.lr is not None else ctx.lr_source
        )
    else:
        lr, source = chosen_lr(row, root)
        ctx = dataclasses.replace(ctx, lr=lr, lr_source=source)
    path = ctx.results / result_name(row, ctx)
    if args.skip_done and done(path, ctx, ctx.lr if ctx.lr is not None else today_lr(row)):
        print(f"bench: {path.name} done already, skipped", file=sys.stderr)
        return 0
    result = run_row(row.name, ctx)
    return 0 if result["status"] == "ok" else 1


def sweep(names: list[str], ctx: Context, root: Path, argv: list[str], skip_done: bool) -> int:
    """Every trial of the rows' sweeps on the validation carve (each row in its own
    process), then each fully swept row's choice into ``results/sweep/choice.json``."""
    rest = forward(argv, ("sweep", "--skip-done", "--dry-run"), ("--only",))
    failed = []
    for name, lr in sweep_plan(names):
        trial = dataclasses.replace(ctx, lr=lr)
        path = ctx.results / result_name(get_row(name), trial)
        if skip_done and done(path, trial, lr):
            print(f"bench: {path.name} done already, skipped", file=sys.stderr)
            continue
        if child([name, "--tune", "--lr", f"{lr!r}", *rest]) != 0:
            failed.append(f"{name} at {lr:g}")
    path = choice_path(root)
    chosen = choices(root)
    for name in names:
        row = get_row(name)
        files = {
            lr: ctx.results / result_name(row, dataclasses.replace(ctx, lr=lr))
            for lr in row.sweep.values
        }
        # a row is chosen only when every trial finished with this budget, seed, tasks and
        # carve (a trial left from another budget does not count)
        if all(done(f, dataclasses.replace(ctx, lr=lr), lr) for lr, f in files.items()):
            trials = {lr: json.loads(f.read_text()) for lr, f in files.items()}
            chosen[name] = {
                **choose(row, trials, today_lr(row)),
                "seed": ctx.seed,
                "budget": ctx.budget,
                "trials": [str(f) for f in files.values()],
            }
    validation = {"fraction": CARVE_FRACTION, "seed": CARVE_SEED}
    write_json(path, {"rows": chosen, "validation": validation})
    for name in names:
        c = chosen.get(name)
        if c:
            means = ", ".join(f"{v}: {m:.4f}" for v, m in c["validation_mean"].items())
            print(
                f"{name}: {c['param']} {means} -> {c['chosen']:g}"
                + (" (changed)" if c["changed"] else "")
            )
    if failed:
        print(f"failed trials: {', '.join(failed)} (reasons in their JSON)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
