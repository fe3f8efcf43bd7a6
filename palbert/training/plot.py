"""``palbert plot RUN_DIR``: a PNG of the training loss and dev metrics per task.

::

    png = plot_run("checkpoints/quickstart-20260101-120000")   # writes <run>/metrics.png
"""

from __future__ import annotations

from pathlib import Path

from palbert.files import atomic_write_with
from palbert.training.runlog import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw training loss (left) and dev metrics (right) per task; return the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    fig, (ax_loss, ax_dev) = plt.subplots(1, 2, figsize=(12, 4.5))
    for task in sorted({t for r in train for t in r["loss"]}):
        pts = [(r["step"], r["loss"][task]) for r in train if task in r["loss"]]
        ax_loss.plot(*zip(*pts, strict=True), label=task)
    ax_loss.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    for task in sorted({t for r in evals for t in r["scores"]}):
        for metric in sorted({m for r in evals for m in r["scores"].get(task, {})}):
            pts = [(r["step"], r["scores"][task][metric]) for r in evals if task in r["scores"]]
            ax_dev.plot(*zip(*pts, strict=True), marker="o", label=f"{task} {metric}")
    if evals:
        ax_dev.plot([r["step"] for r in evals], [r["score"] for r in evals], "k--", label="score")
    ax_dev.set(title="dev metrics", xlabel="optimizer step")
    for ax in (ax_loss, ax_dev):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "metrics.png"
    try:  # format named: the temporary file's suffix is not .png
        atomic_write_with(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out
