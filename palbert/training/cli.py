"""The ``train`` and ``plot`` commands.

palbert train recipes/quickstart.yaml [key.sub=value ...] [--resume [RUN_DIR]]
                                      [--allow-data-change]
torchrun --nproc_per_node 2 -m palbert train recipes/quickstart.yaml
palbert plot checkpoints/quickstart-20260101-120000 [--out loss.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from palbert.errors import report
from palbert.training.data_record import ALLOW_FLAG


def _train(args: argparse.Namespace) -> int:
    from palbert.recipe import load_recipe
    from palbert.training.checkpoint import checkpoint_dir
    from palbert.training.loop import NonFinite
    from palbert.training.run import train

    allow_data_change = args.allow_data_change or ALLOW_FLAG in args.overrides
    try:
        overrides, resume, no_progress = _split_rest(args.overrides, args.resume, args.no_progress)
        # `--resume key=value` is an override after a bare --resume, not a run folder
        if isinstance(resume, str) and "=" in resume and not Path(resume).is_dir():
            overrides.insert(0, resume)
            resume = True
        recipe = load_recipe(args.recipe, overrides)
        # a resumed run follows its own recipe.yaml; the overrides apply on top of it
        run_dir = train(
            recipe,
            resume=resume,
            overrides=overrides if resume else None,
            progress=not no_progress,
            allow_data_change=allow_data_change,
        )
    # beyond cli.main's catch-all: any ValueError (recipe and data errors are ValueErrors),
    # exit 1 for a diverged run, the resume hint
    except ValueError as e:
        report("train", e)
        return 2
    except NonFinite as e:
        report("train", e)
        return 1
    except KeyboardInterrupt as e:
        run = getattr(e, "run_dir", None)
        if run is not None and checkpoint_dir(Path(run) / "last"):
            how = f"continue with: palbert train {args.recipe} --resume {run}"
        else:
            how = "no checkpoint was written yet"
        print(f"\npalbert train: interrupted; {how}", file=sys.stderr)
        return 130
    print(run_dir)
    return 0


def _split_rest(rest: list[str], resume, no_progress: bool):
    """Options may follow the overrides (``palbert train R k=v --resume``); argparse leaves
    everything after the recipe to us, so pick them out here."""
    overrides = []
    i = 0
    while i < len(rest):
        item = rest[i]
        if item == "--no-progress":
            no_progress = True
        elif item == ALLOW_FLAG:
            pass  # read by _train
        elif item == "--resume" or item.startswith("--resume="):
            resume = True
            value = item.split("=", 1)[1] if "=" in item else None
            if value is None and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                if "=" not in rest[i + 1] or Path(rest[i + 1]).is_dir():
                    value = rest[i + 1]
                    i += 1
            if value:
                resume = value
        elif item.startswith("-"):
            raise ValueError(f"unknown option {item} (palbert train --help lists them)")
        else:
            overrides.append(item)
        i += 1
    return overrides, resume, no_progress


def _plot(args: argparse.Namespace) -> int:
    from palbert.training.plot import plot_run

    try:
        out = plot_run(args.run_dir, args.out)
    # a missing or damaged metrics.jsonl (not palbert's error classes, so not cli.main's)
    except (FileNotFoundError, ValueError) as e:
        report("plot", e)
        return 2
    print(out)
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``plot`` on the ``palbert`` command."""
    p = subparsers.add_parser(
        "train",
        help="train the tasks of a recipe",
        description="Train a recipe; the run folder is <output_dir>/<name>-<timestamp>/.",
    )
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="key.sub=value overrides (values are YAML); options may come after them",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="RUN_DIR",
        help="continue an unfinished run (default: the newest of this recipe)",
    )
    p.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="let --resume go on although the run's data files changed since it started "
        "(by default that is refused; see data.json in the run folder)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("plot", help="plot a run's training loss and dev metrics (PNG)")
    p.add_argument("run_dir", help="a run folder under checkpoints/")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/metrics.png)")
    p.set_defaults(func=_plot)
