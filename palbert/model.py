"""The multi-task model: one shared encoder, per-task modules and heads.

>>> from palbert import PalBert, ModuleConfig
>>> from palbert.tasks import build_task
>>> model = PalBert.from_pretrained("minilm", module=ModuleConfig(kind="pal"))
>>> sst = build_task("sst", data_dir="../shared/data/cs224n")
>>> model.add_task("sst", sst.build_head(model.hidden_size), spec=sst.resolved_spec())
>>> logits = model(batch, task="sst")       # one task for the whole batch
>>> outs = model(batch_with_task_ids)       # mixed batch: {task: outputs of its rows}
>>> model.predict("sst", ["a gripping film"])
>>> model.save_task("sst", "sst.safetensors"); model.load_task("sst.safetensors", name="sst2")

The model owns its tasks: one :class:`TaskRecord` each (spec, module config, module, head),
so a model from any source (a run folder, task files, code) can predict and be exported.
State-dict keys: ``backbone.*`` (transformers' BertModel keys), ``task_modules.<task>.*``,
``heads.<task>.*``: the records' modules and heads are registered there, and only
:meth:`PalBert._attach` and :meth:`PalBert.remove_task` change them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from palbert.backbones import (
    EMBEDDED_BACKBONE,
    Backbone,
    check_tokenizer,
    fingerprint,
    load_backbone,
    load_tokenizer,
    tokenizer_fingerprint,
)
from palbert.choices import TRAIN_MODES, Impl, TrainMode, check_choice
from palbert.encoded import Encoded
from palbert.errors import BackboneError
from palbert.layers import ModuleConfig, Route, Router, TaskModule, build_module
from palbert.masks import attention_dtype
from palbert.taskfile import (
    TaskFileError,
    backbone_header,
    check_backbone,
    dtype_of,
    fill_module,
    pack_task,
    read_task_file,
    write_task_file,
)
from palbert.tasks.batching import SIDES
from palbert.tasks.heads import build_head
from palbert.tasks.spec import TaskSpec, no_such_task


@dataclass(frozen=True)
class TaskRecord:
    """One task of a model: what :meth:`PalBert.task` returns."""

    name: str
    spec: TaskSpec | None  # labels, encoding, max_length...: None only for code-built tasks
    config: ModuleConfig  # resolved (kind "none": no module)
    module: TaskModule | None
    head: nn.Module


class PalBert(nn.Module):
    """A shared BERT encoder with named tasks, each with its own module and head."""

    def __init__(self, backbone: Backbone, module: ModuleConfig | None = None) -> None:
        super().__init__()
        self.backbone_info = backbone  # name, source, impl and config of the encoder
        self.backbone = backbone.model
        self.module_config = module or ModuleConfig(kind="pal")
        self._records: dict[str, TaskRecord] = {}  # one per task, in the order they came
        # the records' parameters, registered under the state-dict keys of the module docstring
        self.task_modules = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.router = Router(self.task_modules)
        self.router.inject(backbone.layers)
        self.train_mode: TrainMode = "full"
        self._tokenizer: Any = None
        self._fingerprint: tuple[tuple, str] | None = None

    @classmethod
    def from_pretrained(
        cls,
        backbone: str = EMBEDDED_BACKBONE,
        impl: Impl = "transformers",
        module: ModuleConfig | None = None,
    ) -> PalBert:
        """Load an encoder (hub name, folder, ``minilm`` or ``random:<shape>``) and wrap it;
        the model comes in eval mode, as transformers' models do."""
        return cls(load_backbone(backbone, impl=impl), module=module).eval()

    @property
    def hidden_size(self) -> int:
        return self.backbone_info.hidden_size

    @property
    def num_layers(self) -> int:
        return self.backbone_info.num_layers

    @property
    def tokenizer(self) -> Any:
        """The backbone's tokenizer, loaded once and checked against the encoder's vocabulary."""
        if self._tokenizer is None:
            tokenizer = load_tokenizer(self.backbone_info)
            check_tokenizer(self.backbone_info, tokenizer)
            self._tokenizer = tokenizer
        return self._tokenizer

    def fingerprint(self) -> str:
        """:func:`palbert.backbones.fingerprint` of the encoder's weights, recomputed only when
        a weight changed (torch bumps a tensor's ``_version`` on every in-place update)."""
        key = tuple(
            (t.data_ptr(), t._version, t.dtype) for t in self.backbone.state_dict().values()
        )
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, fingerprint(self.backbone))
        return self._fingerprint[1]

    def tokenizer_fingerprint(self) -> str | None:
        """:func:`palbert.backbones.tokenizer_fingerprint` of :attr:`tokenizer`; None when no
        tokenizer fits the encoder (a random test encoder smaller than the shared vocabulary),
        so a task file of it records none."""
        try:
            return tokenizer_fingerprint(self.tokenizer)
        except BackboneError:
            return None

    # -- tasks ---------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self._records)

    def task(self, name: str) -> TaskRecord:
        """Everything the model holds for task ``name``."""
        if name not in self._records:
            raise KeyError(no_such_task(name, self.tasks))
        return self._records[name]

    @property
    def specs(self) -> dict[str, TaskSpec | None]:
        """Each task's spec (read from its record)."""
        return {name: r.spec for name, r in self._records.items()}

    @property
    def task_configs(self) -> dict[str, ModuleConfig]:
        """Each task's resolved module config (read from its record)."""
        return {name: r.config for name, r in self._records.items()}

    def spec(self, name: str) -> TaskSpec:
        """The spec of task ``name``; an error says how to give one where it is missing."""
        spec = self.task(name).spec
        if spec is None:
            raise KeyError(
                f"task {name!r} has no spec: add it with add_task(..., spec=...) or load it with "
                "load_task()"
            )
        return spec

    def add_task(
        self,
        name: str,
        head: nn.Module,
        module: ModuleConfig | None = None,
        spec: TaskSpec | Mapping | None = None,
    ) -> None:
        """Add a task with its head; its module follows ``module`` or the model's default.

        ``spec`` (a TaskSpec, a mapping or a :class:`palbert.tasks.Task`) is what
        :meth:`predict` and :meth:`save_task` need: labels, encoding and max_length.
        """
        if name in self._records:
            raise ValueError(f"task {name!r} is already in the model; remove it first")
        spec = None if spec is None else TaskSpec.coerce(spec, name)
        config = (module or self.module_config).resolved(self.hidden_size)
        self._attach(
            name, head, config, build_module(config, self.hidden_size, self.num_layers), spec
        )

    def _attach(
        self,
        name: str,
        head: nn.Module,
        config: ModuleConfig,
        module: TaskModule | None,
        spec: TaskSpec | None,
    ) -> None:
        # the one place a task enters the model: on the encoder's device and dtype, in the
        # model's train mode and training flag
        ref = next(self.backbone.parameters())
        record = TaskRecord(
            name,
            spec,
            config,
            None if module is None else module.to(device=ref.device, dtype=ref.dtype),
            head.to(device=ref.device, dtype=ref.dtype),
        )
        self._records[name] = record
        if record.module is not None:
            self.task_modules[name] = record.module
        self.heads[name] = record.head
        self.set_train_mode(self.train_mode)
        record.head.train(self.training)
        if record.module is not None:
            record.module.train(self.training)

    def remove_task(self, name: str) -> None:
        """Remove a task (its module, head and spec)."""
        record = self.task(name)
        del self._records[name]
        if record.module is not None:
            del self.task_modules[name]
        del self.heads[name]

    def set_progress(self, step: int, epoch: int) -> None:
        """Advance schedules that depend on training progress (progressive PAL depth)."""
        for r in self._records.values():
            if r.module is not None:
                r.module.set_progress(step, epoch)

    # -- forward -------------------------------------------------------------------------
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        *,
        task: str | None = None,
        task_ids: torch.Tensor | None = None,
        hidden_states: bool = False,
    ) -> Encoded:
        """Run the encoder with ``task``'s module (or each row's, by ``task_ids``)."""
        if task is not None:
            self.task(task)  # an unknown name fails here, not inside the encoder
        route = self._route(attention_mask, task, task_ids)
        return self._encode(route, input_ids, attention_mask, token_type_ids, hidden_states)

    def _route(
        self, attention_mask: torch.Tensor, task: str | None, task_ids: torch.Tensor | None
    ) -> Route:
        dtype = attention_dtype(next(self.backbone.parameters()))
        return Route.of(attention_mask, task, task_ids, self.tasks, dtype)

    def _encode(
        self,
        route: Route,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        hidden_states: bool,
    ) -> Encoded:
        with self.router.routing(route):
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
                output_hidden_states=hidden_states,
            )
        hs = tuple(out.hidden_states) if hidden_states else None
        return Encoded(out.last_hidden_state, attention_mask, hs)

    def forward(
        self, batch: Mapping[str, torch.Tensor], task: str | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Outputs of ``task``'s head, or for a batch with ``task_ids`` (indices into
        ``self.tasks``) a dict task -> outputs of that task's rows, in batch order.

        Every kind of task shares a mixed batch: a bi-encoded pair is two rows of its task,
        marked by ``batch["side"]`` (0: first sentence, 1: second; the k-th of each pair up),
        and its head gets both sides back, each encoded alone as it is outside a mixed batch.
        """
        task_ids = batch.get("task_ids")
        if task is None and task_ids is None:
            raise ValueError("give a task name or a batch with 'task_ids'")
        if task is not None:
            return self._forward_one(batch, self.task(task))
        # the batch's tasks and their rows, found once: the route of every layer, then heads
        route = self._route(batch["attention_mask"], None, task_ids)
        records = {name: self._records[name] for name in route.index}
        hidden = any(_needs_hidden_states(r.head) for r in records.values())
        enc = self._encode(
            route,
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            hidden,
        )
        side = batch.get("side")
        outs = {}
        for name, rows in route.index.items():
            head = records[name].head
            if not _bi_encoded(head):
                outs[name] = head([enc.rows(rows)])
                continue
            # a bi-encoded pair is two rows of its task, each sentence encoded alone: the
            # k-th row of side 0 pairs with the k-th row of side 1
            if side is None:
                raise ValueError(
                    f"task {name!r} is bi-encoded: a mixed batch holding it needs 'side' "
                    "(0 for first sentences, 1 for second ones)"
                )
            first, second = rows[side[rows] == 0], rows[side[rows] == 1]
            if len(first) != len(second):
                raise ValueError(
                    f"task {name!r}: {len(first)} first sentences but {len(second)} second "
                    "ones in the mixed batch"
                )
            outs[name] = head([enc.rows(first), enc.rows(second)])
        return outs

    def _forward_one(self, batch: Mapping[str, torch.Tensor], record: TaskRecord) -> torch.Tensor:
        # a bi-encoder head sees each sentence encoded alone (keys *_b hold the second)
        suffixes = SIDES if _bi_encoded(record.head) else SIDES[:1]
        features = [
            self._encode(
                self._route(batch["attention_mask" + s], record.name, None),
                batch["input_ids" + s],
                batch["attention_mask" + s],
                batch.get("token_type_ids" + s),
                _needs_hidden_states(record.head),
            )
            for s in suffixes
        ]
        return record.head(features)

    # -- training modes and memory -------------------------------------------------------
    def set_train_mode(self, mode: TrainMode) -> None:
        """full: everything trains; frozen: task modules and heads; heads: heads only."""
        check_choice("train mode", mode, TRAIN_MODES)
        self.train_mode = mode
        self.backbone.requires_grad_(mode == "full")
        self.task_modules.requires_grad_(mode in ("full", "frozen"))
        self.heads.requires_grad_(True)

    def gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder layer in the backward pass instead of storing activations."""
        self.router.checkpointing = enabled

    # -- parameters ----------------------------------------------------------------------
    def parameter_report(self) -> dict:
        """Parameter counts: backbone, per task (module, head), per module kind, multiples.

        ``multiple`` is (backbone + all task modules) / backbone, heads excluded, as the paper
        counts; ``multiple_with_heads`` includes them.
        """

        def count(m: nn.Module | None) -> int:
            return 0 if m is None else sum(p.numel() for p in m.parameters())

        backbone = count(self.backbone)
        per_task, per_kind = {}, {}
        for name, r in self._records.items():
            module = count(r.module)
            per_task[name] = {"kind": r.config.kind, "module": module, "head": count(r.head)}
            per_kind[r.config.kind] = per_kind.get(r.config.kind, 0) + module
        modules = sum(t["module"] for t in per_task.values())
        heads = sum(t["head"] for t in per_task.values())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {
            "backbone": backbone,
            "tasks": per_task,
            "kinds": per_kind,
            "modules": modules,
            "heads": heads,
            "total": backbone + modules + heads,
            "trainable": trainable,
            "multiple": (backbone + modules) / backbone,
            "multiple_with_heads": (backbone + modules + heads) / backbone,
        }

    # -- task files (palbert.taskfile) ---------------------------------------------------
    def save_task(
        self,
        name: str,
        path: str | os.PathLike,
        dtype: str | torch.dtype | None = None,
        *,
        fine_tuned: bool = False,
    ) -> Path:
        """Write task ``name`` (module, head, spec) to one safetensors file; returns its path.

        ``dtype`` ("float16", "bfloat16", "float32"; None keeps the model's) is the storage
        dtype. ``fine_tuned`` records that the encoder's weights were trained (a run of train
        mode "full"), which changes only the advice given when a file meets the wrong encoder.

        >>> model.save_task("sts", "sts.safetensors", dtype="float16")  # doctest: +SKIP
        """
        self.spec(name)  # a task without a spec cannot be saved: say how to give one
        backbone = backbone_header(
            self.backbone_info, self.fingerprint(), self.tokenizer_fingerprint(), fine_tuned
        )
        model_dtype = next(self.backbone.parameters()).dtype
        tf = pack_task(self.task(name), backbone, dtype_of(dtype), model_dtype)
        return write_task_file(tf, path)

    def load_task(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        replace: bool = False,
        force: bool = False,
    ) -> str:
        """Add the task stored in an exported file; returns its name.

        ``name`` renames it (default: the name in the file); a task of that name already in
        the model needs ``replace=True``. A file for an encoder of another shape is refused; one
        for other weights (fingerprint) unless ``force=True``. Weights are converted to the
        model's dtype and device; nothing of the model changes when loading fails.

        >>> model.load_task("sts.safetensors")  # doctest: +SKIP
        'sts'
        """
        tf = read_task_file(path)
        where = f"task file {tf.path}"
        name = name or tf.name
        if name in self._records and not replace:
            raise TaskFileError(
                f"task {name!r} is already loaded; pass replace=True to replace it, or name=... "
                "to load it under another name"
            )
        info = self.backbone_info
        check_backbone(
            tf,
            info.name,
            info.config.to_dict(),
            self.fingerprint,
            force,
            self.tokenizer_fingerprint,
        )
        try:
            spec = TaskSpec.coerce(tf.spec, name)
            config = tf.module_config.resolved(self.hidden_size)
        except (ValueError, TypeError) as e:  # DataError is a ValueError
            raise TaskFileError(f"{where}: its metadata does not describe a valid task: {e}") from e
        # Build and fill everything aside first, so a bad file leaves the model as it was.
        head = build_head(
            spec.head, self.hidden_size, spec.num_labels or 1, spec.kind, spec.encoding,
            spec.label_range,
        )  # fmt: skip
        fill_module(head, tf.tensors, "head.", where)
        module = build_module(config, self.hidden_size, self.num_layers)
        if module is not None:
            fill_module(module, tf.tensors, "module.", where)
            if tf.active_layers is not None and module.active is not None:
                module.active = set(tf.active_layers)
        elif any(k.startswith("module.") for k in tf.tensors):
            raise TaskFileError(f"{where}: module kind 'none' but the file holds module.* tensors")
        if name in self._records:
            self.remove_task(name)
        self._attach(name, head, config, module, spec)
        return name

    def predict(
        self,
        task: str,
        inputs: Iterable[str | Sequence[str]],
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ) -> list:
        """Scores (regression) or {label, label_id, probs} (classification) for a list of
        sentences or (a, b) pairs, in input order; batched by length, without gradients.

        >>> model.predict("sts", [("a cat sits", "a cat is sitting")])  # doctest: +SKIP
        [4.1]
        """
        from palbert.inference import predict

        return predict(self, task, inputs, batch_size=batch_size, device=device)


def _bi_encoded(head: nn.Module) -> bool:
    return getattr(head, "encoding", "single") == "bi"  # the head's contract: palbert.encoded


def _needs_hidden_states(head: nn.Module) -> bool:
    return getattr(head, "needs_hidden_states", False)


def format_report(report: dict) -> str:
    """A readable table of :meth:`PalBert.parameter_report`."""
    lines = [f"{'part':<24}{'kind':<10}{'parameters':>14}"]
    lines.append(f"{'backbone':<24}{'':<10}{report['backbone']:>14,}")
    for name, t in report["tasks"].items():
        lines.append(f"{name + ' module':<24}{t['kind']:<10}{t['module']:>14,}")
        lines.append(f"{name + ' head':<24}{'':<10}{t['head']:>14,}")
    lines.append(f"{'total':<24}{'':<10}{report['total']:>14,}")
    lines.append(f"{'trainable':<24}{'':<10}{report['trainable']:>14,}")
    lines.append(
        f"x{report['multiple']:.3f} of the backbone (heads excluded), "
        f"x{report['multiple_with_heads']:.3f} with heads"
    )
    return "\n".join(lines)
