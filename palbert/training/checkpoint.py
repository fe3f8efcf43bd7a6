"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A resume checkpoint is a folder (the run's ``last/``)::

    weights.safetensors   trainable weights, plus every task module and head
    state.safetensors     optimizer moments (by parameter name) and RNG states
    state.json            step, epoch, sampler and data streams, schedule, scaler, optimizer
                          hyper-parameters, best score so far, ...

It is written to a temporary folder beside it and moved into place with ``os.replace``, so
a kill at any moment leaves either the previous checkpoint or the new one, never half of
one. ``best.safetensors`` (a PalBert state dict) is written to a temporary file and renamed.
Every ``.safetensors`` file here is sealed (:mod:`palbert.integrity`): a hash in its header,
checked on every read, so a damaged checkpoint is refused instead of trained on.

::

    save_checkpoint(run_dir / "last", model, trainer, {"step": 10, ...})
    extra = load_checkpoint(run_dir / "last", model, trainer)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from palbert.files import write_dir_atomically
from palbert.integrity import PREFIX, read_sealed, save_sealed

FORMAT = 2  # 2: sealed safetensors files (a hash in each header)
FORMAT_KEY = PREFIX + "checkpoint_format"  # in the header of every sealed file of a run


def saved_weights(model: nn.Module, with_backbone: bool | None = None) -> dict[str, torch.Tensor]:
    """The state-dict entries a checkpoint keeps: all ``task_modules.*`` and ``heads.*``,
    and ``backbone.*`` when the backbone trains (``with_backbone`` None: when any backbone
    parameter requires grad)."""
    if with_backbone is None:
        with_backbone = any(p.requires_grad for p in model.backbone.parameters())
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith(("task_modules.", "heads.")) or (
            with_backbone and k.startswith("backbone.")
        ):
            out[k] = v.detach().contiguous().clone()
    return out


def checkpoint_dir(path: Path) -> Path | None:
    """``path`` if it holds a checkpoint, else the previous one left by an interrupted swap."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    old = path.parent / f".{path.name}.old"
    return old if (old / "state.json").is_file() else None


# -- RNG ----------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py = random.getstate()
    scalars = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, scalars


def set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = scalars["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))


# -- save / load --------------------------------------------------------------------------


def _optimizer_state(trainer: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = trainer.optimizer.state_dict()
    names = trainer.param_names
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        name = names[idx]
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{name}.{k}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(name, {})[k] = v
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer(trainer: Any, tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    names = trainer.param_names
    current = trainer.optimizer.state_dict()
    saved_names = [n for g in saved["param_groups"] for n in g["names"]]
    if saved_names != names:
        missing = sorted(set(saved_names) ^ set(names))[:5]
        raise ValueError(
            f"the checkpoint's trainable parameters differ from the model's (e.g. {missing}); "
            "was train.mode or the task list changed?"
        )
    state: dict[int, dict[str, Any]] = {}
    for idx, name in enumerate(names):
        prefix = f"optimizer.{name}."
        entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        entry.update(saved["scalars"].get(name, {}))
        if entry:
            state[idx] = entry
    groups = []
    for g, cur in zip(saved["param_groups"], current["param_groups"], strict=True):
        g = dict(g)
        g["params"] = cur["params"]
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: Path, model: nn.Module, trainer: Any, extra: dict[str, Any]) -> None:
    """Write a resume checkpoint folder atomically. ``extra`` is JSON data (step, sampler...)."""
    weights = saved_weights(model)
    opt_tensors, opt_json = _optimizer_state(trainer)
    rng_tensors, rng_json = rng_state()
    state = {
        "format": FORMAT,
        "step_count": trainer.step_count,
        "skipped_steps": trainer.skipped_steps,
        "optimizer": opt_json,
        "scheduler": _jsonable(trainer.scheduler.state_dict()),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": rng_json,
        **extra,
    }

    meta = {FORMAT_KEY: str(FORMAT)}

    def write(tmp: Path) -> None:
        save_sealed(weights, tmp / "weights.safetensors", meta)
        save_sealed({**opt_tensors, **rng_tensors}, tmp / "state.safetensors", meta)
        (tmp / "state.json").write_text(json.dumps(state, indent=1))

    write_dir_atomically(Path(path), write)


def load_checkpoint(path: Path, model: nn.Module, trainer: Any) -> dict[str, Any]:
    """Restore weights, optimizer, schedule, scaler and RNG; return the JSON state."""
    found = checkpoint_dir(Path(path))
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {path} (state.json missing)")
    state = read_state(found)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        got = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"checkpoint {found} has format {got}, expected {FORMAT}")
    weights, _ = read_sealed(found / "weights.safetensors")
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes differ: the recipe changed a module or head
        first = next((x.strip() for x in str(e).splitlines()[1:] if x.strip()), str(e))
        raise ValueError(
            f"checkpoint {found} does not fit the model the recipe builds ({first}); "
            "was a module or head of the recipe changed?"
        ) from None
    if unexpected:
        raise ValueError(f"checkpoint {found} has weights the model lacks: {unexpected[:5]}")
    tensors, _ = read_sealed(found / "state.safetensors")
    try:
        # Optimizer.load_state_dict moves the moments to each parameter's device itself
        opt = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
        _load_optimizer(trainer, opt, state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if trainer.scaler is not None and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        trainer.step_count = int(state["step_count"])
        trainer.skipped_steps = int(state["skipped_steps"])
        set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, state["rng"])
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"checkpoint {found} is damaged: state.json lacks {e}") from None
    return state


def read_state(folder: Path) -> Any:
    """A checkpoint's state.json, with a damaged or unreadable one reported in one line."""
    path = Path(folder) / "state.json"
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} is damaged or unreadable ({reason})") from None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return None  # callables (LambdaLR's lambdas) are rebuilt from the recipe


# -- the progressive schedule's position ----------------------------------------------------

PROGRESS_KEYS = ("progress_step", "progress_epoch")


def progress_record(progress: tuple[int, int]) -> dict[str, int]:
    """How best.safetensors' metadata and last/state.json record the (step, epoch) that the
    progressive schedule trained the saved weights under."""
    return dict(zip(PROGRESS_KEYS, progress, strict=True))


def recorded_progress(record: dict[str, Any]) -> tuple[int, int] | None:
    """The (step, epoch) of :func:`progress_record`, or None where none was recorded."""
    if not all(k in record for k in PROGRESS_KEYS):
        return None
    return int(record["progress_step"]), int(record["progress_epoch"])


__all__ = [
    "FORMAT",
    "FORMAT_KEY",
    "PROGRESS_KEYS",
    "checkpoint_dir",
    "load_checkpoint",
    "progress_record",
    "read_state",
    "recorded_progress",
    "save_checkpoint",
    "saved_weights",
]
