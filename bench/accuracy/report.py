"""The accuracy table (markdown) and plot (PNG) from the rows' JSON files.

Seed 0 of a row is ``results/ROW.json``, seed S ``results/seed-S/ROW.json``; the table and
plot show each row's mean and sample standard deviation (ddof 1) over the seeds found, and
how many (one seed: its value, no spread). ``summary`` holds every per-seed value they use.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from bench.accuracy.rows import (
    DEFAULT_BUDGET,
    ROWS,
    SWEEP_TRIALS,
    choice_path,
    choices,
    result_lr,
    today_lr,
    trial_file,
)

TASK_COLUMNS = {
    "sst": "SST acc",
    "quora": "Quora acc",
    "sts": "STS Pearson",
    "cfimdb": "CFIMDB acc",
}


def load_results(folder: Path) -> list[dict[str, Any]]:
    """The rows' results in the table's order (rows.py), then any others by name."""
    found = {}
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "row" in data and "status" in data:
            found[data["row"]] = data
    order = [n for n in ROWS if n in found] + sorted(n for n in found if n not in ROWS)
    return [found[n] for n in order]


def seed_folders(folder: Path) -> dict[int, Path]:
    """Seed -> the folder holding its rows: ``folder`` for seed 0, ``folder/seed-S`` for S."""
    out = {0: Path(folder)}
    for sub in sorted(Path(folder).glob("seed-*")):
        m = re.fullmatch(r"seed-(\d+)", sub.name)
        if m and sub.is_dir() and int(m.group(1)) != 0:
            out[int(m.group(1))] = sub
    return out


def summary(folder: Path) -> list[dict[str, Any]]:
    """:func:`seed_groups` without the results themselves: what ``run.py summary`` prints."""
    return [{k: v for k, v in g.items() if k != "results"} for g in seed_groups(folder)]


def seed_groups(folder: Path) -> list[dict[str, Any]]:
    """Every row's seeds, grouped by the swept learning rate they ran with: per-seed primary
    metrics and dev means (with their files), and over the seeds that finished their mean,
    sample standard deviation (ddof 1; ``None`` for one seed) and number. Rows in rows.py's
    order; a row whose seeds ran at different learning rates gives one entry per rate."""
    by_row: dict[str, dict[int, tuple[Path, dict[str, Any]]]] = {}
    for seed, sub in seed_folders(folder).items():
        for path in sorted(sub.glob("*.json")):
            r = json.loads(path.read_text())
            if not (isinstance(r, dict) and "row" in r and "status" in r):
                continue
            if r.get("seed", 0) != seed:
                raise SystemExit(f"{path}: seed {r.get('seed')} in a folder of seed {seed}")
            by_row.setdefault(r["row"], {})[seed] = (path, r)
    order = [n for n in ROWS if n in by_row] + sorted(n for n in by_row if n not in ROWS)
    chosen = {name: c["chosen"] for name, c in choices(folder).items()}
    out = []
    for name in order:
        seeds = by_row[name]
        ok = {s: pr for s, pr in seeds.items() if pr[1]["status"] == "ok"}
        failed = {s: pr for s, pr in seeds.items() if pr[1]["status"] != "ok"}
        groups: dict[Any, dict[int, tuple[Path, dict[str, Any]]]] = {}
        for s, pr in sorted(ok.items()):
            groups.setdefault(result_lr(pr[1]), {})[s] = pr
        if not groups:
            groups = {None: {}}
        for lr, members in groups.items():
            results = [r for _, r in members.values()]
            tasks = list(results[0]["tasks"]) if results else list(seeds[min(seeds)][1]["tasks"])
            per_seed = {
                "dev_mean": {s: r["dev_mean"] for s, (_, r) in members.items()},
                "dev_primary": {
                    t: {s: r["dev_primary"][t] for s, (_, r) in members.items()} for t in tasks
                },
            }
            values = {"dev_mean": list(per_seed["dev_mean"].values())}
            values.update({t: list(v.values()) for t, v in per_seed["dev_primary"].items()})
            out.append(
                {
                    "row": name,
                    "lr": lr,
                    "param": ROWS[name].sweep.param if name in ROWS else None,
                    # at the rate the row's sweep chose (a choice may keep today's value,
                    # and so cover seeds that ran before the sweep)
                    "tuned": lr is not None and chosen.get(name) == lr,
                    "tasks": tasks,
                    "seeds": sorted(members),
                    "n": len(members),
                    "files": {s: str(p) for s, (p, _) in members.items()},
                    "per_seed": per_seed,
                    "mean": {k: statistics.fmean(v) if v else None for k, v in values.items()},
                    "sd": {
                        k: statistics.stdev(v) if len(v) > 1 else None for k, v in values.items()
                    },
                    "failed": {
                        s: {"file": str(p), "error": r.get("error", "")}
                        for s, (p, r) in failed.items()
                    },
                    "results": results,
                }
            )
        if len(groups) > 1:
            for g in out[-len(groups) :]:
                g["label"] = f"{name} ({g['param']} {g['lr']:g})"
    for g in out:
        g.setdefault("label", g["row"])
    return out


def spread(mean: float, sd: float | None, digits: int) -> str:
    """``mean`` alone (one seed) or ``mean ± sd``."""
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def millions(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def mean_trainable(r: dict[str, Any]) -> float:
    v = r["params"]["trainable_per_task"]
    return sum(v.values()) / len(v)


def table(folder: Path) -> str:
    """The README's markdown table, with the settings every row shares under it: each row's
    mean ± sample standard deviation over its seeds (``seed_groups``) and their number."""
    groups = seed_groups(folder)
    if not groups:
        return f"no results in {folder} (run: python -m bench.accuracy.run all)"
    tasks: list[str] = []
    for g in groups:
        tasks += [t for t in g["tasks"] if t not in tasks]
    head = (
        ["row"]
        + [TASK_COLUMNS.get(t, t) for t in tasks]
        + [
            "dev mean",
            "seeds",
            "learning rate",
            "trainable / task",
            "stored (x encoder)",
            "examples / task",
            "CPU min (wall)",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    best = max((g["mean"]["dev_mean"] for g in groups if g["n"]), default=None)
    for g in groups:
        for s, f in g["failed"].items():
            reason = f["error"].strip().splitlines()
            short = reason[-1] if reason else "unknown"
            which = "" if s == 0 else f" seed {s}"
            notes.append(f"- `{g['row']}`{which} did not run: {short} (full reason in its JSON)")
        if not g["n"]:
            cells = [f"`{g['row']}`"] + ["-"] * (len(head) - 1)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        rs, mean, sd = g["results"], g["mean"], g["sd"]
        label = f"`{g['row']}`" + g["label"][len(g["row"]) :]
        cells = [label]
        for t in tasks:
            cells.append(spread(mean[t], sd[t], 3) if t in mean else "-")
        dev = spread(mean["dev_mean"], sd["dev_mean"], 4)
        ex = {t: statistics.fmean(r["examples_per_task"].get(t, 0) for r in rs) for t in tasks}
        cpu = statistics.fmean(r["cpu_s"] for r in rs) / 60
        wall = statistics.fmean(r["wall_s"] for r in rs) / 60
        cells += [
            f"**{dev}**" if mean["dev_mean"] == best else dev,
            str(g["n"]),
            rate(g),
            millions(mean_trainable(rs[0])),
            f"{rs[0]['params']['stored_multiple']:.3f}",
            " / ".join(f"{ex[t]:.0f}" if t in g["tasks"] else "-" for t in tasks),
            f"{cpu:.1f} ({wall:.1f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    done = [r for g in groups for r in g["results"]]
    # with no row finished, the shared settings come from a failed row's JSON
    failed_file = next(iter(groups[0]["failed"].values()), {}).get("file")
    first = done[0] if done else json.loads(Path(failed_file).read_text())
    budgets = {json.dumps(r.get("budget"), sort_keys=True) for r in done}
    seeds = sorted({s for g in groups for s in g["seeds"]})
    lines += [
        "",
        f"Tasks {', '.join(tasks)}; budget {first['budget']['micro_batches']} micro-batches of "
        f"{first['budget']['batch_size']} (examples per task in the column above); seeds "
        f'{", ".join(map(str, seeds))} (column "seeds": how many a row has; with more than '
        "one, a figure is the mean ± the sample standard deviation over them, examples and "
        f"minutes the mean); torch {first['torch']}; {first['machine']['cpus']} CPUs "
        f"({first['machine']['platform']}). Dev mean: the mean of the tasks' primary metrics (best in bold). "
        "Trainable / task: the mean over tasks of what one task trains (encoder included where "
        "it is fine-tuned); stored: encoder(s) plus all task modules over one encoder, heads "
        "excluded. Learning rate: the one each row sweeps (encoder `lr` or task-module "
        "`task_lr`), chosen by its sweep on a validation split or still today's. Settings: "
        "bench/accuracy/rows.py and recipes/quickstart.yaml.",
    ]
    if len(budgets) > 1:
        lines.append("**Warning: the rows ran with different budgets.**")
    if any(r.get("quick") for r in done):
        lines.append("**Quick smoke-test results (--quick): not a measurement.**")
    return "\n".join(lines + notes)


def rate(g: dict[str, Any]) -> str:
    """The table's learning-rate cell: the swept key, its value, chosen or today's."""
    if g["lr"] is None:
        return "-"
    key = (g["param"] or "").rsplit(".", 1)[-1]
    how = "chosen" if g["tuned"] else "today's"
    return f"`{key}` {g['lr']:g} ({how})"


def sweep_table(folder: Path) -> str:
    """Each row's learning-rate sweep as markdown: the validation mean (the 10% carve, never
    dev) of every trial that finished in ``folder/sweep/``, today's value marked, and the
    choice once all three have run (``choice.json``). What ``run.py sweep-table`` prints."""
    sweep = Path(folder) / "sweep"
    chosen_rows = choices(Path(folder))
    lines = [
        "| row | swept | validation mean per trial (* today's value) | chosen |",
        "|---|---|---|---|",
    ]
    swept = 0
    for name, row in ROWS.items():
        today = today_lr(row)
        cells = []
        for v in row.sweep.values:
            f = sweep / trial_file(name, v)
            r = json.loads(f.read_text()) if f.is_file() else None
            state = trial_state(r, v)
            cells.append(f"{v:g}{'*' if v == today else ''}: {state}")
            swept += r is not None and state[0].isdigit()
        c = chosen_rows.get(name)
        chosen = "not chosen yet"
        if c:
            chosen = f"{c['chosen']:g}" + (" (changed)" if c["changed"] else " (today's)")
        lines.append(f"| {name} | `{row.sweep.param}` | {' · '.join(cells)} | {chosen} |")
    trials = sum(len(r.sweep.values) for r in ROWS.values())
    lines.append("")
    lines.append(
        f"{swept} of {trials} trials run; each trains on 90% of every training file and is "
        f"scored on the other 10% (seed 0, {DEFAULT_BUDGET} micro-batches); a row is chosen "
        f"once its {SWEEP_TRIALS} trials have run."
    )
    return "\n".join(lines)


def trial_state(r: dict[str, Any] | None, value: float) -> str:
    """A sweep trial's cell: its validation mean, or why there is none."""
    if r is None:
        return "not run"
    if r.get("split") != "validation" or "validation_mean" not in r:
        return "not scored on validation"
    if r.get("status") != "ok":
        return "failed"
    if (
        result_lr(r) != value
        or r.get("seed") != 0
        or r.get("budget", {}).get("micro_batches") != DEFAULT_BUDGET
    ):
        return "other settings"
    return f"{r['validation_mean']:.4f}"


def timing(folder: Path) -> str:
    """Each row's training time per micro-batch, wall and CPU seconds, and the machine's load
    (the rows' times compare only when they ran on equally quiet machines)."""
    lines = [
        "| row | optimizer steps | micro-batches | train s | s / micro-batch | wall s | CPU s "
        "| load avg (start, end) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in load_results(folder):
        if r["status"] != "ok":
            continue
        mb = sum(r["batches_per_task"].values())
        step_s = r.get("train_step_s")
        per = f"{step_s / mb:.2f}" if step_s and mb else "-"
        load = (r["machine"]["load_average_at_start"][0], r.get("load_average_at_end", [0])[0])
        lines.append(
            f"| `{r['row']}` | {r['steps']} | {mb} | {step_s} | {per} | {r['wall_s']} | "
            f"{r.get('cpu_s', '-')} | {load[0]:.1f}, {load[1]:.1f} |"
        )
    return "\n".join(lines)


def plot(folder: Path, out: Path) -> Path:
    """PNG of dev mean against trainable parameters per task (log scale), one point a row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in seed_groups(folder) if g["n"]]
    if not groups:
        raise SystemExit(f"no finished rows in {folder} to plot")
    results = [g["results"][0] for g in groups]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = sorted(
        ((mean_trainable(g["results"][0]), g["mean"]["dev_mean"], g) for g in groups),
        key=lambda p: p[1],
    )
    ys = [p[1] for p in points]
    gap = 0.045 * ((max(ys) - min(ys)) or 0.01)
    placed: list[tuple[float, float]] = []
    for x, y, g in points:
        r = g["results"][0]
        finetuned = r["params"]["trainable_per_task"] and r["params"]["encoder"] <= min(
            r["params"]["trainable_per_task"].values()
        )
        # error bar: the sample standard deviation over the row's seeds (none for one seed)
        ax.errorbar(
            [x],
            [y],
            yerr=[g["sd"]["dev_mean"]] if g["sd"]["dev_mean"] is not None else None,
            fmt="s" if finetuned else "o",
            ms=5.5,
            capsize=3,
        )
        # rows that fine-tune the encoder share an x: move labels apart vertically
        ly = y
        for px, py in placed:
            if abs(math.log10(x) - math.log10(px)) < 0.3 and abs(ly - py) < gap:
                ly = py + gap
        placed.append((x, ly))
        ax.annotate(
            g["label"]
            + (f" (n={g['n']})" if g["n"] > 1 else "")
            + (f", {rate(g).replace('`', '')}" if g["tuned"] else ""),
            (x, y),
            xytext=(x * 1.12, ly),
            fontsize=8,
            va="center",
            arrowprops={"arrowstyle": "-", "lw": 0.5} if ly != y else None,
        )
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)
    ax.set_xlabel("trainable parameters per task (log scale; squares: encoder fine-tuned)")
    ax.set_ylabel(f"dev mean ({', '.join(results[0]['tasks'])})")
    seeds = sorted({s for g in groups for s in g["seeds"]})
    ax.set_title(
        f"MiniLM, {results[0]['budget']['micro_batches']} micro-batches of "
        f"{results[0]['budget']['batch_size']}, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}"
        + (" (mean ± sd)" if len(seeds) > 1 else "")
        + (" (quick smoke test)" if results[0].get("quick") else "")
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def describe_rows(folder: Path) -> str:
    """Each row's settings on top of recipes/quickstart.yaml, its sweep (rows.py) and the
    choice of it in ``folder/sweep/choice.json``."""
    path, chosen_rows = choice_path(Path(folder)), choices(Path(folder))
    out = []
    for r in ROWS.values():
        parts = [f"{r.name}: {r.title}", f"  runner: {r.runner}"]
        if r.recipe:
            parts.append(f"  recipe: {json.dumps(r.recipe)}")
        if r.method:
            parts.append(f"  method: {json.dumps(r.method)}")
        if r.plan_from:
            parts.append(f"  replays the task plan of: {r.plan_from}")
        if r.annealed_epochs:
            parts.append(f"  sampler epochs within the budget: {r.annealed_epochs}")
        today = today_lr(r)
        values = ", ".join(f"{v:g}" + ("*" if v == today else "") for v in r.sweep.values)
        c = chosen_rows.get(r.name)
        chosen = f"chosen {c['chosen']:g} ({path})" if c else "not chosen yet: runs at *"
        parts.append(f"  sweep: {r.sweep.param} over {values} (* today's); {chosen}")
        out.append("\n".join(parts))
    return "\n".join(out)
