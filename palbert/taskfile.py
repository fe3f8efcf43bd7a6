"""Per-task files: one task's module and head in a small safetensors file, and back.

A task file holds the weights of one task's module (PAL, low-rank or adapter) under
``module.*`` and of its head under ``head.*``, plus metadata in the safetensors header
(string -> string, values JSON-encoded) that says everything needed to rebuild and check it::

    palbert.format_version   "1"
    palbert.version          the palbert that wrote it
    palbert.task             the task's name
    palbert.spec             the task spec (kind, labels, label range, head, encoding, ...)
    palbert.module           the resolved module config
    palbert.active_layers    layers whose PAL is switched on (progressive depth), or null
    palbert.backbone         name, source, impl, config (hidden_size, num_hidden_layers,
                             vocab_size, ...), fingerprint of its weights, fine_tuned
    palbert.dtype            dtype of the stored tensors
    palbert.sha256           hash of the tensor bytes, so a damaged file is caught

Usage::

    export_task(model, "sts", "sts.safetensors", dtype="float16", spec=task.spec)
    model = PalBert.from_pretrained("minilm")
    load_task(model, "sts.safetensors")              # or model.load_task(...)
    predict(model, "sts", [("a cat sits", "a cat is sitting")])   # -> [4.1]

Only safetensors is read for weights: nothing here unpickles a user's file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from palbert.backbones import fingerprint
from palbert.files import atomic_write_bytes
from palbert.layers import ModuleConfig, build_module
from palbert.tasks.task import DEFAULT_MAX_LENGTH

if TYPE_CHECKING:
    from palbert.model import PalBert
    from palbert.tasks.spec import TaskSpec

FORMAT_VERSION = 1
PREFIX = "palbert."
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# What makes two encoders incompatible for a task file regardless of their weights.
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "vocab_size")

_MAX_HEADER = 100 * 1024 * 1024  # a task file's JSON header is a few KB; bigger means damage


class TaskFileError(ValueError):
    """A task file cannot be written, read or loaded; the message names the file and why."""


@dataclass
class TaskFile:
    """A task file's contents, checked (see :func:`read_task_file`)."""

    path: Path
    name: str
    spec: dict[str, Any]
    module: dict[str, Any]
    backbone: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    dtype: str
    palbert_version: str
    active_layers: list[int] | None = None

    @property
    def module_config(self) -> ModuleConfig:
        return ModuleConfig.from_dict(self.module)


# -- the model's task specs ---------------------------------------------------------------


def task_specs(model: nn.Module) -> dict[str, TaskSpec]:
    """The specs of ``model``'s tasks (see :meth:`PalBert.add_task`)."""
    return model.specs


def register_spec(model: PalBert, name: str, spec: Any) -> None:
    """Set the spec of a task of ``model``."""
    model.specs[name] = _as_spec(spec, name)


def _as_spec(spec: Any, name: str | None = None) -> TaskSpec:
    from palbert.tasks.spec import TaskSpec

    return TaskSpec.coerce(spec, name)


# -- fingerprints, cached while the weights do not change ---------------------------------


def backbone_fingerprint(model: PalBert) -> str:
    """:func:`palbert.backbones.fingerprint` of the model's encoder, recomputed only when a
    weight changed (torch bumps a tensor's ``_version`` on every in-place update)."""
    tensors = list(model.backbone.state_dict().values())
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    cached = model.__dict__.get("_palbert_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    fp = fingerprint(model.backbone)
    model.__dict__["_palbert_fingerprint"] = (key, fp)
    return fp


def _config_dict(model: PalBert) -> dict[str, Any]:
    d = model.info.config.to_dict()
    # keep what describes the encoder; drop transformers' bookkeeping
    for k in ("transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures"):
        d.pop(k, None)
    return d


# -- writing ------------------------------------------------------------------------------


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TaskFileError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return DTYPES[name]


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with a hash of the data section in the header.

    The data section does not depend on the metadata, so it is hashed from a first
    serialization and the file written with the hash included.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    digest = hashlib.sha256(blob[8 + n :]).hexdigest()
    return save(tensors, metadata={**metadata, PREFIX + "sha256": digest})


def task_tensors(
    model: PalBert, task: str, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """``module.*`` and ``head.*`` tensors of one task, on CPU, floats cast to ``dtype``."""
    out: dict[str, torch.Tensor] = {}
    parts = [("module", model.task_modules[task] if task in model.task_modules else None)]
    parts.append(("head", model.heads[task]))
    for prefix, part in parts:
        if part is None:
            continue
        for key, t in part.state_dict().items():
            t = t.detach().cpu()
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[f"{prefix}.{key}"] = t.contiguous().clone()  # clone: no views shared in the file
    return out


def export_task(
    model: PalBert,
    task: str,
    path: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    spec: Any = None,
    *,
    fine_tuned: bool = False,
    backbone_fp: str | None = None,
) -> Path:
    """Write task ``task`` of ``model`` to ``path`` (one safetensors file) and return it.

    ``dtype`` ("float16", "bfloat16", "float32" or None for the model's own) is the dtype
    the weights are stored in. ``spec`` is the task's TaskSpec (or Task, or mapping); None
    takes the one the model knows (a task loaded from a file or registered). ``fine_tuned``
    records that the backbone's weights are a fine-tuned encoder (a run of train mode
    "full"), which only changes the advice given when the fingerprint does not match;
    ``backbone_fp`` skips recomputing the fingerprint.

    >>> export_task(model, "sts", "sts.safetensors", dtype="float16", spec=sts.spec)  # doctest: +SKIP
    """
    from palbert import __version__

    path = Path(path)
    if task not in model.heads:
        raise TaskFileError(f"cannot export task {task!r}: the model has tasks {model.tasks}")
    if spec is None:
        spec = task_specs(model).get(task)
        if spec is None:
            raise TaskFileError(
                f"cannot export task {task!r}: its spec is unknown; pass spec=<the task's spec> "
                "(or load the model from a run folder)"
            )
    spec = _as_spec(spec, task)
    dt = _dtype(dtype)
    tensors = task_tensors(model, task, dt)
    module = model.task_modules[task] if task in model.task_modules else None
    active = None
    if module is not None and hasattr(module, "active"):
        active = sorted(int(i) for i in module.active)
    stored = dt or next(model.heads[task].parameters(), next(model.backbone.parameters())).dtype
    backbone = {
        "name": model.info.name,
        "source": model.info.source,
        "impl": model.info.impl,
        "config": _config_dict(model),
        "fingerprint": backbone_fp or backbone_fingerprint(model),
        "fine_tuned": bool(fine_tuned),
    }
    metadata = {
        "format": "pt",
        PREFIX + "format_version": str(FORMAT_VERSION),
        PREFIX + "version": __version__,
        PREFIX + "task": task,
        PREFIX + "spec": json.dumps(spec.to_dict()),
        PREFIX + "module": json.dumps(model.task_configs[task].to_dict()),
        PREFIX + "active_layers": json.dumps(active),
        PREFIX + "backbone": json.dumps(backbone),
        PREFIX + "dtype": str(stored).removeprefix("torch."),
    }
    atomic_write_bytes(path, _serialize(tensors, metadata))
    return path


# -- reading ------------------------------------------------------------------------------


def read_task_file(path: str | os.PathLike) -> TaskFile:
    """Read and check a task file: safetensors layout, palbert metadata, the data hash.

    Every problem (missing, truncated, corrupted, not a palbert file, a newer format) raises
    :class:`TaskFileError` naming the file.
    """
    from safetensors.torch import load

    path = Path(path)
    where = f"task file {path}"
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise TaskFileError(f"{where} does not exist") from None
    except OSError as e:
        raise TaskFileError(f"{where} cannot be read: {e}") from e
    if len(blob) < 8:
        raise TaskFileError(f"{where} is not a safetensors file (only {len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise TaskFileError(
            f"{where} is truncated or not a safetensors file (header of {n} bytes, file of "
            f"{len(blob)} bytes)"
        )
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise TaskFileError(f"{where} is corrupted: its header is not valid JSON ({e})") from e
    meta = header.get("__metadata__") or {}
    if PREFIX + "format_version" not in meta:
        raise TaskFileError(
            f"{where} has no palbert metadata (palbert.format_version); it is not a task file "
            "written by `palbert export` or export_task()"
        )
    try:
        version = int(meta[PREFIX + "format_version"])
    except ValueError:
        raise TaskFileError(
            f"{where}: bad palbert.format_version {meta[PREFIX + 'format_version']!r}"
        ) from None
    if version > FORMAT_VERSION:
        raise TaskFileError(
            f"{where} uses task-file format {version}, newer than this palbert reads "
            f"({FORMAT_VERSION}); upgrade palbert"
        )
    digest = meta.get(PREFIX + "sha256")
    if digest is not None and hashlib.sha256(blob[8 + n :]).hexdigest() != digest:
        raise TaskFileError(
            f"{where} is corrupted or truncated: its weights do not match the hash in its header"
        )
    try:
        tensors = load(blob)
    except Exception as e:  # safetensors raises its own error type for a damaged layout
        raise TaskFileError(f"{where} is corrupted: {e}") from e

    def field(key: str, required: bool = True) -> Any:
        raw = meta.get(PREFIX + key)
        if raw is None:
            if required:
                raise TaskFileError(f"{where}: palbert metadata lacks {PREFIX + key}")
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise TaskFileError(
                f"{where}: palbert metadata {PREFIX + key} is not valid JSON"
            ) from e

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
        dtype=meta.get(PREFIX + "dtype", ""),
        palbert_version=meta.get(PREFIX + "version", "?"),
        active_layers=field("active_layers", required=False),
    )


def _describe(name: str, config: dict[str, Any]) -> str:
    shape = ", ".join(f"{k}={config.get(k)}" for k in SHAPE_KEYS)
    return f"{name!r} ({shape})"


def check_backbone(tf: TaskFile, model: PalBert, force: bool = False) -> None:
    """Refuse a task file made for another encoder: a different shape always, different
    weights (fingerprint) unless ``force``."""
    want = tf.backbone["config"]
    have = model.info.config.to_dict()
    if any(want.get(k) != have.get(k) for k in SHAPE_KEYS):
        raise TaskFileError(
            f"task file {tf.path} was exported for backbone {_describe(tf.backbone.get('name', '?'), want)} "
            f"but this model's backbone is {_describe(model.info.name, have)}; load it on "
            f"PalBert.from_pretrained({tf.backbone.get('name', '?')!r})"
        )
    fp = tf.backbone.get("fingerprint")
    if fp is None or force:
        return
    mine = backbone_fingerprint(model)
    if fp != mine:
        hint = (
            "it was trained with a fine-tuned encoder: load the backbone exported by "
            "`palbert export RUN_DIR --backbone`"
            if tf.backbone.get("fine_tuned")
            else f"load it on PalBert.from_pretrained({tf.backbone.get('name', '?')!r})"
        )
        raise TaskFileError(
            f"task file {tf.path} needs backbone {tf.backbone.get('name', '?')!r} with weights "
            f"fingerprint {fp}, but this model's backbone {model.info.name!r} has fingerprint "
            f"{mine}; {hint}, or pass force=True (--force) to load it anyway"
        )


# -- loading ------------------------------------------------------------------------------


def _load_part(part: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
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
            t.copy_(sub[k].to(t.dtype))  # back to the model's dtype (file may be float16)


def load_task(
    model: PalBert,
    path: str | os.PathLike,
    name: str | None = None,
    replace: bool = False,
    force: bool = False,
) -> str:
    """Add the task stored in ``path`` to ``model`` and return its name.

    ``name`` renames it (default: the name in the file). A task of that name already in the
    model needs ``replace=True``. A file for an encoder of another shape is refused; one for
    other weights (fingerprint) unless ``force=True``. Weights are converted to the model's
    dtype and device; nothing of the model changes when loading fails.

    >>> model = PalBert.from_pretrained("minilm")                     # doctest: +SKIP
    >>> load_task(model, "sts.safetensors"); model.tasks              # doctest: +SKIP
    ['sts']
    """
    from palbert.tasks.heads import build_head

    tf = read_task_file(path)
    where = f"task file {tf.path}"
    name = name or tf.name
    if name in model.heads and not replace:
        raise TaskFileError(
            f"task {name!r} is already loaded; pass replace=True to replace it, or name=... to "
            "load it under another name"
        )
    check_backbone(tf, model, force=force)
    try:
        spec = _as_spec(tf.spec, name)
        config = tf.module_config.resolved(model.info.hidden_size)
    except (ValueError, TypeError) as e:  # DataError is a ValueError
        raise TaskFileError(f"{where}: its metadata does not describe a valid task: {e}") from e

    # Build and fill everything aside first, so a bad file leaves the model as it was.
    hidden = model.info.hidden_size
    head = build_head(
        spec.head,
        hidden,
        num_labels=spec.num_labels or 1,
        kind=spec.kind,
        encoding=spec.encoding,
        label_range=spec.label_range,
    )
    _load_part(head, tf.tensors, "head.", where)
    module = build_module(config, hidden, model.info.num_layers)
    if module is not None:
        _load_part(module, tf.tensors, "module.", where)
    elif any(k.startswith("module.") for k in tf.tensors):
        raise TaskFileError(f"{where}: module kind 'none' but the file holds module.* tensors")

    ref = next(model.backbone.parameters())
    if name in model.heads:
        model.remove_task(name)
    model.add_task(name, head.to(device=ref.device, dtype=ref.dtype), module=config)
    if module is not None:
        model.task_modules[name].load_state_dict(module.state_dict())
        if tf.active_layers is not None and hasattr(model.task_modules[name], "active"):
            model.task_modules[name].active = set(tf.active_layers)
    model.heads[name].train(model.training)
    if name in model.task_modules:
        model.task_modules[name].train(model.training)
    task_specs(model)[name] = spec
    return name


def unload_task(model: PalBert, name: str) -> None:
    """Remove task ``name`` (module, head and spec) from the model."""
    if name not in model.heads:
        raise KeyError(f"no task {name!r} to unload; tasks: {model.tasks}")
    model.remove_task(name)
    task_specs(model).pop(name, None)


# -- predicting ---------------------------------------------------------------------------


def _tokenizer(model: PalBert):
    tok = model.__dict__.get("_palbert_tokenizer")
    if tok is None:
        from palbert.backbones import load_tokenizer

        tok = model.__dict__["_palbert_tokenizer"] = load_tokenizer(model.info)
    return tok


def _max_length(n: int | None, tokenizer: Any) -> int:
    # as palbert.tasks.Task does in training: the spec's length, capped by the tokenizer's
    n = n or DEFAULT_MAX_LENGTH
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < n else int(n)


def _examples(spec: TaskSpec, inputs: Iterable[str | Sequence[str]]) -> list:
    from palbert.tasks.readers import Example

    out = []
    for i, x in enumerate(inputs):
        if isinstance(x, str):
            a, b = x, None
        elif isinstance(x, Sequence) and len(x) == 2 and all(isinstance(s, str) for s in x):
            a, b = x
        else:
            raise ValueError(f"input {i}: expected a string or a pair of strings, not {x!r}")
        if spec.pair and b is None:
            raise ValueError(f"task {spec.name!r} takes sentence pairs; input {i} is one string")
        if not spec.pair and b is not None:
            raise ValueError(f"task {spec.name!r} takes single sentences; input {i} is a pair")
        out.append(Example(id=str(i), text_a=a, text_b=b, label=None, line=i))
    return out


def postprocess(spec: TaskSpec, outputs: torch.Tensor) -> list:
    """Head outputs -> floats (regression) or dicts with label, label_id and probs."""
    outputs = outputs.detach().float().cpu()
    if spec.kind == "regression":
        return outputs.reshape(-1).tolist()
    probs = outputs.softmax(-1)
    labels = list(spec.labels or [str(i) for i in range(outputs.shape[-1])])
    rows = []
    for p in probs.tolist():
        best = max(range(len(p)), key=p.__getitem__)
        rows.append(
            {"label": labels[best], "label_id": best, "probs": dict(zip(labels, p, strict=True))}
        )
    return rows


def predict(
    model: PalBert,
    task: str,
    inputs: Iterable[str | Sequence[str]],
    batch_size: int = 32,
    device: str | torch.device | None = None,
    max_length: int | None = None,
) -> list:
    """Predictions of ``task`` for sentences (str) or pairs ((a, b)), in input order.

    Regression: a list of floats. Classification: a list of
    ``{"label": name, "label_id": i, "probs": {name: p, ...}}``. Runs in eval mode under
    ``torch.no_grad()`` in batches of ``batch_size``; ``device`` moves the model there
    (default: where it is). Text is tokenized with the backbone's tokenizer exactly as in
    training (the spec's encoding and ``max_length``).

    >>> predict(model, "sts", [("a man plays", "a man is playing")])   # doctest: +SKIP
    [4.2]
    """
    from palbert.tasks.batching import tokenize_examples

    if task not in model.heads:
        raise KeyError(f"no task {task!r}; tasks: {model.tasks}")
    spec = task_specs(model).get(task)
    if spec is None:
        raise TaskFileError(
            f"task {task!r} has no spec: load it with load_task() or register its spec with "
            "palbert.taskfile.register_spec(model, name, spec)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    examples = _examples(spec, inputs)
    if not examples:
        return []
    if device is not None:
        model.to(device)
    dev = next(model.backbone.parameters()).device
    data = tokenize_examples(
        examples,
        _tokenizer(model),
        max_length=_max_length(max_length or spec.max_length, _tokenizer(model)),
        encoding=spec.encoding,
        labels_dtype=None,
    )
    vocab = model.info.config.vocab_size
    top = max(int(seg.input_ids.max(initial=0)) for seg in (data.a, data.b) if seg is not None)
    if top >= vocab:  # e.g. a random:tiny encoder with the bert-base tokenizer
        raise ValueError(
            f"the tokenizer of backbone {model.info.name!r} produced token id {top} but the "
            f"encoder's vocab_size is {vocab}"
        )
    # longest first: less padding per batch; results go back in input order
    order = sorted(range(len(data)), key=lambda i: -int(data.lengths[i]))
    results: list = [None] * len(data)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                batch = data.collate(idx)
                batch = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                for i, r in zip(idx, postprocess(spec, model(batch, task=task)), strict=True):
                    results[i] = r
    finally:
        model.train(was_training)
    return results
