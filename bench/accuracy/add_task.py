"""What a task added later costs (issue 22): its dev score four ways, on the same data.

A deployment grows by training a new task's PAL and head, frozen, on the encoder that an
earlier run fine-tuned and exported (``recipes/add_task.yaml``), so the files already
exported on that encoder stay valid. Each added task is trained here on the same number of
micro-batches as it gets in the multi-task run, four ways:

- ``added``: frozen PAL + head on the exported encoder of a quickstart run that did not
  have the task (``recipes/add_task.yaml``);
- ``multi-task``: trained with the others in one quickstart run (the table's
  ``pal-full-annealed`` row with the task among its tasks);
- ``frozen-stock``: frozen PAL + head on the stock MiniLM (what the encoder knew before);
- ``separate``: the encoder fine-tuned on the task alone, no PAL (a model of its own).

CFIMDB is added to the quickstart's SST+Quora+STS encoder, SST to a Quora+STS one. The
added task's file is exported beside the base run's files; the JSON records the originals'
sha256 before and after, the fingerprints, and ``palbert eval`` of the whole folder, which
must give the added task the score its own run gave.

    python -m bench.accuracy.run add-task [--seed S]   # results/add-task/seed-S.json
    python -m bench.accuracy.run add-task-table        # the table in docs/benchmarks.md
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.accuracy.rows import OPTIONAL_TASKS, ROOT, ROWS, TASKS, at_rates, get_path

if TYPE_CHECKING:  # run.py imports this module
    from bench.accuracy.run import Context

RECIPE = ROOT / "recipes" / "add_task.yaml"
# the added task and the tasks of the encoder it is added to
CASES: dict[str, tuple[str, ...]] = {"cfimdb": ("sst", "quora", "sts"), "sst": ("quora", "sts")}
VARIANTS = ("added", "multi-task", "frozen-stock", "separate")
ORDER = (*TASKS, *OPTIONAL_TASKS)  # tasks in the quickstart's order, so the sampler's draws match


def results_path(root: Path, seed: int) -> Path:
    return root / "add-task" / f"seed-{seed}.json"


# the table row whose chosen learning rate each variant trains at
RATE_ROW = {
    "added": "pal-frozen",
    "multi-task": "pal-full-annealed",
    "frozen-stock": "pal-frozen",
    "separate": "separate",
}


def done(ctx: Context, root: Path) -> bool:
    """A finished measurement of ``ctx``'s seed, budget and data exists, every variant of it
    at the rate its table row has now (chosen by the sweep, or today's)."""
    from bench.accuracy.run import row_lr

    path = results_path(root, ctx.seed)
    if not path.is_file():
        return False
    r = json.loads(path.read_text())
    if (r.get("budget"), r.get("data_dir"), r.get("quick")) != (
        ctx.budget,
        str(ctx.data_dir),
        ctx.quick,
    ):
        return False
    for case in r.get("cases", {}).values():
        for variant, v in case["variants"].items():
            row = ROWS[RATE_ROW[variant]]
            if get_path(v["recipe"], row.sweep.param) != row_lr(row, root):
                return False
    return set(r.get("cases", {})) == set(CASES)


def multi_task_raw(tasks: tuple[str, ...], ctx: Context, root: Path) -> dict[str, Any]:
    """The quickstart (the ``pal-full-annealed`` row, at its chosen lr) on ``tasks``."""
    from bench.accuracy.run import palbert_raw, row_lr

    row = ROWS["pal-full-annealed"]
    tasks = tuple(t for t in ORDER if t in tasks)
    c = dataclasses.replace(ctx, tasks=list(tasks), lr=row_lr(row, root))
    raw = palbert_raw(row, c, {})  # sizes: only the round-robin rows read them
    raw["name"] = "add-task-" + "-".join(tasks)
    raw["output_dir"] = str(ctx.runs / raw["name"])
    return raw


def single_raw(
    task: str, variant: str, backbone: str, steps: int, ctx: Context, root: Path
) -> dict[str, Any]:
    """``recipes/add_task.yaml`` for one task: frozen PAL on ``backbone``, or (``separate``)
    the encoder fine-tuned alone without a PAL; each at its table row's chosen lr."""
    from bench.accuracy.run import base_raw, row_lr

    raw = yaml.safe_load(RECIPE.read_text())
    raw["name"] = f"add-task-{task}-{variant}"
    raw["backbone"]["name"] = backbone
    # the task entry (head) the quickstart and the table's rows use
    raw["tasks"] = base_raw(dataclasses.replace(ctx, tasks=[task]))["tasks"]
    raw["train"].update(max_steps=steps, seed=ctx.seed, log_every=1)
    raw["eval"]["every"] = steps
    raw["data_dir"] = str(ctx.data_dir)
    raw["output_dir"] = str(ctx.runs / raw["name"])
    row = ROWS[RATE_ROW[variant]]
    if variant == "separate":
        raw["train"]["mode"] = "full"
        raw["module"] = {"kind": "none"}
    return at_rates(raw, row, row_lr(row, root))  # the rates the table's row trains at


def run_or_reuse(raw: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The run of ``raw``: a complete run folder with the same resolved recipe if one is
    there (runs are deterministic given the seed), else a new one."""
    from bench.accuracy.run import run_record, train_palbert
    from palbert.recipe import load_recipe, recipe_from_dict
    from palbert.training.runfolder import complete_runs

    want = recipe_from_dict(raw).to_dict()
    for run_dir in reversed(complete_runs(raw["output_dir"])):
        if covers(load_recipe(run_dir / "recipe.yaml").to_dict(), want):
            print(f"bench: {run_dir} done already, reused", file=sys.stderr)
            return run_record(run_dir, raw, None)
    return train_palbert(raw, ctx)


def covers(resolved: Any, wanted: Any) -> bool:
    """Whether a run folder's resolved recipe holds every setting of ``wanted`` (its task
    entries are spelled out there: labels, files and defaults added)."""
    if isinstance(wanted, dict):
        return isinstance(resolved, dict) and all(
            k in resolved and covers(resolved[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list) and wanted and isinstance(wanted[0], dict):
        return (
            isinstance(resolved, list)
            and len(resolved) == len(wanted)
            and all(covers(r, w) for r, w in zip(resolved, wanted, strict=True))
        )
    return resolved == wanted


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def variant_record(r: dict[str, Any], task: str) -> dict[str, Any]:
    rep = r["report"]
    module, head = rep["tasks"][task]["module"], rep["tasks"][task]["head"]
    full = r["recipe"]["train"]["mode"] == "full"
    # what adding the task stores: its module and head, or a whole encoder of its own
    own_encoder = r["recipe"]["module"]["kind"] == "none"
    return {
        "dev": r["dev"][task],
        "score": r["dev"][task][r["primary"][task]],
        "micro_batches": r["batches"].get(task, 0),
        "trainable": (rep["backbone"] if full else 0) + module + head,
        "new_stored": module + head + (rep["backbone"] if own_encoder else 0),
        "run": r["run_dir"],
        "wall_s": r["wall_s"],
        "recipe": r["recipe"],
    }


def grow(
    base: dict[str, Any], added: dict[str, Any], task: str, folder: Path, data: Path
) -> dict[str, Any]:
    """Export the base run's tasks into ``folder``, then the added task beside them; what
    changed, the fingerprints and ``palbert eval`` of the whole folder."""
    from palbert.cli import main as palbert
    from palbert.taskfile import read_task_file

    before = digests(folder)
    if palbert(["export", added["run_dir"], "--task", task, "--out", str(folder)]) != 0:
        raise RuntimeError(f"export of {added['run_dir']} into {folder} failed")
    after = digests(folder)
    scores = folder.parent / f"{folder.name}-eval.json"
    if palbert(["eval", str(folder), "--data-dir", str(data), "--json", str(scores)]) != 0:
        raise RuntimeError(f"palbert eval {folder} failed")
    on_folder = json.loads(scores.read_text())
    fingerprints = {
        p.stem: read_task_file(p).backbone.get("fingerprint")
        for p in sorted(folder.glob("*.safetensors"))
    }
    own = added["dev"][task]
    return {
        "folder": str(folder),
        "originals_unchanged": {k: after.get(k) for k in before} == before,
        "new_files": sorted(set(after) - set(before)),
        "one_fingerprint": len(set(fingerprints.values())) == 1
        and None not in fingerprints.values(),
        "eval_of_folder": on_folder,
        "added_scores_as_in_its_run": same(on_folder[task], own),
        "base_scores_as_in_their_run": all(same(on_folder[t], base["dev"][t]) for t in base["dev"]),
    }


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal metrics, up to float rounding (another batch size pads rows differently)."""
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-6 for k in a)


def run_case(task: str, ctx: Context, root: Path) -> dict[str, Any]:
    from palbert.cli import main as palbert

    base_tasks = CASES[task]
    multi = run_or_reuse(multi_task_raw((*base_tasks, task), ctx, root), ctx)
    steps = max(1, multi["batches"].get(task, 0))
    base = run_or_reuse(multi_task_raw(base_tasks, ctx, root), ctx)
    folder = ctx.runs / f"tasks-{'-'.join(base_tasks)}"
    if folder.exists():
        shutil.rmtree(folder)  # rebuilt from the runs each time: the check is the export
    if palbert(["export", base["run_dir"], "--task", "all", "--out", str(folder)]) != 0:
        raise RuntimeError(f"export of {base['run_dir']} into {folder} failed")
    runs = {
        "added": run_or_reuse(
            single_raw(task, "added", str(folder / "backbone"), steps, ctx, root), ctx
        ),
        "multi-task": multi,
        "frozen-stock": run_or_reuse(
            single_raw(task, "frozen-stock", "minilm", steps, ctx, root), ctx
        ),
        "separate": run_or_reuse(single_raw(task, "separate", "minilm", steps, ctx, root), ctx),
    }
    return {
        "base_tasks": list(base_tasks),
        "base_run": base["run_dir"],
        "metric": multi["primary"][task],
        "micro_batches": steps,
        "variants": {v: variant_record(runs[v], task) for v in VARIANTS},
        "checks": grow(base, runs["added"], task, folder, ctx.data_dir),
    }


def run(ctx: Context, root: Path, started: str) -> dict[str, Any]:
    """Every case (``CASES``), written to ``results/add-task/seed-S.json``."""
    from bench.accuracy.run import machine, versions, write_json

    ctx = dataclasses.replace(ctx, runs=ctx.runs / "add-task" / f"seed-{ctx.seed}")
    out = {
        "seed": ctx.seed,
        "budget": ctx.budget,
        "quick": ctx.quick,
        "data_dir": str(ctx.data_dir),
        "started": started,
        "command": ctx.command,
        "machine": machine(),
        "versions": versions(),
        "cases": {task: run_case(task, ctx, root) for task in CASES},
    }
    write_json(results_path(root, ctx.seed), out)
    return out


NAMES = {
    "added": "added later (frozen PAL, fine-tuned encoder)",
    "multi-task": "trained with the others",
    "frozen-stock": "frozen PAL, stock MiniLM",
    "separate": "separate fine-tune",
}


def table(root: Path) -> str:
    """The added-task table (markdown) from every ``results/add-task/seed-S.json``."""
    files = sorted((root / "add-task").glob("seed-*.json"))
    if not files:
        return "(no add-task results yet: python -m bench.accuracy.run add-task)"
    lines = [
        "| added task (to the encoder of) | seed | micro-batches | "
        + " | ".join(NAMES[v] for v in VARIANTS)
        + " | new parameters stored: PAL + head / separate |",
        "|---" * (4 + len(VARIANTS)) + "|",
    ]
    for f in files:
        r = json.loads(f.read_text())
        for task, case in r["cases"].items():
            v = case["variants"]
            scores = " | ".join(f"{v[k]['score']:.3f}" for k in VARIANTS)
            lines.append(
                f"| {task} {case['metric']} ({'+'.join(case['base_tasks'])}) | {r['seed']} | "
                f"{case['micro_batches']} | {scores} | "
                f"{v['added']['new_stored'] / 1e6:.2f}M / {v['separate']['new_stored'] / 1e6:.1f}M |"
            )
    return "\n".join(lines)
