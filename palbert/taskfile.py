"""Per-task files: one task's module and head in a small safetensors file, and back.

A task file holds the weights of one task's module (PAL, low-rank or adapter) under
``module.*`` and of its head under ``head.*``, plus metadata in the safetensors header
(string -> string, values JSON-encoded) that says everything needed to rebuild and check it::

    palbert.format_version   "2"
    palbert.version          the palbert that wrote it
    palbert.task             the task's name
    palbert.spec             the task spec (kind, labels, label range, head, encoding, ...)
    palbert.module           the resolved module config
    palbert.active_layers    layers whose PAL is switched on (progressive depth), or null
    palbert.backbone         name, source, impl, config (hidden_size, num_hidden_layers,
                             vocab_size, ...), fingerprint of its weights, tokenizer
                             (fingerprint of its tokenizer), fine_tuned
    palbert.dtype            dtype of the stored tensors
    palbert.sha256           hash of the header and the tensor bytes, so a damaged file is
                             caught (:mod:`palbert.integrity`; format 1: tensor bytes only)

This module is the file format only: it knows tensors and header fields, not models.
:meth:`palbert.PalBert.save_task` and :meth:`palbert.PalBert.load_task` build on it::

    info = model.backbone_info
    backbone = backbone_header(info, model.fingerprint(), model.tokenizer_fingerprint())
    write_task_file(pack_task(model.task("sts"), backbone), path)
    tf = read_task_file("sts.safetensors")        # checked: hash, layout, metadata
    check_backbone(tf, name, config, fingerprint, tokenizer)  # refuses another encoder's file

Only safetensors is read for weights: nothing here unpickles a user's file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palbert.backbones import Backbone
from palbert.integrity import (
    PREFIX,
    IntegrityError,
    load_json,
    read_header,
    read_sealed,
    write_sealed,
)
from palbert.layers import ModuleConfig, TaskModule

FORMAT_VERSION = 2  # 2: the hash covers the header too (format 1: the tensor bytes only)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# What makes two encoders incompatible for a task file regardless of their weights.
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size")


class TaskFileError(ValueError):
    """A task file cannot be written, read or loaded; the message names the file and why."""


@dataclass
class TaskFile:
    """A task file's contents: what :func:`write_task_file` writes and
    :func:`read_task_file` returns (checked).

    ``spec``, ``module`` and ``backbone`` are plain mappings (the task spec, the resolved
    module config, and the backbone's name, source, impl, config, fingerprint, fine_tuned).
    """

    name: str
    spec: dict[str, Any]
    module: dict[str, Any]
    backbone: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    dtype: str = ""
    palbert_version: str = ""
    active_layers: list[int] | None = None
    path: Path | None = None

    @property
    def module_config(self) -> ModuleConfig:
        return ModuleConfig.from_dict(self.module)


# -- writing ------------------------------------------------------------------------------


def dtype_of(name: str | torch.dtype | None) -> torch.dtype | None:
    """A storage dtype by name ("float16", "bfloat16", "float32") or None (keep)."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.")
    if key not in DTYPES:
        raise TaskFileError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[key]


def config_dict(config: Any) -> dict[str, Any]:
    """What describes an encoder in a transformers config, without its bookkeeping keys."""
    d = config.to_dict()
    for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"):
        d.pop(k, None)
    return d


def backbone_header(
    info: Backbone, fingerprint: str, tokenizer: str | None, fine_tuned: bool = False
) -> dict[str, Any]:
    """The ``palbert.backbone`` field: the encoder a task file needs (name, source, impl,
    config), the fingerprint of its weights and of its tokenizer (None where the encoder has
    no tokenizer that fits it), and whether a run trained them (``fine_tuned``: it changes only
    the advice given when a file meets the wrong encoder)."""
    return {
        "name": info.name,
        "source": info.source,
        "impl": info.impl,
        "config": config_dict(info.config),
        "fingerprint": fingerprint,
        "tokenizer": tokenizer,
        "fine_tuned": bool(fine_tuned),
    }


def pack_task(
    task: Any,
    backbone: dict[str, Any],
    dtype: torch.dtype | None = None,
    model_dtype: torch.dtype = torch.float32,
) -> TaskFile:
    """The file of one task (a :class:`palbert.model.TaskRecord` with its spec): its
    ``module.*`` and ``head.*`` tensors copied to the CPU in ``dtype`` (None keeps theirs; the
    file then records the head's, or ``model_dtype`` for a head without parameters), and the
    header fields; ``backbone`` is :func:`backbone_header`'s."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, part in (("module", task.module), ("head", task.head)):
        for key, t in ({} if part is None else part.state_dict()).items():
            t = t.detach().cpu()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            tensors[f"{prefix}.{key}"] = t.contiguous().clone()  # no views shared in the file
    module: TaskModule | None = task.module
    active = None if module is None else module.active
    stored = dtype or next((p.dtype for p in task.head.parameters()), model_dtype)
    return TaskFile(
        name=task.name,
        spec=task.spec.to_dict(),
        module=task.config.to_dict(),
        backbone=backbone,
        tensors=tensors,
        dtype=str(stored).removeprefix("torch."),
        active_layers=None if active is None else sorted(int(i) for i in active),
    )


def write_task_file(tf: TaskFile, path: str | os.PathLike) -> Path:
    """Write ``tf`` to ``path`` (atomically, sealed: a hash of its header and tensor bytes in
    the header, see :mod:`palbert.integrity`)."""
    from palbert import __version__

    metadata = {
        "format": "pt",
        PREFIX + "format_version": str(FORMAT_VERSION),
        PREFIX + "version": tf.palbert_version or __version__,
        PREFIX + "task": tf.name,
        PREFIX + "spec": json.dumps(tf.spec),
        PREFIX + "module": json.dumps(tf.module),
        PREFIX + "active_layers": json.dumps(tf.active_layers),
        PREFIX + "backbone": json.dumps(tf.backbone),
        PREFIX + "dtype": tf.dtype,
    }
    return write_sealed(Path(path), tf.tensors, metadata)


# -- reading ------------------------------------------------------------------------------


def read_task_file(path: str | os.PathLike) -> TaskFile:
    """Read and check a task file: its hash (header and tensors), layout and metadata.

    Every problem (missing, truncated, corrupted, not a palbert file, a newer format) raises
    :class:`TaskFileError` naming the file.
    """
    path = Path(path)
    where = f"task file {path}"
    try:
        header = read_header(path, where)  # read once, bounded (palbert.integrity)
        meta = dict(header[1].get("__metadata__", {}))
        if PREFIX + "format_version" not in meta:
            raise TaskFileError(
                f"{where} has no palbert metadata (palbert.format_version); it is not a task "
                "file written by `palbert export` or PalBert.save_task()"
            )
        try:
            version = int(meta[PREFIX + "format_version"])
            if version < 1:
                raise ValueError
        except ValueError:
            raise TaskFileError(
                f"{where}: bad palbert.format_version {meta[PREFIX + 'format_version']!r}"
            ) from None
        if version > FORMAT_VERSION:
            raise TaskFileError(
                f"{where} uses task-file format {version}, newer than this palbert reads "
                f"({FORMAT_VERSION}); upgrade palbert"
            )
        # format 1 hashed the tensor bytes only (a format-2 file relabelled 1 still fails: its
        # hash covers the header)
        tensors, meta = read_sealed(path, where, data_only=version == 1, header=header)
    except IntegrityError as e:
        raise TaskFileError(str(e)) from None

    def field(key: str, required: bool = True) -> Any:
        raw = meta.get(PREFIX + key)
        if raw is None:
            if required:
                raise TaskFileError(f"{where}: palbert metadata lacks {PREFIX + key}")
            return None
        try:  # bounded in size (the header's) and depth
            return load_json(raw, f"{where}: palbert metadata {PREFIX + key}")
        except IntegrityError as e:
            raise TaskFileError(str(e)) from None

    spec, module, backbone = field("spec"), field("module"), field("backbone")
    for key, value in (("spec", spec), ("module", module), ("backbone", backbone)):
        if not isinstance(value, dict):
            raise TaskFileError(f"{where}: palbert metadata {PREFIX + key} must be a JSON object")
    config = backbone.get("config")
    if not isinstance(config, dict) or any(k not in config for k in SHAPE_KEYS):
        raise TaskFileError(f"{where}: palbert.backbone.config lacks {', '.join(SHAPE_KEYS)}")
    name = meta.get(PREFIX + "task") or spec.get("name")
    if not name:
        raise TaskFileError(f"{where}: palbert metadata names no task")
    active = field("active_layers", required=False)
    layers = config["num_hidden_layers"]
    if active is not None and (
        not isinstance(active, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in active)
        or not all(0 <= i < layers for i in active)
    ):
        raise TaskFileError(
            f"{where}: palbert.active_layers must be null or a list of layer indices in "
            f"0..{layers - 1}, not {active!r}"
        )
    # format 1's hash covers the bytes, not the header's dtypes: F32 read as I32 would pass it
    dtype = meta.get(PREFIX + "dtype", "")
    odd = [k for k, t in tensors.items() if t.dtype != DTYPES.get(dtype)]
    if odd:
        raise TaskFileError(
            f"{where} is corrupted: tensor {odd[0]} is stored as "
            f"{str(tensors[odd[0]].dtype).removeprefix('torch.')} but palbert.dtype is {dtype!r}"
        )
    bad = [k for k in tensors if not k.startswith(("module.", "head."))]
    if bad:
        raise TaskFileError(f"{where}: unexpected tensors {bad[:5]} (only module.* and head.*)")
    return TaskFile(
        path=path,
        name=name,
        spec=spec,
        module=module,
        backbone=backbone,
        tensors=tensors,
        dtype=dtype,
        palbert_version=meta.get(PREFIX + "version", "?"),
        active_layers=active,
    )


def _describe(name: str, config: dict[str, Any]) -> str:
    shape = ", ".join(f"{k}={config.get(k)}" for k in SHAPE_KEYS)
    return f"{name!r} ({shape})"


def check_backbone(
    tf: TaskFile,
    name: str,
    config: dict[str, Any],
    fingerprint: Callable[[], str],
    force: bool = False,
    tokenizer: Callable[[], str] | None = None,
) -> None:
    """Refuse a task file made for another encoder than ``name`` (with transformers config
    ``config``): a different shape always, different weights (``fingerprint()``) or another
    tokenizer (``tokenizer()``, both called only when needed) unless ``force``. Files written
    before palbert recorded the tokenizer carry no ``tokenizer`` and are not checked for it."""
    want = tf.backbone["config"]
    wanted = tf.backbone.get("name", "?")
    if any(want.get(k) != config.get(k) for k in SHAPE_KEYS):
        raise TaskFileError(
            f"task file {tf.path} was exported for backbone {_describe(wanted, want)} "
            f"but this model's backbone is {_describe(name, config)}; load it on "
            f"PalBert.from_pretrained({wanted!r})"
        )
    if force:
        return
    fp = tf.backbone.get("fingerprint")
    if fp is not None and fp != (mine := fingerprint()):
        hint = (
            "it was trained with a fine-tuned encoder: load it on the backbone/ folder that "
            "`palbert export` writes beside its task files"
            if tf.backbone.get("fine_tuned")
            else f"load it on PalBert.from_pretrained({wanted!r})"
        )
        raise TaskFileError(
            f"task file {tf.path} needs backbone {wanted!r} with weights fingerprint {fp}, "
            f"but this model's backbone {name!r} has fingerprint {mine}; {hint}, or pass "
            "force=True (--force) to load it anyway"
        )
    want_tok = tf.backbone.get("tokenizer")
    mine = tokenizer() if want_tok is not None and tokenizer is not None else None
    if mine is not None and want_tok != mine:  # None: this encoder has no fitting tokenizer
        raise TaskFileError(
            f"task file {tf.path} was trained with a tokenizer of fingerprint {want_tok}, but "
            f"this model's backbone {name!r} tokenizes differently (fingerprint {mine}): its "
            "words would map to other ids; load it on the encoder folder it was exported with "
            "(its tokenizer files included), or pass force=True (--force) to load it anyway"
        )


def fill_module(part: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    """Copy the file's ``prefix``* tensors into ``part`` (converted to its dtype); refuse
    missing, extra or misshapen tensors without changing ``part``."""
    sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = part.state_dict()
    missing = sorted(set(own) - set(sub))
    extra = sorted(set(sub) - set(own))
    if missing or extra:
        raise TaskFileError(
            f"{where}: {prefix}* tensors do not fit the {prefix[:-1]} its metadata describes "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    wrong = [k for k in own if own[k].shape != sub[k].shape]
    if wrong:
        k = wrong[0]
        raise TaskFileError(
            f"{where}: {prefix}{k} has shape {tuple(sub[k].shape)}, expected {tuple(own[k].shape)}"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(sub[k].to(t.dtype))


__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "TaskFile",
    "TaskFileError",
    "backbone_header",
    "check_backbone",
    "config_dict",
    "dtype_of",
    "fill_module",
    "pack_task",
    "read_task_file",
    "write_task_file",
]
