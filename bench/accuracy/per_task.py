"""Per-task adapters from other libraries on the frozen encoder, with palbert's data and heads.

Rows ``peft-lora`` (Hugging Face PEFT LoRA) and ``adapterhub`` (AdapterHub ``adapters``
Houlsby adapters). Each task gets its own adapter and palbert's head for the task
(``build_task(...).build_head``), and trains on palbert's batches (``task.batches``) with
the optimizer settings of the other rows: AdamW, ``optimizer.task_lr`` for the adapter,
``optimizer.head_lr`` for the head, weight decay on matrices only, gradient clipping, linear
warmup then decay.

**Why one task at a time equals the multi-task run.** The encoder is frozen and each task's
trainable parameters (its adapter and head) are disjoint from every other task's. In a
multi-task run with one task per optimizer step, the parameters of the tasks not in a step
get no gradient, so AdamW neither moves nor decays them, and gradient clipping sees only the
step's task. So a task's parameters follow exactly the updates they would get alone, on the
same batches, at the learning rates of the global steps where the sampler picked that task.
This module replays that: ``plan`` lists the task of every global step (the proportional
sampler's draws of the multi-task rows, same seed and sizes), each task trains on the steps
it owns, at the learning-rate factor of each step's global position, on the batches its
stream would give (pass p of the task's data in the order of ``(seed, p)``).

Runs in-process (PEFT) or as a script inside the AdapterHub virtual environment::

    python bench/accuracy/per_task.py CONFIG.json RESULT.json
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from palbert.tasks.batching import Order
from palbert.training.loop import lr_factor


def task_spec(entry: dict[str, Any] | str) -> dict[str, Any] | str:
    """A recipe's task entry without the recipe-only keys (module, on_error)."""
    if isinstance(entry, str):
        return entry
    return {k: v for k, v in entry.items() if k not in ("module", "on_error")}


def stream(loader: Any) -> Iterator[dict[str, Any]]:
    """A task's training batches without end: pass p in the order of ``(seed, p)``."""
    p = 0
    while True:
        loader.set_epoch(p)
        yield from loader
        p += 1


def _features(encoder, batch: dict[str, Any], head) -> list:
    from palbert.encoded import Encoded

    suffixes = ("", "_b") if getattr(head, "encoding", "single") == "bi" else ("",)
    hidden = getattr(head, "needs_hidden_states", False)
    out = []
    for s in suffixes:
        res = encoder(
            input_ids=batch["input_ids" + s],
            attention_mask=batch["attention_mask" + s],
            token_type_ids=batch.get("token_type_ids" + s),
            output_hidden_states=hidden,
        )
        hs = tuple(res.hidden_states) if hidden else None
        out.append(Encoded(res.last_hidden_state, batch["attention_mask" + s], hs))
    return out


class Adapters:
    """One adapter per task on one encoder; ``use(task)`` makes that task's the active one."""

    def __init__(self, encoder, method: dict[str, Any], tasks: list[str], seed: int) -> None:
        self.library = method["library"]
        self.params: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
        torch.manual_seed(seed)
        for p in encoder.parameters():
            p.requires_grad_(False)
        base = {n for n, _ in encoder.named_parameters()}
        if self.library == "peft":
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(
                r=method["r"],
                lora_alpha=method["lora_alpha"],
                lora_dropout=method["lora_dropout"],
                target_modules=list(method["target_modules"]),
                bias="none",
            )
            self.model = get_peft_model(encoder, cfg, adapter_name=tasks[0])
            for t in tasks[1:]:
                self.model.add_adapter(t, cfg)
            # peft prefixes the encoder's names; its own parameters carry the adapter name
            for t in tasks:
                self.params[t] = [
                    (n, p)
                    for n, p in self.model.named_parameters()
                    if "lora_" in n and f".{t}." in n
                ]
        elif self.library == "adapters":
            import adapters
            from adapters import DoubleSeqBnConfig, SeqBnConfig

            adapters.init(encoder)
            configs = {"double_seq_bn": DoubleSeqBnConfig, "seq_bn": SeqBnConfig}
            for t in tasks:
                before = {n for n, _ in encoder.named_parameters()}
                encoder.add_adapter(
                    t, config=configs[method["config"]](reduction_factor=method["reduction_factor"])
                )
                self.params[t] = [(n, p) for n, p in encoder.named_parameters() if n not in before]
            self.model = encoder
        else:
            raise ValueError(f"unknown adapter library {self.library!r}")
        owned = {n for ps in self.params.values() for n, _ in ps}
        extra = [n for n, _ in self.model.named_parameters() if n not in owned]
        if len(extra) != len(base):  # every parameter is the encoder's or one task's
            raise RuntimeError(f"{self.library}: parameters of no task: {sorted(set(extra))[:5]}")
        for t in tasks:
            if not self.params[t]:
                raise RuntimeError(f"{self.library}: no adapter parameters found for task {t!r}")

    def use(self, task: str) -> None:
        """Route forwards through ``task``'s adapter; only its parameters get gradients."""
        if self.library == "peft":
            self.model.set_adapter(task)
        else:
            self.model.set_active_adapters(task)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _, p in self.params[task]:
            p.requires_grad_(True)

    def count(self, task: str) -> int:
        return sum(p.numel() for _, p in self.params[task])


def param_groups(named: list[tuple[str, torch.nn.Parameter]], lr: float, wd: float) -> list[dict]:
    """AdamW groups as palbert makes them: decay on matrices, none on biases and norms."""
    decay = [p for _, p in named if p.ndim >= 2]
    rest = [p for _, p in named if p.ndim < 2]
    return [
        {"params": g, "lr": lr, "base_lr": lr, "weight_decay": w}
        for g, w in ((decay, wd), (rest, 0.0))
        if g
    ]


@torch.no_grad()
def evaluate(encoder, head, task, loader) -> dict[str, float]:
    encoder.eval()
    head.eval()
    preds, labels = [], []
    for batch in loader:
        p = task.predict(head(_features(encoder, batch, head)).float())
        preds.append(p["label"] if "label" in p else p["score"])
        labels.append(batch["labels"])
    return task.evaluate(torch.cat(preds), torch.cat(labels))


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate every task's adapter; see the module docstring.

    ``config``: ``recipe`` (the row's recipe as plain data), ``data_dir``, ``method``,
    ``plan`` (task name of each global optimizer step), ``progress``.
    """
    from palbert.backbones import load_backbone, load_tokenizer
    from palbert.tasks import build_task

    t0 = time.perf_counter()
    recipe, method, plan = config["recipe"], config["method"], config["plan"]
    tr, opt, sch = recipe["train"], recipe["optimizer"], recipe["schedule"]
    seed, total = int(tr["seed"]), len(plan)
    warmup = (
        sch["warmup_steps"]
        if sch.get("warmup_steps") is not None
        else int(sch.get("warmup_ratio", 0.0) * total)
    )
    torch.manual_seed(seed)
    backbone = load_backbone(recipe["backbone"]["name"], impl=recipe["backbone"]["impl"])
    tokenizer = load_tokenizer(backbone)
    entries = {(e if isinstance(e, str) else e["name"]): e for e in recipe["tasks"]}
    names = list(entries)
    tasks = {n: build_task(task_spec(entries[n]), data_dir=config["data_dir"]) for n in names}
    torch.manual_seed(seed)  # heads drawn in task order from the seed, as palbert does
    heads = {n: tasks[n].build_head(backbone.hidden_size) for n in names}
    encoder_parameters = sum(p.numel() for p in backbone.model.parameters())
    ad = Adapters(backbone.model, method, names, seed)
    encoder = ad.model
    out: dict[str, Any] = {"tasks": {}, "encoder_parameters": encoder_parameters}
    for n in names:
        task, head = tasks[n], heads[n]
        on_error = "raise" if isinstance(entries[n], str) else entries[n].get("on_error", "raise")
        max_len = task.spec.max_length or tr["max_length"]
        bs = task.spec.batch_size or tr["batch_size"]
        loader = task.batches(
            "train", tokenizer, bs, max_len, Order(shuffle=True, seed=seed), on_error=on_error
        )
        dev = task.batches(
            recipe["eval"].get("split", "dev"),
            tokenizer,
            tr["eval_batch_size"],
            max_len,
            on_error=on_error,
        )
        ad.use(n)
        trainable = ad.params[n] + [(f"head.{k}", p) for k, p in head.named_parameters()]
        groups = param_groups(ad.params[n], opt["task_lr"] or opt["lr"], opt["weight_decay"])
        groups += param_groups(
            [(k, p) for k, p in head.named_parameters()],
            opt.get("head_lr") or opt["task_lr"] or opt["lr"],
            opt["weight_decay"],
        )
        optimizer = torch.optim.AdamW(
            groups, betas=tuple(opt["betas"]), eps=opt["eps"], weight_decay=0.0
        )
        steps = [s for s, t in enumerate(plan) if t == n]
        batches = stream(loader)
        encoder.train()
        head.train()
        t_task, examples, losses = time.perf_counter(), 0, []
        for i, s in enumerate(steps):
            batch = next(batches)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_factor(s, warmup, total, sch["decay"])
            loss = task.loss(head(_features(encoder, batch, head)), batch["labels"])
            if not torch.isfinite(loss):
                raise RuntimeError(f"task {n!r}: loss {loss.item()} at global step {s + 1}")
            loss.backward()
            if tr.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_([p for _, p in trainable], tr["grad_clip"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            examples += int(batch["labels"].shape[0])
            losses.append(float(loss.detach()))
            if config.get("progress") and (i + 1) % 20 == 0:
                print(
                    f"  {n}: {i + 1}/{len(steps)} loss {sum(losses[-20:]) / 20:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
        train_s = time.perf_counter() - t_task
        t_eval = time.perf_counter()
        scores = evaluate(encoder, head, task, dev)
        out["tasks"][n] = {
            "dev": scores,
            "primary_metric": task.spec.primary_metric,
            "batches": len(steps),
            "examples": examples,
            "adapter_parameters": ad.count(n),
            "head_parameters": sum(p.numel() for p in head.parameters()),
            "train_s": round(train_s, 2),
            "eval_s": round(time.perf_counter() - t_eval, 2),
            "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        }
        print(f"  {n}: dev {scores}", file=sys.stderr, flush=True)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    out["torch"] = torch.__version__
    import transformers

    out["transformers"] = transformers.__version__
    out["library_version"] = _version(method["library"])
    return out


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: per_task.py CONFIG.json RESULT.json")
    cfg = json.loads(open(sys.argv[1]).read())
    result = run(cfg)
    with open(sys.argv[2], "w") as fh:
        json.dump(result, fh, indent=1)
