"""A training run from a recipe, and the run folder it leaves.

::

    from palbert.recipe import load_recipe
    from palbert.training.run import train, load_run
    run_dir = train(load_recipe("recipes/quickstart.yaml"))
    model, tasks, recipe = load_run(run_dir)              # the best dev checkpoint

The run folder, ``<output_dir>/<name>-<YYYYmmdd-HHMMSS>/``::

    recipe.yaml        the resolved recipe (every default filled in, tasks spelled out)
    last/              resume checkpoint: weights.safetensors, state.safetensors, state.json
    best.safetensors   PalBert state dict at the best dev score: every task_modules.* and
                       heads.* key, plus backbone.* when the backbone was trained
    metrics.jsonl      one JSON object per line: {"type": "train"|"eval"|"error", "step", ...}
    summary.json       final and best dev scores per task, steps, time
    tb/                TensorBoard event files
    COMPLETE           empty, written last when the run finished

The folder is made only once the backbone, the tokenizer and every task's data have loaded,
so a run that cannot start leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from palbert.backbones import load_tokenizer
from palbert.model import PalBert
from palbert.recipe import (
    Recipe,
    RecipeError,
    dump_recipe,
    load_recipe,
    resolve_data_dir,
)
from palbert.training.checkpoint import (
    atomic_save_file,
    atomic_write_text,
    checkpoint_dir,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    saved_weights,
)
from palbert.training.loop import (
    NonFiniteLoss,
    TaskStream,
    Trainer,
    evaluate,
    resolve_precision,
    selection_score,
)
from palbert.training.samplers import TaskSampler, expected_epochs


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
    cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref not in ("auto", "cuda", "cpu"):
        device = torch.device(device_pref)
    elif cuda:
        device = torch.device("cuda", local % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
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
    """Backbone from the recipe (unless given), each task's module and head (heads drawn
    from the recipe's seed)."""
    if model is None:
        model = PalBert.from_pretrained(
            recipe.backbone.name, impl=recipe.backbone.impl, module=recipe.module
        )
    torch.manual_seed(recipe.train.seed)
    for entry in recipe.tasks:
        head = tasks[entry.name].build_head(model.hidden_size)
        spec = tasks[entry.name].resolved_spec(recipe.train.max_length)
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
            keep = [
                line
                for line in path.read_text().splitlines()
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
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")
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


def train(
    recipe: Recipe,
    resume: str | Path | bool | None = None,
    *,
    progress: bool = True,
    stop_at_step: int | None = None,
) -> Path:
    """Train a recipe; return its run folder.

    ``resume``: a run folder, or True for the newest unfinished run of this recipe. The
    resumed run uses the folder's recipe.yaml (with this recipe's command-line overrides
    already applied by the caller when given through :func:`palbert.training.cli`).
    ``stop_at_step``: stop as if killed right after step k's checkpoint (for tests).
    """
    rank, world, device = init_distributed(recipe.train.device)
    main = rank == 0
    run_dir: Path | None = None
    if resume:
        run_dir = Path(resume) if not isinstance(resume, bool) else find_resumable(recipe)
        if not checkpoint_dir(run_dir / "last"):
            raise RecipeError(f"{run_dir} has no checkpoint to resume from (last/ is missing)")
        recipe = load_recipe(run_dir / "recipe.yaml")
    t = recipe.train
    precision = resolve_precision(t.precision, device)
    seed_everything(t.seed)

    # Everything that can fail on the user's setup happens before the run folder exists:
    # the task specs and data folder (cheap checks, nothing read yet), then the backbone,
    # whose unreachable-hub message (palbert.backbones.BackboneError) says what to do.
    data_dir = resolve_data_dir(recipe)
    tasks = build_tasks(recipe, data_dir)
    backbone = PalBert.from_pretrained(
        recipe.backbone.name, impl=recipe.backbone.impl, module=recipe.module
    )
    model = build_model(recipe, tasks, backbone)
    tokenizer = load_tokenizer(model.backbone_info)
    entries = {e.name: e for e in recipe.tasks}
    train_loaders, dev_loaders = {}, {}
    for name, task in tasks.items():
        e = entries[name]
        max_len = task.spec.max_length or t.max_length
        train_loaders[name] = task.batches(
            "train",
            tokenizer,
            batch_size=task.spec.batch_size or t.batch_size,
            shuffle=True,
            seed=t.seed,
            max_length=max_len,
            group_by_length=t.group_by_length,
            rank=rank,
            world_size=world,
            drop_last=world > 1,
            on_error=e.on_error,
        )
        if recipe.eval.split in task.splits():
            dev_loaders[name] = task.batches(
                recipe.eval.split,
                tokenizer,
                batch_size=t.eval_batch_size,
                max_length=max_len,
                on_error=e.on_error,
            )
    model.gradient_checkpointing(t.gradient_checkpointing)
    model.to(device)
    if world > 1:  # every process starts from rank 0's weights
        for p in model.parameters():
            dist.broadcast(p.data, 0)

    names = list(model.tasks)
    sizes = [_global_batches(train_loaders[n], world) for n in names]
    s = recipe.sampler
    probe = TaskSampler(
        s.kind,
        sizes,
        t.seed,
        1,
        s.alpha,
        s.temperature,
        s.epoch,
        s.steps_per_epoch,
        t.grad_accum,
        s.per,
    )
    if t.max_steps is not None:
        total = t.max_steps
        epochs = expected_epochs(total, probe.steps_per_epoch)
    else:
        epochs = t.epochs or 1
        total = epochs * probe.steps_per_epoch
    sampler = TaskSampler(
        s.kind,
        sizes,
        t.seed,
        epochs,
        s.alpha,
        s.temperature,
        s.epoch,
        s.steps_per_epoch,
        t.grad_accum,
        s.per,
    )
    o, sch = recipe.optimizer, recipe.schedule
    warmup = sch.warmup_steps if sch.warmup_steps is not None else int(sch.warmup_ratio * total)
    trainer = Trainer(
        model,
        losses={n: tasks[n].loss for n in names},
        weights={n: tasks[n].spec.loss_weight for n in names},
        lr=o.lr,
        task_lr=o.task_lr,
        head_lr=o.head_lr,
        weight_decay=o.weight_decay,
        betas=o.betas,
        eps=o.eps,
        warmup_steps=warmup,
        total_steps=total,
        decay=sch.decay,
        grad_clip=t.grad_clip,
        use_pcgrad=t.pcgrad,
        mixed=s.mixed,
        precision=precision,
        device=device,
        seed=t.seed,
        pad_id=int(tokenizer.pad_token_id or 0),
    )
    streams = {n: TaskStream(train_loaders[n]) for n in names}

    # The run folder.
    state: dict[str, Any] = {"best": None, "elapsed": 0.0, "examples": 0}
    resume_step = None
    if run_dir is not None:
        saved = load_checkpoint(run_dir / "last", model, trainer)
        sampler.load_state_dict(saved["sampler"])
        for n in names:
            streams[n].load_state_dict(saved["streams"][n])
        state.update({k: saved[k] for k in ("best", "elapsed", "examples")})
        resume_step = trainer.step_count
    elif main:
        run_dir = _new_run_dir(recipe)
        atomic_write_text(run_dir / "recipe.yaml", dump_recipe(resolved(recipe, tasks, data_dir)))
    if world > 1:
        box = [str(run_dir) if main else None]
        dist.broadcast_object_list(box, 0)
        run_dir = Path(box[0])
    log = RunLog(run_dir if main else None, resume_step)
    if main:
        _announce(recipe, model, run_dir, names, sizes, sampler, total, precision, device, world)

    try:
        _loop(
            recipe,
            model,
            tasks,
            trainer,
            sampler,
            streams,
            dev_loaders,
            names,
            total,
            run_dir,
            log,
            state,
            precision,
            device,
            main,
            progress,
            stop_at_step,
        )
    except NonFiniteLoss as err:
        log.write({"type": "error", "step": trainer.step_count + 1, "message": str(err)})
        last = run_dir / "last"
        err.args = (f"{err.args[0]} The last good checkpoint is {last}.",)
        raise
    finally:
        log.close()
    if world > 1:
        dist.barrier()
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


def _global_batches(loader: Any, world: int) -> int:
    """A task's batches per pass, the same number on every process."""
    if hasattr(loader, "data") and hasattr(loader, "batch_size"):
        n, g = len(loader.data), loader.batch_size * world
        return max(1, n // g if world > 1 else -(-n // g))
    return len(loader)


def _announce(recipe, model, run_dir, names, sizes, sampler, total, precision, device, world):
    rep = model.parameter_report()
    print(
        f"palbert: run {run_dir}\n"
        f"  backbone {recipe.backbone.name} ({recipe.backbone.impl}), module "
        f"{recipe.module.kind}, mode {recipe.train.mode}: {rep['trainable']:,} trainable of "
        f"{rep['total']:,} parameters\n"
        f"  tasks {', '.join(f'{n} ({s} batches)' for n, s in zip(names, sizes, strict=True))}\n"
        f"  sampler {recipe.sampler.kind}, epoch = {sampler.steps_per_epoch} steps "
        f"({recipe.sampler.epoch}), {total} steps in all; {precision} on {device}"
        + (f", {world} processes" if world > 1 else ""),
        file=sys.stderr,
        flush=True,
    )


def _loop(
    recipe,
    model,
    tasks,
    trainer,
    sampler,
    streams,
    dev_loaders,
    names,
    total,
    run_dir,
    log,
    state,
    precision,
    device,
    main,
    progress,
    stop_at_step,
):
    from tqdm import tqdm

    t = recipe.train
    every = recipe.eval.every
    save_every = t.save_every
    bar = tqdm(
        total=total,
        initial=trainer.step_count,
        disable=not (main and progress),
        mininterval=1.0 if sys.stderr.isatty() else 10.0,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    interval: dict[str, list[float]] = {}
    interval_examples, interval_start = 0, time.perf_counter()
    session_start = time.perf_counter()
    elapsed0 = state["elapsed"]
    last_scores = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    while trainer.step_count < total:
        window_idx = sampler.next_window()
        # The schedule this step trains under; evaluations and best.safetensors record it,
        # so a loaded model has exactly the PALs that were active.
        progress = (trainer.step_count, sampler.epoch)
        model.set_progress(*progress)
        window = [(names[i], streams[names[i]].next()) for i in window_idx]
        res = trainer.step(window)
        step = trainer.step_count
        state["examples"] += res.examples
        interval_examples += res.examples
        for task, v in res.losses.items():
            interval.setdefault(task, []).append(v)
        task_now = "+".join(dict.fromkeys(n for n, _ in window))
        bar.update(1)
        bar.set_postfix_str(
            f"{task_now} loss {sum(res.losses.values()):.3f} lr {res.lr:.2e}", refresh=False
        )
        if main and (step % t.log_every == 0 or step == total):
            now = time.perf_counter()
            rec = {
                "type": "train",
                "step": step,
                "epoch": sampler.epoch,
                "loss": {k: float(np.mean(v)) for k, v in interval.items()},
                "lr": res.lr,
                "examples_per_s": interval_examples / max(now - interval_start, 1e-9),
                "skipped_steps": trainer.skipped_steps,
            }
            if res.grad_norm is not None:
                rec["grad_norm"] = res.grad_norm
            if device.type == "cuda":
                rec["peak_cuda_memory"] = torch.cuda.max_memory_allocated(device)
            log.write(rec)
            interval, interval_examples, interval_start = {}, 0, now

        epoch_end = sampler.epoch_done
        do_eval = (
            step == total
            or (every == "epoch" and epoch_end)
            or (isinstance(every, int) and step % every == 0)
        )
        if do_eval and main and dev_loaders:
            scores = evaluate(model, tasks, dev_loaders, device, precision)
            score = selection_score(scores, tasks, recipe.eval.metric)
            if not np.isfinite(score):  # e.g. Pearson of constant predictions
                score = float("-inf")
            last_scores = {"step": step, "score": score, "scores": scores}
            log.write(
                {
                    "type": "eval",
                    "step": step,
                    "epoch": sampler.epoch + (0 if not epoch_end else 1),
                    "scores": scores,
                    "score": score,
                }
            )
            best = state["best"]
            if best is None or score > best["score"]:
                state["best"] = dict(last_scores)
                atomic_save_file(
                    saved_weights(model),
                    run_dir / "best.safetensors",
                    {
                        "step": step,
                        "epoch": sampler.epoch,
                        "progress_step": progress[0],
                        "progress_epoch": progress[1],
                        "score": score,
                        "format": "palbert-run",
                    },
                )
            bar.write(
                f"step {step}: dev {' '.join(f'{n} {s[tasks[n].primary_metric]:.3f}' for n, s in scores.items())}"
                f" | score {score:.4f} (best {state['best']['score']:.4f} at {state['best']['step']})"
            )
        do_save = step == total or (step % save_every == 0 if save_every else do_eval)
        if do_save and main:
            state["elapsed"] = elapsed0 + time.perf_counter() - session_start
            extra = {
                "sampler": sampler.state_dict(),
                "streams": {n: s.state_dict() for n, s in streams.items()},
                **{k: state[k] for k in ("best", "elapsed", "examples")},
            }
            save_checkpoint(run_dir / "last", model, trainer, extra)
        if stop_at_step is not None and step >= stop_at_step:
            bar.close()
            raise TrainingInterrupted(f"stopped after step {step} (stop_at_step)")
    bar.close()

    if main:
        elapsed = elapsed0 + time.perf_counter() - session_start
        summary = {
            "recipe": recipe.name,
            "steps": trainer.step_count,
            "epochs": sampler.epoch + (1 if sampler.epoch_done else 0),
            "examples": state["examples"],
            "time_s": round(elapsed, 1),
            "skipped_steps": trainer.skipped_steps,
            "final": last_scores,
            "best": state["best"],
            "selection_metric": recipe.eval.metric,
        }
        if device.type == "cuda":
            summary["peak_cuda_memory"] = torch.cuda.max_memory_allocated(device)
        atomic_write_text(run_dir / "summary.json", json.dumps(_json_safe(summary), indent=1))
        (run_dir / "COMPLETE").touch()


# -- reading a run back -------------------------------------------------------------------


def load_run(run_dir: str | Path, which: str = "best") -> tuple[PalBert, dict[str, Any], Recipe]:
    """Rebuild a run's model from its recipe.yaml and load its weights (safetensors only).

    ``which``: "best" (best.safetensors) or "last" (the resume checkpoint's weights).
    Returns (model in eval mode, tasks by name, recipe).
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    data_dir = Path(recipe.data_dir) if recipe.data_dir else None
    tasks = build_tasks(recipe, data_dir)
    model = build_model(recipe, tasks)
    if which == "best":
        path = run_dir / "best.safetensors"
    elif which == "last":
        found = checkpoint_dir(run_dir / "last")
        path = (found or run_dir / "last") / "weights.safetensors"
    else:
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    weights = load_file(str(path))
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"{path} has weights the model lacks: {unexpected[:5]}")
    meta = read_metadata(path) if which == "best" else {}
    if "progress_step" in meta:
        model.set_progress(int(meta["progress_step"]), int(meta["progress_epoch"]))
    elif "step" in meta:
        model.set_progress(int(meta["step"]), int(meta.get("epoch", 0)))
    else:
        state = (
            json.loads(((found or run_dir / "last") / "state.json").read_text())
            if which == "last"
            else {}
        )
        model.set_progress(
            int(state.get("step_count", 0)), int(state.get("sampler", {}).get("epoch", 0))
        )
    model.eval()
    return model, tasks, recipe


def _record(line: str) -> dict | None:
    """One metrics.jsonl record, or None for a blank or partial line (a run killed mid-write)."""
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


__all__ = ["TrainingInterrupted", "build_model", "build_tasks", "load_run", "train"]
