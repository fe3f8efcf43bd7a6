"""Export, eval and predict: per-task files from run folders, and using them.

Commands (registered in the ``palbert`` CLI by :func:`add_commands`)::

    palbert export [RUN_DIR] --task sts [--out DIR] [--dtype float16|bfloat16|float32]
    palbert export [RUN_DIR] --task all [--out DIR]     # DIR/<task>.safetensors for each task
    palbert export RUN_DIR --backbone [--out DIR]       # DIR/backbone/: the fine-tuned encoder
                   [--overwrite]                        # replace another encoder there
    palbert eval [RUN_DIR | FILE.safetensors ...] [--backbone NAME] [--split dev]
    palbert predict [RUN_DIR | FILE.safetensors ...] [--split dev|test | --input FILE]
                    [--out DIR] [--format cs224n|csv|jsonl]

``--out`` is always a folder, by default ``RUN_DIR/export``. The task files of a run that
fine-tuned its encoder work only on that encoder, so ``--task`` writes it as well
(``OUT/backbone/``), and eval/predict of task files find it there.

RUN_DIR defaults to the newest complete run (one with a ``COMPLETE`` file) under
``checkpoints/``. A run folder is read by :func:`palbert.training.runfolder.load_run`; its
``best.safetensors`` holds ``backbone.*`` keys only when the run trained the encoder.

This module is the commands' glue: task files are written and read by
:meth:`PalBert.save_task` / :meth:`PalBert.load_task` (format: :mod:`palbert.taskfile`), and
eval and predict run through :mod:`palbert.inference`, as training's dev evaluation does.

Library use::

    paths = export_run("checkpoints/quickstart-20260101-120000", task="all", out="tasks/")
    export_backbone(model, "my-encoder/")   # config.json + model.safetensors + tokenizer
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from palbert.backbones import TOKENIZER_FILES
from palbert.choices import IMPLS
from palbert.devices import parse_device
from palbert.errors import report
from palbert.files import (
    atomic_write_text,
    child,
    is_temporary,
    remove_temporaries,
    write_files_into,
)
from palbert.inference import evaluate, run_split
from palbert.integrity import IntegrityError, metadata, write_sealed
from palbert.model import PalBert
from palbert.recipe import DEFAULT_OUTPUT_DIR
from palbert.taskfile import DTYPES, read_task_file
from palbert.tasks import build_task, write_predictions
from palbert.tasks.predictions import OUTPUT_FORMATS
from palbert.tasks.spec import INPUT_FORMATS, no_such_task
from palbert.training.runfolder import (
    is_run_dir,
    load_run,
    newest_run,
    trained_backbone,
    unfinished,
)


class ExportError(RuntimeError):
    """A run folder or an export request is unusable; the message says why."""


# -- run folders --------------------------------------------------------------------------


def exported_encoder(source: str | Path) -> bool:
    """Whether ``source`` (a backbone folder) is an encoder that ``palbert export`` wrote from
    a fine-tuning run: its ``model.safetensors`` header carries ``palbert.fingerprint``.

    A task trained on it, frozen (``recipes/add_task.yaml``), is tied to those fine-tuned
    weights as much as the run's own tasks are, and is exported as such.
    """
    weights = Path(source) / "model.safetensors"
    if not weights.is_file():
        return False
    try:
        meta = metadata(weights)
    except IntegrityError:
        return False  # loading it as a backbone already verified it; nothing to tell here
    return "palbert.fingerprint" in meta


# -- exports ------------------------------------------------------------------------------


def default_out(run_dir: str | Path) -> Path:
    """Where ``palbert export`` writes when no ``--out`` is given: ``RUN_DIR/export/``, inside
    the run folder (so nothing lands in the repository or the current folder unasked)."""
    return Path(run_dir) / "export"


def export_run(
    run_dir: str | Path,
    task: str = "all",
    out: str | Path | None = None,
    dtype: str | None = None,
    loaded: tuple | None = None,
) -> list[Path]:
    """Write one task (``task``) or every task (``"all"``) of a run to ``out/<task>.safetensors``.

    ``out`` is a folder (default :func:`default_out`). ``loaded`` is the ``(model, tasks,
    recipe)`` of the run when already loaded.
    """
    run_dir = Path(run_dir)
    model, tasks, _ = loaded or load_run(run_dir)
    names = list(tasks) if task == "all" else [task]
    unknown = [n for n in names if n not in tasks or n not in model.heads]
    if unknown:
        raise ExportError(no_such_task(unknown[0], tasks, f" in run {run_dir}"))
    folder = _out_folder(out if out is not None else default_out(run_dir))
    # a task added later on an exported fine-tuned encoder needs that encoder, as the
    # encoder's own tasks do: eval/predict then find it in the backbone/ folder beside them
    fine_tuned = trained_backbone(run_dir) or exported_encoder(model.backbone_info.source)
    return [
        model.save_task(n, child(folder, f"{n}.safetensors"), dtype, fine_tuned=fine_tuned)
        for n in names
    ]


def _out_folder(out: str | Path) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"--out {folder} is a file; --out names the folder to write into")
    if folder.suffix == ".safetensors":
        raise ExportError(
            f"--out {folder} looks like a file name; --out names the folder that receives "
            "<task>.safetensors (and backbone/)"
        )
    return folder


def check_backbone_out(model, out: str | Path, overwrite: bool = False) -> bool:
    """Refuse to write the model's encoder into ``out`` when it holds another one (other
    weights: the task files exported beside it would stop loading) unless ``overwrite``;
    whether ``out`` holds another encoder to replace. A folder without ``model.safetensors``
    holds no encoder (nothing yet, or an export killed before its weights, written last)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; the encoder is written into a folder: choose --out")
    holds = out.is_dir() and any(not is_temporary(p) for p in out.iterdir())
    if holds and not (out / "config.json").is_file():
        raise ExportError(f"{out} exists and is not an exported backbone folder; choose --out")
    weights = out / "model.safetensors"
    if not weights.exists() and not weights.is_symlink():
        return False
    try:
        theirs = metadata(weights).get("palbert.fingerprint")
    except IntegrityError:
        theirs = None  # damaged or unreadable: not this encoder either
    mine = model.fingerprint()
    if theirs == mine:
        return False
    if not overwrite:
        raise ExportError(
            f"{out} holds another encoder (weights fingerprint {theirs or 'unknown'}, this "
            f"run's is {mine}); the task files exported beside it need it. Choose another "
            "--out, or pass --overwrite to replace it (then export those tasks again)"
        )
    return True


def export_backbone(model, out: str | Path, overwrite: bool = False) -> Path:
    """Write the model's encoder as a transformers folder: ``config.json``,
    ``model.safetensors`` (float32, BertModel's keys) and the tokenizer files.

    ``transformers.BertModel.from_pretrained(out)`` and ``PalBert.from_pretrained(out)``
    load it; its fingerprint is the one that task files exported from the same model name.
    A folder holding another encoder is refused unless ``overwrite`` (:func:`check_backbone_out`).
    Every file is written atomically, the weights last, so a killed export leaves a folder
    that loading refuses by name (no weights), never a mix of two encoders.
    """
    out = Path(out)
    replacing = check_backbone_out(model, out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)  # a killed export's
    if replacing:  # until the new weights land, the folder holds no encoder, not a mix
        (out / "model.safetensors").unlink()
    state = {
        k: t.detach().to("cpu", torch.float32).contiguous().clone()
        if t.is_floating_point()
        else t.detach().cpu().contiguous().clone()
        for k, t in model.backbone.state_dict().items()
        if not k.endswith("position_ids")  # rebuilt by BertModel, not a weight
    }
    info = model.backbone_info
    config = info.config.__class__.from_dict(info.config.to_dict())
    config.architectures = ["BertModel"]

    def configs(tmp: Path) -> None:  # transformers writes in place: into a temporary folder
        config.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)

    written = write_files_into(out, configs)
    if replacing:  # the other encoder's tokenizer files that this one does not write
        for stale in {*TOKENIZER_FILES, "special_tokens_map.json"} - {p.name for p in written}:
            (out / stale).unlink(missing_ok=True)
    # sealed (palbert.sha256): PalBert.from_pretrained(out) checks it, transformers ignores it
    meta = {"format": "pt", "palbert.fingerprint": model.fingerprint(), "palbert.base": info.name}
    write_sealed(out / "model.safetensors", state, meta)
    return out


# -- running tasks over data --------------------------------------------------------------


def open_models(
    paths: list[str],
    backbone: str | None = None,
    impl: str | None = None,
    checkpoints: str = DEFAULT_OUTPUT_DIR,
    data_dir: str | None = None,
    force: bool = False,
    say: Callable[[str], None] = print,
):
    """``(model, tasks)`` from a run folder (default: the newest) or from task files.

    Task files load onto ``backbone`` (default: the one named in the first file; for a
    fine-tuned encoder, the ``backbone/`` folder beside it that ``palbert export`` wrote).
    """
    files = task_files(paths)
    if len(files) <= 1 and not any(p.suffix == ".safetensors" for p in files):
        run = files[0] if files else newest_run(checkpoints)
        if not files:
            say(f"using run {run} (the newest complete run under {checkpoints}/)")
        if not is_run_dir(run):
            raise ExportError(f"{run} is not a run folder (no best.safetensors) nor a task file")
        model, tasks, _ = load_run(run)
        if data_dir is not None:  # the user points at another copy of the data
            tasks = {n: build_task(t.spec, data_dir=data_dir) for n, t in tasks.items()}
        return model, tasks
    model = model_for_files(files, backbone, impl, say)
    tasks = {}
    for f in files:
        name = model.load_task(f, force=force)
        tasks[name] = build_task(model.spec(name), data_dir=data_dir)
    return model, tasks


def task_files(paths: list[str]) -> list[Path]:
    """The paths as given, or the task files of a folder ``palbert export`` wrote."""
    files = [Path(p) for p in paths]
    if len(files) == 1 and files[0].is_dir() and not is_run_dir(files[0]):
        # a folder of exported task files (palbert export --task all --out DIR)
        files = sorted(files[0].glob("*.safetensors")) or files
    return files


def model_for_files(
    files: list[Path],
    backbone: str | None = None,
    impl: str | None = None,
    say: Callable[[str], None] = print,
) -> PalBert:
    """The encoder task files load onto, with no task yet: ``backbone``, or the one the first
    file names (a fine-tuned encoder: the ``backbone/`` folder beside it)."""
    first = read_task_file(files[0]).backbone
    if backbone is None:
        beside = files[0].parent / "backbone"  # where `palbert export` writes it
        if first.get("fine_tuned") and not (beside / "config.json").is_file():
            raise ExportError(
                f"{files[0]} was trained with a fine-tuned encoder and no {beside}/ is beside "
                "it: pass --backbone with the folder written by `palbert export RUN_DIR`"
            )
        backbone = str(beside) if first.get("fine_tuned") else first.get("name")
        say(f"backbone {backbone} (from {files[0].name})")
    return PalBert.from_pretrained(backbone, impl=impl or first.get("impl", "transformers"))


MAX_INPUT_MB = 256  # predict holds every row of --input in memory (the CS224N files: < 3 MB)


def _check_input_size(path: Path, limit_mb: float) -> None:
    """Refuse an --input file larger than ``--max-input-mb`` before reading it."""
    size = path.stat().st_size if path.is_file() else 0  # the reader names other problems
    if size > limit_mb * 1e6:
        raise ExportError(
            f"--input {path} is {size / 1e6:,.0f} MB, over the limit of {limit_mb:g} MB: predict "
            "holds every row in memory; split the file, or raise the limit with --max-input-mb"
        )


def _input_task(task, path: Path, fmt: str):
    """The task reading a user's file as its unlabelled "test" split."""
    d = task.to_dict()
    d.pop("dataset", None)
    d.update(files={"test": str(path.resolve())}, format=fmt, extends=None)
    return build_task(d, cache_dir=False)


# -- the commands -------------------------------------------------------------------------


def _errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A task a model does not hold (``PalBert.task``'s ``KeyError``) as one line; palbert's
    own errors are one line through ``cli.main`` already."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyError as e:  # not a palbert error class; and its str() would quote the text
            msg = e.args[0] if e.args else e
            report(args.command, msg)
            return 2

    return run


def _run_arg(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        if not is_run_dir(args.run_dir):
            raise ExportError(f"{args.run_dir} is not a run folder (no best.safetensors)")
        return Path(args.run_dir)
    run = newest_run(args.checkpoints)
    print(f"using run {run} (the newest complete run under {args.checkpoints}/)")
    return run


@_errors
def _export(args: argparse.Namespace) -> int:
    if args.task is None and not args.backbone:
        raise ExportError("say what to export: --task NAME, --task all, or --backbone")
    run = _run_arg(args)
    loaded = load_run(run)
    note = unfinished(run)
    if note is not None:
        print(f"palbert export: warning: {note}", file=sys.stderr)
    model = loaded[0]
    out = _out_folder(args.out if args.out is not None else default_out(run))
    if args.backbone and not trained_backbone(run):
        raise ExportError(
            f"run {run} did not train its encoder (its best.safetensors has no backbone.* "
            f"keys): its tasks load on the stock backbone {model.backbone_info.name!r}"
        )
    # the task files of a run that fine-tuned its encoder work only on that encoder
    with_backbone = args.backbone or (args.task is not None and trained_backbone(run))
    if with_backbone:  # refused before anything is written
        check_backbone_out(model, out / "backbone", args.overwrite)
    remove_temporaries(out)  # a killed export's
    if args.task is not None:
        for path in export_run(run, args.task, out, args.dtype, loaded=loaded):
            tf_name = path.name.removesuffix(".safetensors")
            print(f"{tf_name} -> {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if with_backbone:
        folder = export_backbone(model, out / "backbone", overwrite=args.overwrite)
        print(f"backbone -> {folder}/ (the run's fine-tuned encoder)")
    if args.task is not None:
        files = out / ("*.safetensors" if args.task == "all" else f"{args.task}.safetensors")
        print(f"use them: palbert eval {files}")
    return 0


def _open(args: argparse.Namespace):
    model, tasks = open_models(
        args.paths,
        backbone=args.backbone,
        impl=args.impl,
        checkpoints=args.checkpoints,
        data_dir=args.data_dir,
        force=args.force,
    )
    if args.task:
        missing = [t for t in args.task if t not in tasks]
        if missing:
            raise ExportError(no_such_task(missing[0], tasks))
        tasks = {t: tasks[t] for t in args.task}
    return model, tasks


@_errors
def _eval(args: argparse.Namespace) -> int:
    device = parse_device(args.device, "--device")
    model, tasks = _open(args)
    results = {}
    for name, task in tasks.items():
        results[name] = evaluate(model, {name: task}, args.split, args.batch_size, device)[name]
        shown = "  ".join(f"{k} {v:.4f}" for k, v in results[name].items())
        print(f"{name:<12} {args.split:<6} {shown}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


@_errors
def _predict(args: argparse.Namespace) -> int:
    device = parse_device(args.device, "--device")
    model, tasks = _open(args)
    if args.input is not None and len(tasks) != 1:
        raise ExportError(f"--input goes to one task: add --task (one of {list(tasks)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)  # a killed predict's
    if args.input is not None:
        _check_input_size(Path(args.input), args.max_input_mb)
    for name, task in tasks.items():
        split = args.split
        if args.input is not None:
            task, split = _input_task(task, Path(args.input), args.input_format), "test"
        res = run_split(model, task, split, args.batch_size, device)
        # --input X/dev.csv must not overwrite the predictions of --split dev
        tag = f"input-{Path(args.input).stem}" if args.input is not None else args.split
        path = write_predictions(out, task, res.ids, res.predictions, tag, fmt=args.format)
        print(f"{name:<12} {len(res.ids):>6} rows -> {path}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_DIR|FILE",
        help="a run folder (default: the newest complete one) or exported task files",
    )
    p.add_argument("--backbone", help="encoder for task files (default: the one they name)")
    p.add_argument("--impl", choices=IMPLS, help="backbone implementation")
    p.add_argument("--task", action="append", help="only this task (repeatable)")
    p.add_argument("--data-dir", help="data folder (default: the run's, or $PALBERT_DATA_DIR)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="load task files on other weights")
    p.add_argument("--checkpoints", default=DEFAULT_OUTPUT_DIR, help="where runs are found")


def add_commands(sub: Any) -> None:
    """Register ``export``, ``eval`` and ``predict`` on the CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="write per-task files (and a fine-tuned encoder) from a run",
        description="Write one small safetensors file per task: its module and head, with the "
        "task spec, module config and the backbone it needs in the file's header.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="default: the newest run")
    p.add_argument("--task", help="a task name, or 'all' for one file per task")
    p.add_argument(
        "--out", help="folder for <task>.safetensors and backbone/ (default: RUN_DIR/export)"
    )
    p.add_argument("--dtype", choices=list(DTYPES), help="store weights in this dtype")
    p.add_argument(
        "--backbone",
        action="store_true",
        help="write the run's fine-tuned encoder as a transformers folder (OUT/backbone); "
        "--task does it too when the run trained its encoder",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace another encoder in OUT/backbone (its task files stop loading)",
    )
    p.add_argument("--checkpoints", default=DEFAULT_OUTPUT_DIR, help="where runs are found")
    p.set_defaults(func=_export)

    p = sub.add_parser("eval", help="dev metrics of a run or of exported task files")
    _common(p)
    p.add_argument("--split", default="dev")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="prediction files of a run or of exported task files")
    _common(p)
    p.add_argument("--split", default="test", help="dev or test (default test)")
    p.add_argument("--input", help="predict for this file's rows instead of a split")
    p.add_argument(
        "--input-format",
        default="auto",
        choices=INPUT_FORMATS,
        help="format of --input (columns as the task's spec names them)",
    )
    p.add_argument(
        "--max-input-mb",
        type=float,
        default=MAX_INPUT_MB,
        help=f"refuse an --input file larger than this (default {MAX_INPUT_MB})",
    )
    p.add_argument(
        "--out",
        default="predictions",
        help="output folder (--input X.csv writes <task>-input-X-output.csv)",
    )
    p.add_argument("--format", default="cs224n", choices=OUTPUT_FORMATS)
    p.set_defaults(func=_predict)
