"""The accuracy table (markdown) and plot (PNG) from the rows' JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.accuracy.rows import ROWS

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


def millions(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def mean_trainable(r: dict[str, Any]) -> float:
    v = r["params"]["trainable_per_task"]
    return sum(v.values()) / len(v)


def table(folder: Path) -> str:
    """The README's markdown table, with the settings every row shares under it."""
    results = load_results(folder)
    if not results:
        return f"no results in {folder} (run: python -m bench.accuracy.run all)"
    tasks: list[str] = []
    for r in results:
        tasks += [t for t in r["tasks"] if t not in tasks]
    head = (
        ["row"]
        + [TASK_COLUMNS.get(t, t) for t in tasks]
        + [
            "dev mean",
            "trainable / task",
            "stored (x encoder)",
            "examples / task",
            "CPU min (wall)",
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    best = max((r["dev_mean"] for r in results if r["status"] == "ok"), default=None)
    for r in results:
        if r["status"] != "ok":
            reason = r.get("error", "").strip().splitlines()
            short = reason[-1] if reason else "unknown"
            notes.append(f"- `{r['row']}` did not run: {short} (full reason in its JSON)")
            cells = [f"`{r['row']}`"] + ["-"] * (len(head) - 1)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [f"`{r['row']}`"]
        for t in tasks:
            cells.append(f"{r['dev_primary'][t]:.3f}" if t in r["dev_primary"] else "-")
        ex = r["examples_per_task"]
        cells += [
            f"**{r['dev_mean']:.4f}**" if r["dev_mean"] == best else f"{r['dev_mean']:.4f}",
            millions(mean_trainable(r)),
            f"{r['params']['stored_multiple']:.3f}",
            " / ".join(str(ex.get(t, "-")) for t in tasks),
            f"{r['cpu_s'] / 60:.1f} ({r['wall_s'] / 60:.1f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = results[0]
    budgets = {json.dumps(r.get("budget"), sort_keys=True) for r in results}
    seeds = {r.get("seed") for r in results}
    lines += [
        "",
        f"Tasks {', '.join(tasks)}; budget {first['budget']['micro_batches']} micro-batches of "
        f"{first['budget']['batch_size']} (examples per task in the column above); seed "
        f"{first['seed']}; torch {first['torch']}; {first['machine']['cpus']} CPUs "
        f"({first['machine']['platform']}). Dev mean: the mean of the tasks' primary metrics (best in bold). "
        "Trainable / task: the mean over tasks of what one task trains (encoder included where "
        "it is fine-tuned); stored: encoder(s) plus all task modules over one encoder, heads "
        "excluded. Settings: bench/accuracy/rows.py and recipes/quickstart.yaml.",
    ]
    if len(budgets) > 1 or len(seeds) > 1:
        lines.append("**Warning: the rows ran with different budgets or seeds.**")
    if any(r.get("quick") for r in results):
        lines.append("**Quick smoke-test results (--quick): not a measurement.**")
    return "\n".join(lines + notes)


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

    results = [r for r in load_results(folder) if r["status"] == "ok"]
    if not results:
        raise SystemExit(f"no finished rows in {folder} to plot")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points = sorted(((mean_trainable(r), r["dev_mean"], r) for r in results), key=lambda p: p[1])
    ys = [p[1] for p in points]
    gap = 0.045 * ((max(ys) - min(ys)) or 0.01)
    placed: list[tuple[float, float]] = []
    for x, y, r in points:
        finetuned = r["params"]["trainable_per_task"] and r["params"]["encoder"] <= min(
            r["params"]["trainable_per_task"].values()
        )
        ax.scatter([x], [y], s=30, marker="s" if finetuned else "o")
        # rows that fine-tune the encoder share an x: move labels apart vertically
        ly = y
        for px, py in placed:
            if abs(math.log10(x) - math.log10(px)) < 0.3 and abs(ly - py) < gap:
                ly = py + gap
        placed.append((x, ly))
        ax.annotate(
            r["row"],
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
    ax.set_title(
        f"MiniLM, {results[0]['budget']['micro_batches']} micro-batches of "
        f"{results[0]['budget']['batch_size']}, seed {results[0]['seed']}"
        + (" (quick smoke test)" if results[0].get("quick") else "")
    )
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def describe_rows() -> str:
    """Each row's settings on top of recipes/quickstart.yaml."""
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
        out.append("\n".join(parts))
    return "\n".join(out)
