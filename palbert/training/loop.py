"""The training step: accumulation, loss weights, PCGrad, mixed precision, clipping, DDP.

::

    trainer = Trainer(model, recipe.optimizer, recipe.schedule, recipe.train,
                      tasks={"sst": sst_task}, total_steps=1000)
    result = trainer.step([("sst", batch1), ("sst", batch2)])   # one optimizer step

Dev evaluation is :func:`palbert.inference.evaluate`, the path eval and predict take too.

**One optimizer step** takes a window of micro-batches (``grad_accum`` sampler draws, each
from one task). Each task's loss in the window is the mean over *all* of its rows in the
window (over all processes), so k micro-batches give the gradients of one batch k times
larger; the step minimises sum_t w_t L_t with the tasks' ``loss_weight`` w_t.

**Parameters that no micro-batch reached keep ``grad = None``** (``zero_grad(set_to_none=
True)``), and torch's AdamW skips such parameters entirely: no weight decay and no moment
update, so a task that was not sampled does not drift. Frozen parameters are not in the
optimizer at all, so they hold no gradient and no optimizer state.

**NaN and infinity stop training** before they reach a file: a non-finite loss
(:class:`NonFiniteLoss`) or gradient norm (:class:`NonFiniteGradient`; under fp16 the scaler
skips such a step instead) stops the step, and :meth:`Trainer.check_weights` runs before
every evaluation and checkpoint. The run's last good checkpoint stays.

**More than one process.** The model is not wrapped in DistributedDataParallel: after the
backward passes of a window the gradients are summed across processes with one
``all_reduce`` (per task when PCGrad is on, before the surgery). This keeps PCGrad exact,
needs no ``find_unused_parameters`` for heads of tasks absent from a step, and costs one
reduction per optimizer step instead of one per micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from palbert.choices import DECAYS
from palbert.inference import autocast, resolve_precision
from palbert.tasks.batching import merge_batches
from palbert.training.pcgrad import pcgrad

if TYPE_CHECKING:
    from palbert.recipe import OptimizerSection, ScheduleSection, TrainSection


class NonFinite(RuntimeError):
    """Training produced a NaN or an infinity; the run stops before anything non-finite is
    saved, and its last good checkpoint is kept. ``at_step``: the optimizer step (1-based)."""

    def __init__(self, what: str, at_step: int) -> None:
        super().__init__(
            f"{what} at optimizer step {at_step}; stopping. "
            "Lower the learning rate, check the data, or try precision=fp32."
        )
        self.at_step = at_step


class NonFiniteLoss(NonFinite):
    """A loss was NaN or infinite."""

    def __init__(self, task: str, step: int, value: float) -> None:
        super().__init__(f"loss of task {task!r} is {value}", step + 1)
        self.task, self.step, self.value = task, step, value


class NonFiniteGradient(NonFinite):
    """The gradient norm of a step was NaN or infinite (outside fp16, whose scaler skips
    such steps); the step is not applied."""

    def __init__(self, step: int, norm: float) -> None:
        super().__init__(f"the gradient norm is {norm}", step + 1)


class NonFiniteWeights(NonFinite):
    """A trainable weight became NaN or infinite."""

    def __init__(self, step: int, name: str) -> None:
        super().__init__(f"weight {name} is not finite after the update", step)


# -- optimizer and schedule ---------------------------------------------------------------


def param_groups(
    model: nn.Module,
    lr: float,
    task_lr: float | None,
    weight_decay: float,
    head_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters only, grouped by part: backbone (``lr``), task modules
    (``task_lr``, default ``lr``) and heads (``head_lr``, default ``task_lr``), each with and
    without weight decay (biases and LayerNorm weights, i.e. 1-D tensors, get none).
    Each group keeps its parameters' names for checkpoints."""
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = name.split(".", 1)[0]  # backbone, task_modules or heads
        part_lr = {
            "backbone": lr,
            "task_modules": task_lr or lr,
            "heads": head_lr or task_lr or lr,
        }.get(part, lr)
        decay = p.ndim >= 2
        g = groups.setdefault(
            (part, decay),
            {
                "params": [],
                "names": [],
                "part": part,
                "lr": part_lr,
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def lr_factor(step: int, warmup: int, total: int, decay: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "linear":
        return max(0.0, 1.0 - progress)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule decay must be one of {', '.join(DECAYS)}, not {decay!r}")


def rows(batch: dict[str, Any]) -> int:
    """Examples in a batch (its labels, or its input rows)."""
    if "labels" in batch:
        return int(batch["labels"].shape[0])
    return int(batch["input_ids"].shape[0])


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


# -- data streams -------------------------------------------------------------------------


class TaskStream:
    """An endless stream of one task's training batches: a pass over the loader, then the
    next pass reshuffled (``loader.set_epoch(pass)``). State: (pass, position)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.pass_ = 0
        self.pos = 0
        self._order: list | None = None

    def _load(self) -> None:
        self.loader.set_epoch(self.pass_)
        if hasattr(self.loader, "batch_indices"):
            self._order = self.loader.batch_indices()  # indices only: skipping ahead is cheap
        else:
            self._order = list(iter(self.loader))
        if not self._order:
            raise ValueError("a task has no training batches on this process")

    def next(self) -> dict[str, Any]:
        if self._order is None:
            self._load()
        if self.pos >= len(self._order):
            self.pass_ += 1
            self.pos = 0
            self._load()
        item = self._order[self.pos]
        self.pos += 1
        return self.loader.data.collate(item) if hasattr(self.loader, "batch_indices") else item

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_, self.pos, self._order = int(state["pass"]), int(state["pos"]), None


# -- the step -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backward:
    """What :meth:`Trainer.backward` leaves for :meth:`Trainer.apply`, besides the gradients
    in ``p.grad``: each task's mean loss over the window's rows on all processes, and the
    rows of the window on this process."""

    losses: dict[str, float]
    examples: int


@dataclass
class StepResult:
    """What one optimizer step did: per-task mean losses (this process), examples, lr."""

    losses: dict[str, float]
    examples: int
    lr: float
    skipped: bool = False  # fp16 overflow: the scaler skipped the update
    grad_norm: float | None = None


@dataclass
class _Sweep:
    """What the forward/backward passes of one window gather."""

    losses: dict[str, float] = field(default_factory=dict)  # this process's share per task
    snapshots: list[dict[int, torch.Tensor]] = field(default_factory=list)  # PCGrad: per task
    bad: tuple[str, float] | None = None  # the first non-finite loss (task, value), DDP only


class Trainer:
    """Owns the optimizer, schedule and scaler of one model and performs optimizer steps.

    The recipe's sections say how: ``optimizer`` (AdamW and the learning rate of each part),
    ``schedule`` (warmup and decay over ``total_steps``) and ``train`` (precision, clipping,
    PCGrad, seed). The trainer works where the model's parameters are, so move the model
    first. ``tasks`` maps each task to an object with ``loss(outputs, labels)`` and
    ``spec.loss_weight`` (a :class:`palbert.tasks.Task`). ``mixed``: each step's
    micro-batches go through the model as one batch with ``task_ids`` (``sampler.mixed``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerSection,
        schedule: ScheduleSection,
        train: TrainSection,
        *,
        tasks: Mapping[str, Any],
        total_steps: int,
        mixed: bool = False,
    ) -> None:
        self.model = model
        self.losses = {t: task.loss for t, task in tasks.items()}
        self.weights = {t: float(task.spec.loss_weight) for t, task in tasks.items()}
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(train.precision, self.device)
        self.grad_clip = train.grad_clip
        self.use_pcgrad = train.pcgrad
        self.mixed = mixed
        self.seed = train.seed
        self.pad_id = _pad_id(model)
        o = optimizer
        self.groups = param_groups(model, o.lr, o.task_lr, o.weight_decay, o.head_lr)
        if not self.groups:
            raise ValueError("the model has no trainable parameters")
        self.params = [p for g in self.groups for p in g["params"]]
        self.param_names = [n for g in self.groups for n in g["names"]]
        self.optimizer = torch.optim.AdamW(
            self.groups,
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
            foreach=False,  # the plain loop: bit-identical on resume, same on every device
        )
        self.total, self.decay = total_steps, schedule.decay
        self.warmup = (
            schedule.warmup_steps
            if schedule.warmup_steps is not None
            else int(schedule.warmup_ratio * total_steps)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.warmup, self.total, self.decay)
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.step_count = 0  # optimizer steps done (skipped fp16 steps included)
        self.skipped_steps = 0
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    # -- one optimizer step ------------------------------------------------------------
    def step(self, window: list[tuple[str, dict[str, Any]]]) -> StepResult:
        """Forward/backward every micro-batch of ``window``, then one optimizer step."""
        return self.apply(self.backward(window))

    def backward(self, window: list[tuple[str, dict[str, Any]]]) -> Backward:
        """Gradients of the window's weighted loss in ``p.grad`` (summed over processes),
        without stepping; what :meth:`apply` needs besides them is returned."""
        self.model.train()
        window = [(t, to_device(b, self.device)) for t, b in window]
        order = list(dict.fromkeys(t for t, _ in window))  # tasks in first-seen order
        counts = self._global_counts(window, order)
        surgery = self.use_pcgrad and len(order) > 1
        sweep = _Sweep()
        if self.mixed:
            self._mixed_backward(window, order, counts, surgery, sweep)
        else:
            self._per_task_backward(window, order, counts, surgery, sweep)

        losses = sweep.losses
        if self.world > 1:
            self._stop_if_any_process_failed(sweep.bad)
            losses = self._summed_over_processes(losses, order)
        if surgery:
            if self.world > 1:
                for snap in sweep.snapshots:
                    self._allreduce(snap)
            self._combine(sweep.snapshots)
        elif self.world > 1:
            grads = {i: p.grad for i, p in enumerate(self.params) if p.grad is not None}
            for i, g in self._allreduce(grads).items():
                self.params[i].grad = g
        return Backward(losses, sum(rows(b) for _, b in window))

    def _mixed_backward(self, window, order, counts, surgery: bool, sweep: _Sweep) -> None:
        """The window's micro-batches as one forward pass with ``task_ids``; each task's loss
        from its rows, weighted by its share of the task's rows on all processes."""
        batch, labels = merge_batches(window, list(self.model.tasks), self.pad_id)
        with autocast(self.precision, self.device):
            outs = self.model(batch)
            task_losses = {t: self.losses[t](outs[t], labels[t]) for t in order}
        total = None
        for i, t in enumerate(order):
            loss = task_losses[t]
            self._check(t, loss, sweep)
            share = rows({"labels": labels[t]}) / counts[t]
            sweep.losses[t] = float(loss.detach()) * share
            scaled = loss * (self.weights[t] * share)
            if surgery:  # one backward per task through the shared graph
                self._backward(scaled, retain=i < len(order) - 1)
                sweep.snapshots.append(self._take_grads())
            else:
                total = scaled if total is None else total + scaled
        if total is not None:
            self._backward(total)

    def _per_task_backward(self, window, order, counts, surgery: bool, sweep: _Sweep) -> None:
        """One forward and backward pass per micro-batch, task by task (PCGrad takes each
        task's gradients once its micro-batches are done)."""
        for t in order:
            for task, b in window:
                if task != t:
                    continue
                with autocast(self.precision, self.device):
                    outs = self.model(b, task=t)
                    loss = self.losses[t](outs, b["labels"])
                self._check(t, loss, sweep)
                share = rows(b) / counts[t]
                sweep.losses[t] = sweep.losses.get(t, 0.0) + float(loss.detach()) * share
                self._backward(loss * (self.weights[t] * share))
            if surgery:
                sweep.snapshots.append(self._take_grads())

    def apply(self, done: Backward) -> StepResult:
        """Clip, step the optimizer (through the scaler for fp16) and the schedule, on the
        gradients that ``done`` (from :meth:`backward`) left."""
        lr = self.optimizer.param_groups[0]["lr"]
        norm = None
        skipped = False
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p for p in self.params if p.grad is not None]
        if self.grad_clip:
            norm = float(torch.nn.utils.clip_grad_norm_(grads, self.grad_clip, foreach=False))
        else:
            norm = float(torch.nn.utils.get_total_norm([p.grad for p in grads], foreach=False))
        if self.scaler is None and not math.isfinite(norm):  # the scaler skips such steps
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteGradient(self.step_count, norm)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale  # the scale backs off only on overflow
            self.skipped_steps += int(skipped)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return StepResult(dict(done.losses), done.examples, lr, skipped, norm)

    def check_weights(self) -> None:
        """Raise :class:`NonFiniteWeights` if a trainable weight is NaN or infinite (the same
        on every process, since all hold the same weights)."""
        bad = torch.stack([~torch.isfinite(p).all() for p in self.params]).nonzero()
        if len(bad):
            raise NonFiniteWeights(self.step_count, self.param_names[int(bad[0])])

    # -- helpers -----------------------------------------------------------------------
    def _check(self, task: str, loss: torch.Tensor, sweep: _Sweep) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        if self.world > 1:  # every process must stop together: decided after the window
            sweep.bad = sweep.bad or (task, float(loss.detach().float()))
            return
        self.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(task, self.step_count, float(loss.detach().float()))

    def _stop_if_any_process_failed(self, bad: tuple[str, float] | None) -> None:
        flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            task, value = bad or ("(on another process)", float("nan"))
            raise NonFiniteLoss(task, self.step_count, value)

    def _summed_over_processes(self, losses: dict[str, float], order: list[str]):
        """Each process holds its rows' share of a task's mean loss; their sum is the mean
        over all rows (what one process with the whole batch would log)."""
        vals = torch.tensor([losses[t] for t in order], dtype=torch.float64, device=self.device)
        dist.all_reduce(vals)
        return dict(zip(order, vals.tolist(), strict=True))

    def _backward(self, loss: torch.Tensor, retain: bool = False) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(retain_graph=retain)

    def _global_counts(self, window, order: list[str]) -> dict[str, int]:
        local = torch.tensor([sum(rows(b) for t2, b in window if t2 == t) for t in order])
        if self.world > 1:
            local = local.to(self.device)
            dist.all_reduce(local)
        return {t: int(n) for t, n in zip(order, local.tolist(), strict=True)}

    def _take_grads(self) -> dict[int, torch.Tensor]:
        """Move the current gradients out of the parameters (one task's share)."""
        snap = {}
        for i, p in enumerate(self.params):
            if p.grad is not None:
                snap[i] = p.grad
                p.grad = None
        return snap

    def _combine(self, snapshots: list[dict[int, torch.Tensor]]) -> None:
        """PCGrad over the parameters that two or more tasks reached; the rest summed."""
        reach: dict[int, int] = {}
        for snap in snapshots:
            for i in snap:
                reach[i] = reach.get(i, 0) + 1
        shared = [i for i in sorted(reach) if reach[i] > 1]
        for i in sorted(reach):
            if reach[i] == 1:
                self.params[i].grad = next(s[i] for s in snapshots if i in s)
        if not shared:
            return
        flats = []
        for snap in snapshots:
            parts = [
                snap[i].reshape(-1)
                if i in snap
                else self.params[i].new_zeros(self.params[i].numel())
                for i in shared
            ]
            flats.append(torch.cat(parts).float())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step_count)
        combined = pcgrad(flats, generator=gen)
        offset = 0
        for i in shared:
            p = self.params[i]
            p.grad = combined[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()

    def _allreduce(self, grads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Sum gradients over processes, in place. A parameter without a gradient here but
        with one elsewhere gets one (zeros before the sum), so all processes step alike."""
        have = torch.zeros(len(self.params), device=self.device)
        for i in grads:
            have[i] = 1
        dist.all_reduce(have, op=dist.ReduceOp.MAX)
        idx = [i for i in range(len(self.params)) if have[i] > 0]
        for i in idx:
            if i not in grads:
                grads[i] = torch.zeros_like(self.params[i])
        if not idx:
            return grads
        flat = torch.cat([grads[i].reshape(-1) for i in idx])
        dist.all_reduce(flat)
        offset = 0
        for i in idx:
            n = grads[i].numel()
            grads[i].copy_(flat[offset : offset + n].view_as(grads[i]))
            offset += n
        return grads


def _pad_id(model: nn.Module) -> int:
    """The encoder's padding id, for merging micro-batches of different widths (the padded
    positions are masked, so this keeps the merged batch equal to its parts)."""
    config = getattr(getattr(model, "backbone_info", None), "config", None)
    return int(getattr(config, "pad_token_id", None) or 0)


# -- model selection ------------------------------------------------------------------------


def selection_score(
    scores: dict[str, dict[str, float]], tasks: dict[str, Any], metric: str
) -> float:
    """``mean``: the mean of the tasks' primary metrics; ``task.metric``: that one value.

    In the mean, a NaN metric (a correlation of constant predictions) counts as 0, no
    correlation, so one such task does not hide the others' progress from model selection.
    """
    if metric == "mean":
        vals = [scores[t][tasks[t].spec.primary_metric] for t in scores]
        vals = [0.0 if v != v else v for v in vals]  # v != v: NaN
        return float(sum(vals) / len(vals))
    task, name = metric.split(".", 1)
    if name not in scores[task]:
        raise KeyError(f"eval.metric {metric!r}: task {task!r} reports {sorted(scores[task])}")
    return float(scores[task][name])


__all__ = [
    "Backward",
    "NonFinite",
    "NonFiniteGradient",
    "NonFiniteLoss",
    "NonFiniteWeights",
    "StepResult",
    "TaskStream",
    "Trainer",
    "lr_factor",
    "param_groups",
    "selection_score",
]
