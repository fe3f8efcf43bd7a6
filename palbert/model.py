"""The multi-task model: one shared encoder, per-task modules and heads.

>>> from palbert import PalBert, ModuleConfig
>>> model = PalBert.from_pretrained("minilm", module=ModuleConfig(kind="pal"))
>>> model.add_task("sst", head)            # any head following palbert.tasks' contract
>>> logits = model(batch, task="sst")       # one task for the whole batch
>>> outs = model(batch_with_task_ids)       # mixed batch: {task: outputs of its rows}

State-dict keys: ``backbone.*`` (transformers' BertModel keys), ``task_modules.<task>.*``,
``heads.<task>.*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from palbert.backbones import Backbone, Impl, load_backbone
from palbert.encoded import Encoded
from palbert.layers import ModuleConfig, Route, Router, build_module
from palbert.tasks.spec import TaskSpec

TrainMode = Literal["full", "frozen", "heads"]
TRAIN_MODES = ("full", "frozen", "heads")


class PalBert(nn.Module):
    """A shared BERT encoder with named tasks, each with its own module and head."""

    def __init__(self, backbone: Backbone, module: ModuleConfig | None = None) -> None:
        super().__init__()
        self.info = backbone  # config, source, impl of the encoder
        self.backbone = backbone.model
        self.module_config = module or ModuleConfig(kind="pal")
        self.task_modules = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.task_configs: dict[str, ModuleConfig] = {}
        self.specs: dict[str, TaskSpec | None] = {}
        self.router = Router(self.task_modules)
        self.router.inject(backbone.layers)
        self.train_mode: TrainMode = "full"

    @classmethod
    def from_pretrained(
        cls,
        backbone: str = "minilm",
        impl: Impl = "transformers",
        module: ModuleConfig | None = None,
    ) -> PalBert:
        """Load an encoder (hub name, folder, ``minilm`` or ``random:<shape>``) and wrap it."""
        return cls(load_backbone(backbone, impl=impl), module=module)

    # -- tasks ---------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

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
        if spec is not None:
            spec = TaskSpec.coerce(spec, name)
        if name in self.heads:
            raise ValueError(f"task {name!r} is already in the model; remove it first")
        config = (module or self.module_config).resolved(self.info.hidden_size)
        task_module = build_module(config, self.info.hidden_size, self.info.num_layers)
        if task_module is not None:
            ref = next(self.backbone.parameters())
            self.task_modules[name] = task_module.to(device=ref.device, dtype=ref.dtype)
        self.heads[name] = head
        self.task_configs[name] = config
        self.specs[name] = spec
        self.set_train_mode(self.train_mode)

    def remove_task(self, name: str) -> None:
        if name not in self.heads:
            raise KeyError(f"no task {name!r}; tasks: {self.tasks}")
        del self.heads[name]
        if name in self.task_modules:
            del self.task_modules[name]
        del self.task_configs[name]
        del self.specs[name]

    def set_progress(self, step: int, epoch: int) -> None:
        """Advance schedules that depend on training progress (progressive PAL depth)."""
        for m in self.task_modules.values():
            if hasattr(m, "set_progress"):
                m.set_progress(step, epoch)

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
        if task is not None and task not in self.heads:
            raise KeyError(f"no task {task!r}; tasks: {self.tasks}")
        with self.router.routing(Route.of(attention_mask, task, task_ids, self.tasks)):
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
        ``self.tasks``) a dict task -> outputs of that task's rows, in batch order."""
        task_ids = batch.get("task_ids")
        if task is None and task_ids is None:
            raise ValueError("give a task name or a batch with 'task_ids'")
        if task is not None:
            head = self.heads[task] if task in self.heads else None
            if head is None:
                raise KeyError(f"no task {task!r}; tasks: {self.tasks}")
            return head(self._features(batch, head, task=task))
        names = self.tasks
        heads = [self.heads[names[i]] for i in torch.unique(task_ids).tolist()]
        if any(getattr(h, "encoding", "single") == "bi" for h in heads):
            raise ValueError("mixed-task batches need single or cross-encoded tasks, not 'bi'")
        hidden = any(getattr(h, "needs_hidden_states", False) for h in heads)
        enc = self.encode(
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            task_ids=task_ids,
            hidden_states=hidden,
        )
        outs = {}
        for i in torch.unique(task_ids).tolist():
            rows = (task_ids == i).nonzero(as_tuple=True)[0]
            outs[names[i]] = self.heads[names[i]]([enc.rows(rows)])
        return outs

    def _features(self, batch: Mapping[str, torch.Tensor], head: nn.Module, task: str):
        hidden = getattr(head, "needs_hidden_states", False)
        # a bi-encoder head sees each sentence encoded alone (keys *_b hold the second)
        suffixes = ("", "_b") if getattr(head, "encoding", "single") == "bi" else ("",)
        return [
            self.encode(
                batch["input_ids" + s],
                batch["attention_mask" + s],
                batch.get("token_type_ids" + s),
                task=task,
                hidden_states=hidden,
            )
            for s in suffixes
        ]

    # -- training modes and memory -------------------------------------------------------
    def set_train_mode(self, mode: TrainMode) -> None:
        """full: everything trains; frozen: task modules and heads; heads: heads only."""
        if mode not in TRAIN_MODES:
            raise ValueError(f"train mode must be one of {TRAIN_MODES}, not {mode!r}")
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
        for name in self.tasks:
            kind = self.task_configs[name].kind
            module = count(self.task_modules[name] if name in self.task_modules else None)
            per_task[name] = {"kind": kind, "module": module, "head": count(self.heads[name])}
            per_kind[kind] = per_kind.get(kind, 0) + module
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
    def load_task(
        self, path: str, name: str | None = None, replace: bool = False, force: bool = False
    ) -> str:
        """Add the task stored in an exported file; returns its name.

        >>> model.load_task("sts.safetensors")  # doctest: +SKIP
        'sts'
        """
        from palbert.taskfile import load_task

        return load_task(self, path, name=name, replace=replace, force=force)

    def unload_task(self, name: str) -> None:
        """Remove a task (its module, head and spec)."""
        from palbert.taskfile import unload_task

        unload_task(self, name)

    def save_task(self, name: str, path: str, dtype: str | None = None, spec=None):
        """Write one task to a safetensors file (see :func:`palbert.taskfile.export_task`)."""
        from palbert.taskfile import export_task

        return export_task(self, name, path, dtype=dtype, spec=spec)

    def predict(self, task: str, inputs, batch_size: int = 32, device=None) -> list:
        """Scores (regression) or {label, label_id, probs} (classification) for sentences or
        (a, b) pairs; batched, in eval mode, without gradients.

        >>> model.predict("sts", [("a cat sits", "a cat is sitting")])  # doctest: +SKIP
        [4.1]
        """
        from palbert.taskfile import predict

        return predict(self, task, inputs, batch_size=batch_size, device=device)


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
