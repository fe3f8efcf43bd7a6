"""Scale on paper: time and memory of a recipe on one 16 GB GPU and on 8 with torchrun.

    python -m bench.scale                          # recipes/pal_rr.yaml, bert-base, 32x128
    python -m bench.scale --data PATH              # another CS224N data folder
    python -m bench.scale --recipe R --backbone random:minilm --batch 8 --tokens 64

No GPU is used: everything here is an estimate, but every input is measured or counted on
this machine, and every assumption is a named constant below, printed beside the table.

Measured (CPU, one thread, a randomly initialised encoder of the recipe's shape, the
recipe's module on every task and their heads, one train step of the largest task):
  - FLOPs of forward + backward (torch.utils.flop_counter), with and without the PALs and
    with gradient checkpointing (which recomputes each layer's forward in the backward);
  - activation memory: bytes of the tensors autograd saves for backward (unique storages,
    parameters left out), in fp32 and under CPU bf16 autocast as the 2-byte stand-in for
    CUDA fp16 autocast; with checkpointing, the layers' inputs that the checkpoints keep;
  - parameters: encoder, each task's module, heads.
Counted: each task's training rows (palbert's readers) and, through palbert's own sampler
code, the optimizer steps of the run on 1 and on N processes.
Raw results go to bench/results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bench.machine import machine_info
from palbert import PalBert, load_backbone
from palbert.layers import ModuleConfig
from palbert.recipe import Recipe, RecipeError, load_recipe, resolve_data_dir
from palbert.tasks import build_task
from palbert.training.prepare import global_batches, run_sampler

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
GiB = 1024**3

# -- assumptions (each one printed with the table) ----------------------------------------
GPUS = {  # dense fp16 tensor-core peak (TFLOPS), memory bandwidth (GB/s), memory, links
    "V100-16GB": {"tflops": 125.0, "gbps": 900.0, "mem_gib": 16.0, "links": ["NVLink", "PCIe"]},
    "T4": {"tflops": 65.0, "gbps": 320.0, "mem_gib": 16.0, "links": ["PCIe"]},  # no NVLink
}
UTILISATION = (0.30, 0.50)  # of fp16 peak reached by BERT-base training steps (assumed)
LINKS_GBPS = {"NVLink": 150.0, "PCIe": 12.0}  # NCCL ring all-reduce bus bandwidth (assumed)
CUDA_CONTEXT_GIB = 0.5  # CUDA context + cuBLAS workspace outside the allocator (typical)
FRAGMENTATION = 0.10  # caching-allocator slack on top of the tensors' bytes (assumed)
# Memory traffic of the optimizer step, in fp32 passes over each trainable parameter:
# torch's single-tensor AdamW (palbert sets foreach=False) reads/writes 20 (decay 2, exp_avg
# lerp 3, exp_avg_sq mul+addcmul 5, sqrt/div/add 6, addcdiv 4), GradScaler unscale 2,
# clip_grad_norm_ 3 (norm 1, scale 2).
OPTIMIZER_PASSES = 25
# palbert's all-reduce (loop.py _allreduce) copies the gradients into one flat buffer and
# back: 4 more passes, and one more gradient-sized buffer on every GPU.
ALLREDUCE_COPY_PASSES = 4
# fp32 master weights with fp16 autocast: weight 4 + grad 4 + AdamW exp_avg 4 + exp_avg_sq 4
WEIGHT_BYTES, GRAD_BYTES, ADAM_BYTES = 4, 4, 8
QUORA_FULL_ROWS = 141_506  # CS224N handout's quora-train size (the file here is a sample)


# -- the run's steps ---------------------------------------------------------------------


def count_rows(recipe: Recipe, data_dir: Path) -> dict[str, int]:
    """Training rows of each task as training reads them (bad rows skipped per on_error)."""
    rows = {}
    for e in recipe.tasks:
        task = build_task(e.spec, data_dir=data_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quora's two skipped rows are reported by train
            rows[e.name] = len(task.read("train", on_error=e.on_error))
    return rows


def plan(recipe: Recipe, rows: dict[str, int], world: int) -> dict[str, Any]:
    """Steps of the run on ``world`` processes, from palbert's own batch count per task
    (run.global_batches: per process batch_size, the last partial global batch dropped
    when world > 1) and its sampler (run.run_sampler: epoch policy, round robin, epochs)."""
    names = list(rows)
    sizes = []
    for e in recipe.tasks:
        bs = build_task(e.spec).spec.batch_size or recipe.train.batch_size
        loader = SimpleNamespace(data=range(rows[e.name]), batch_size=bs)
        sizes.append(global_batches(loader, world))
    sampler, total = run_sampler(recipe, sizes)
    draws = torch.bincount(torch.from_numpy(sampler.plan(0)), minlength=len(names)).tolist()
    return {
        "world": world,
        "batches_per_pass": dict(zip(names, sizes, strict=True)),
        "draws_per_epoch": dict(zip(names, draws, strict=True)),
        "steps_per_epoch": sampler.steps_per_epoch,
        "total_steps": total,
        "rows_per_step": recipe.train.batch_size * recipe.train.grad_accum * world,
    }


# -- measuring one train step ---------------------------------------------------------------


VIEWS = {"TBackward0", "ViewBackward0", "UnsafeViewBackward0", "TransposeBackward0"}


def _is_weight_cast(t: torch.Tensor) -> bool:
    """Is ``t`` (a view of) autocast's copy of a parameter? Its bytes do not grow with rows."""
    fn = t.grad_fn
    while fn is not None and fn.name() in VIEWS:  # walk back through views only
        fn = fn.next_functions[0][0]
    if fn is None or not fn.name().startswith("ToCopyBackward"):
        return False
    return any(isinstance(getattr(f, "variable", None), nn.Parameter) for f, _ in fn.next_functions)


class SavedBytes:
    """Bytes of the tensors autograd saves for backward, each storage counted once
    (views of one tensor share it); storages in ``exclude`` (the parameters) are left out.
    ``by_layer`` splits them by the encoder layer that was running when they were saved.

    >>> counter = SavedBytes(exclude=model.parameters())                   # doctest: +SKIP
    >>> with counter: loss = model(x).sum()                                # doctest: +SKIP
    >>> counter.total                                                      # doctest: +SKIP
    """

    def __init__(self, exclude: Any = ()) -> None:
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.seen: dict[int, int] = {}
        self.extra = 0
        self.weight_casts = 0  # of the total: autocast's low-precision copies of weights
        self.casts_by_layer: dict[str, int] = {}
        self.by_layer: dict[str, int] = {}
        self.where = "outside"
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.exclude or key in self.seen:
            return
        self.seen[key] = storage.nbytes()
        self.by_layer[self.where] = self.by_layer.get(self.where, 0) + storage.nbytes()
        if _is_weight_cast(t):
            self.weight_casts += storage.nbytes()
            self.casts_by_layer[self.where] = (
                self.casts_by_layer.get(self.where, 0) + storage.nbytes()
            )

    def add_bytes(self, n: int) -> None:
        """Bytes kept outside autograd's saved tensors (the dropout masks CUDA keeps)."""
        self.extra += n
        self.by_layer[self.where] = self.by_layer.get(self.where, 0) + n

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t  # the graph keeps it alive, so its address is not reused while counting

    @property
    def total(self) -> int:
        return sum(self.seen.values()) + self.extra

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


def build(recipe: Recipe, backbone: str, with_module: bool) -> tuple[PalBert, dict[str, Any]]:
    """The recipe's model on a random encoder: every task's module (or none) and head."""
    torch.manual_seed(recipe.train.seed)
    module = recipe.module if with_module else ModuleConfig(kind="none")
    model = PalBert(load_backbone(backbone, impl=recipe.backbone.impl), module=module)
    tasks = {e.name: build_task(e.spec) for e in recipe.tasks}
    for e in recipe.tasks:
        model.add_task(e.name, tasks[e.name].build_head(model.hidden_size), module=e.module)
    model.set_train_mode(recipe.train.mode)
    model.train()
    return model, tasks


def batch_of(model: PalBert, task: Any, B: int, T: int) -> dict[str, torch.Tensor]:
    """B rows of T tokens (no padding: the 128-token worst case of every row)."""
    g = torch.Generator().manual_seed(0)
    vocab = model.backbone_info.config.vocab_size
    ids = torch.randint(vocab // 2, vocab, (B, T), generator=g)
    labels = torch.zeros(B) if task.spec.kind == "regression" else torch.zeros(B, dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kw) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flops(grad_shape, query_shape, key_shape, value_shape, *a, **kw) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# torch's FLOP counter has formulas for the CUDA attention kernels but not for the CPU one
# that SDPA runs here: the same matmuls, counted the same way.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_flash_backward_flops
    ),
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def measure_step(
    model: PalBert,
    task_name: str,
    task: Any,
    batch: dict[str, torch.Tensor],
    *,
    checkpointing: bool,
    bf16: bool,
    backward: bool = True,
) -> dict[str, Any]:
    """FLOPs (forward, backward) and saved-for-backward bytes of one train step.

    Dropout runs with p=0 and its masks are added as CUDA keeps them, one byte an element
    (CPU dropout saves a mask in the activations' dtype); with p=0 CPU SDPA also takes its
    fused kernel, which like CUDA's fused kernels saves no T x T matrix (CUDA's regenerates
    the attention dropout from a seed). Checkpointed layers keep their inputs and no masks.
    """
    model.gradient_checkpointing(checkpointing)
    counter = SavedBytes(exclude=model.parameters())
    handles = []
    for i, layer in enumerate(model.backbone_info.layers):

        def enter(module: nn.Module, args: tuple, i: int = i) -> None:
            counter.where = f"layer{i}"
            if checkpointing:  # the checkpoint keeps the layer's inputs for its recompute
                for a in args:
                    if isinstance(a, torch.Tensor):
                        counter.add(a)

        def leave(module: nn.Module, args: tuple, out: Any) -> None:
            counter.where = "outside"

        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave))
    dropout_p = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)}

    def mask(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if torch.is_grad_enabled() and not (checkpointing and counter.where != "outside"):
            counter.add_bytes(out.numel())  # a bool mask

    for m, p in dropout_p.items():
        m.p = 0.0
        if p > 0:
            handles.append(m.register_forward_hook(mask))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    try:
        with flop_counter() as fwd_flops, counter, ctx:
            loss = task.loss(model(batch, task=task_name), batch["labels"])
        out = {"forward_flops": fwd_flops.get_total_flops(), "saved_bytes": counter.total}
        out["weight_cast_bytes"] = counter.weight_casts
        out["weight_cast_bytes_by_layer"] = dict(counter.casts_by_layer)
        out["saved_bytes_by_layer"] = dict(counter.by_layer)
        if backward:
            with flop_counter() as bwd_flops:
                loss.backward()
            out["backward_flops"] = bwd_flops.get_total_flops()
            out["step_flops"] = out["forward_flops"] + out["backward_flops"]
    finally:
        for h in handles:
            h.remove()
        for m, p in dropout_p.items():
            m.p = p
        model.gradient_checkpointing(False)
        model.zero_grad(set_to_none=True)
    return out


def parameters(model: PalBert, task_name: str) -> dict[str, int]:
    rep = model.parameter_report()
    per_task = {n: t["module"] for n, t in rep["tasks"].items()}
    reached = rep["backbone"] + per_task[task_name] + rep["tasks"][task_name]["head"]
    return {
        "encoder": rep["backbone"],
        "modules_per_task": per_task,
        "heads": rep["heads"],
        "total": rep["total"],
        "trainable": rep["trainable"],
        "reached_per_step": reached,  # encoder + one task's module and head get gradients
    }


def measure(recipe: Recipe, backbone: str, task_name: str, B: int, T: int) -> dict[str, Any]:
    """Every measured input of the estimate, one step each (CPU, a few minutes)."""
    out: dict[str, Any] = {}
    bare, tasks = build(recipe, backbone, with_module=False)
    batch = batch_of(bare, tasks[task_name], B, T)
    t0 = time.perf_counter()
    out["bare_fp32"] = measure_step(
        bare, task_name, tasks[task_name], batch, checkpointing=False, bf16=False
    )
    del bare
    model, tasks = build(recipe, backbone, with_module=True)
    task = tasks[task_name]
    for key, ckpt, bf16, bwd in (
        ("pal_fp32", False, False, True),
        ("pal_fp32_ckpt", True, False, True),
        ("pal_bf16", False, True, False),  # same FLOPs; the saved bytes are what differ
        ("pal_bf16_ckpt", True, True, False),
    ):
        print(f"  measuring {key} ...", file=sys.stderr, flush=True)
        out[key] = measure_step(model, task_name, task, batch, checkpointing=ckpt, bf16=bf16)
        if not bwd:
            out[key].pop("backward_flops", None)
    out["params"] = parameters(model, task_name)
    out["hidden_size"] = model.hidden_size
    out["num_layers"] = model.num_layers
    out["measure_seconds"] = time.perf_counter() - t0
    return out


# -- the estimate --------------------------------------------------------------------------


def memory(m: dict[str, Any], ckpt: bool, world: int) -> dict[str, float]:
    """Peak bytes of one GPU at the measured batch (fp16 autocast, fp32 master weights)."""
    p = m["params"]
    static = p["total"] * WEIGHT_BYTES + p["trainable"] * ADAM_BYTES
    static += p["reached_per_step"] * GRAD_BYTES
    if world > 1:
        static += p["reached_per_step"] * GRAD_BYTES  # the flat all-reduce buffer
    run = m["pal_bf16_ckpt" if ckpt else "pal_bf16"]
    acts, casts = run["saved_bytes"], run["weight_cast_bytes"]
    if ckpt:  # the backward recomputes one layer at a time and holds its saved tensors
        layers = m["pal_bf16"]["saved_bytes_by_layer"]
        top = max((k for k in layers if k.startswith("layer")), key=layers.get)
        acts += layers[top]
        casts += m["pal_bf16"]["weight_cast_bytes_by_layer"].get(top, 0)
    return {"static": static, "activations": acts, "weight_casts": casts}


def peak_gib(static: float, acts: float) -> float:
    return ((static + acts) * (1 + FRAGMENTATION)) / GiB + CUDA_CONTEXT_GIB


def max_batch(m: dict[str, Any], B: int, mem_gib: float, ckpt: bool, world: int) -> int:
    """Largest batch at the measured length that fits, activations scaling with rows."""
    mm = memory(m, ckpt, world)
    room = (mem_gib - CUDA_CONTEXT_GIB) * GiB / (1 + FRAGMENTATION) - mm["static"]
    per_row = (mm["activations"] - mm["weight_casts"]) / B
    return max(0, int((room - mm["weight_casts"]) // per_row))


def step_seconds(m: dict[str, Any], gpu: dict, util: float, ckpt: bool, world: int, link: str):
    """(compute, optimizer, all-reduce) seconds of one optimizer step on one GPU."""
    run = m["pal_fp32_ckpt" if ckpt else "pal_fp32"]
    compute = run["step_flops"] / (gpu["tflops"] * 1e12 * util)
    reached = m["params"]["reached_per_step"]
    passes = OPTIMIZER_PASSES + (ALLREDUCE_COPY_PASSES if world > 1 else 0)
    optim = reached * 4 * passes / (gpu["gbps"] * 1e9)
    comm = 0.0
    if world > 1:  # ring all-reduce of the fp32 gradients: each GPU moves 2(n-1)/n of them
        comm = 2 * (world - 1) / world * reached * GRAD_BYTES / (LINKS_GBPS[link] * 1e9)
    return compute, optim, comm


def estimate(m: dict[str, Any], plans: dict[int, dict], B: int) -> dict[str, Any]:
    out: dict[str, Any] = {"memory": {}, "time": []}
    for ckpt in (False, True):
        for world in plans:
            mm = memory(m, ckpt, world)
            key = f"{'ckpt' if ckpt else 'no_ckpt'}_world{world}"
            out["memory"][key] = {
                **mm,
                "peak_gib": peak_gib(mm["static"], mm["activations"]),
                "max_batch_16gib": max_batch(m, B, 16.0, ckpt, world),
            }
    for name, gpu in GPUS.items():
        for ckpt in (False, True):
            for world, p in plans.items():
                for link in gpu["links"] if world > 1 else ["-"]:
                    row = {"gpu": name, "ckpt": ckpt, "world": world, "link": link}
                    for util in UTILISATION:
                        c, o, a = step_seconds(m, gpu, util, ckpt, world, link)
                        bwd_share = m["pal_fp32"]["backward_flops"] / m["pal_fp32"]["step_flops"]
                        serial = c + o + a
                        overlap = c * (1 - bwd_share) + max(c * bwd_share, a) + o
                        row[f"u{util:.2f}"] = {
                            "compute_s": c,
                            "optimizer_s": o,
                            "allreduce_s": a,
                            "step_s": serial,
                            "step_overlap_s": overlap,
                            "run_h": serial * p["total_steps"] / 3600 if p else None,
                            "run_overlap_h": overlap * p["total_steps"] / 3600 if p else None,
                        }
                    out["time"].append(row)
    return out


# -- printing --------------------------------------------------------------------------------


def fmt_range(lo: float, hi: float, f: str = ".2f") -> str:
    lo, hi = sorted((lo, hi))
    return f"{lo:{f}}-{hi:{f}}"


def report(res: dict[str, Any]) -> str:
    m, est, B, T = res["measured"], res["estimate"], res["batch"], res["tokens"]
    lo, hi = (f"u{u:.2f}" for u in UTILISATION)
    lines = [f"## Scale on paper: {res['recipe']} ({res['backbone']}, {B}x{T} tokens)", ""]
    lines.append("| scenario | rows per task | steps/epoch | steps (run) |")
    lines.append("|---|---|---:|---:|")
    for sc in res["scenarios"]:
        for world, p in sc["plans"].items():
            rows = ", ".join(f"{k} {v:,}" for k, v in sc["rows"].items())
            lines.append(
                f"| {sc['name']}, {world} GPU{'s' if int(world) > 1 else ''} | {rows} | "
                f"{p['steps_per_epoch']:,} | {p['total_steps']:,} |"
            )
    p = m["params"]
    f32, f32c, bare = m["pal_fp32"], m["pal_fp32_ckpt"], m["bare_fp32"]
    lines += [
        "",
        f"Measured: train step {f32['step_flops'] / 1e12:.3f} TFLOP "
        f"(forward {f32['forward_flops'] / 1e12:.3f}); bare encoder "
        f"{bare['step_flops'] / 1e12:.3f}, so PALs x{f32['step_flops'] / bare['step_flops']:.4f}"
        f" (bench_pal.py's formula: x{res['flops_ratio_formula']:.4f}); with checkpointing "
        f"{f32c['step_flops'] / 1e12:.3f} TFLOP. Saved for backward: fp32 "
        f"{f32['saved_bytes'] / GiB:.2f} GiB, bf16 autocast "
        f"{m['pal_bf16']['saved_bytes'] / GiB:.2f} GiB; with checkpointing fp32 "
        f"{f32c['saved_bytes'] / GiB:.3f}, bf16 {m['pal_bf16_ckpt']['saved_bytes'] / GiB:.3f}"
        f" GiB. Parameters: encoder {p['encoder']:,}, modules "
        + ", ".join(f"{k} {v:,}" for k, v in p["modules_per_task"].items())
        + f", heads {p['heads']:,}; {p['trainable']:,} trainable.",
        "",
        "| one GPU's memory at batch " + f"{B}x{T} | static | activations | peak | fits 16 GB? |"
        " largest batch in 16 GB |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for key, mm in est["memory"].items():
        ckpt, world = key.split("_world")
        label = f"{'checkpointing' if ckpt == 'ckpt' else 'no checkpointing'}, " + (
            "1 GPU" if world == "1" else f"{world} GPUs (DDP)"
        )
        lines.append(
            f"| {label} | {mm['static'] / GiB:.2f} GiB | {mm['activations'] / GiB:.2f} GiB | "
            f"{mm['peak_gib']:.2f} GiB | {'yes' if mm['peak_gib'] <= 16 else 'no'} | "
            f"{mm['max_batch_16gib']} |"
        )
    lines += [
        "",
        "| GPU | ckpt | GPUs | link | step (ms) | all-reduce (ms) | run (min), serial | "
        "run (min), overlapped | speed-up |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    one = {(r["gpu"], r["ckpt"]): r for r in est["time"] if r["world"] == 1 and r["link"] == "-"}
    for r in est["time"]:
        a, b = r[lo], r[hi]
        base = one[(r["gpu"], r["ckpt"])]
        n = r["world"]  # rows per second against one GPU's
        speed = fmt_range(
            n * base[lo]["step_s"] / a["step_s"], n * base[hi]["step_s"] / b["step_s"], ".1f"
        )
        run = "-" if a["run_h"] is None else fmt_range(a["run_h"] * 60, b["run_h"] * 60, ".1f")
        run_o = (
            "-"
            if a["run_h"] is None
            else fmt_range(a["run_overlap_h"] * 60, b["run_overlap_h"] * 60, ".1f")
        )
        lines.append(
            f"| {r['gpu']} | {'yes' if r['ckpt'] else 'no'} | {r['world']} | {r['link']} | "
            f"{fmt_range(a['step_s'] * 1e3, b['step_s'] * 1e3, '.0f')} | "
            f"{a['allreduce_s'] * 1e3:.1f} | {run} | {run_o} | {speed}x |"
        )
    lines += ["", "Assumptions:"] + [f"- {a}" for a in res["assumptions"]]
    return "\n".join(lines)


def assumptions(scenario: str, T: int) -> list[str]:
    gpus = ", ".join(
        f"{k} {v['tflops']:.0f} TFLOPS fp16, {v['gbps']:.0f} GB/s" for k, v in GPUS.items()
    )
    return [
        "no GPU was used: FLOPs and saved bytes are measured on the CPU, the rest is arithmetic",
        f"every row is {T} tokens, max_length (the worst case: batches pad to their longest "
        "row, so real steps are cheaper); one pass per row (cross-encoded pairs)",
        "CPU bf16 autocast stands in for CUDA fp16 autocast (same 2-byte activations, same "
        "ops kept in fp32); attention saves no T x T matrix (SDPA's fused kernels)",
        f"weights fp32 + AdamW states: {WEIGHT_BYTES}+{ADAM_BYTES} bytes per parameter, "
        f"grads {GRAD_BYTES} bytes for the encoder + the step's task (others stay None)",
        f"peak = (weights + grads + AdamW + saved activations) x {1 + FRAGMENTATION:.2f} "
        f"(allocator slack) + {CUDA_CONTEXT_GIB} GiB CUDA context/cuBLAS workspace; "
        "transient backward buffers are within the slack",
        "checkpointing's peak adds one layer's recomputed activations to the kept inputs",
        f"throughput: {gpus}; {UTILISATION[0]:.0%}-{UTILISATION[1]:.0%} of fp16 peak reached (assumed, not "
        "measured)",
        f"optimizer step memory-bound: {OPTIMIZER_PASSES} fp32 passes per trainable "
        f"parameter (+{ALLREDUCE_COPY_PASSES} for the all-reduce copies); launch overhead "
        "not modelled",
        "8 GPUs: batch_size is per process (palbert's Shard), the last partial global batch "
        "of each task dropped; palbert all-reduces once after the backward (serial); "
        "'overlapped' is what bucketed DDP overlap would give",
        f"ring all-reduce of fp32 grads, 2(n-1)/n of them per GPU, bus bandwidth "
        f"{', '.join(f'{k} {v:.0f} GB/s' for k, v in LINKS_GBPS.items())} (assumed)",
        "dev evaluation, data loading and checkpoint writing are not counted",
        scenario,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pal_rr.yaml")
    parser.add_argument("--data", type=Path, default=None, help="CS224N data folder")
    parser.add_argument("--backbone", default="random:bert-base", help="random:<shape>")
    parser.add_argument("--batch", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--tokens", type=int, default=None, help="default: max_length")
    parser.add_argument("--task", default=None, help="task of the measured step (default: last)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a FLOP count and a byte count: no need for speed

    overrides = [f"data_dir={args.data}"] if args.data else []
    recipe = load_recipe(args.recipe, overrides)
    B = args.batch or recipe.train.batch_size
    T = args.tokens or recipe.train.max_length
    names = [e.name for e in recipe.tasks]
    task_name = args.task or ("quora" if "quora" in names else names[0])
    res: dict[str, Any] = {
        "command": " ".join(["python -m bench.scale", *sys.argv[1:]]),
        "machine": machine_info(threads=1),
        "recipe": str(args.recipe.name),
        "backbone": args.backbone,
        "batch": B,
        "tokens": T,
        "task": task_name,
        "encodings": {e.name: build_task(e.spec).spec.encoding for e in recipe.tasks},
        "scenarios": [],
    }
    scenario = "no training data found: step counts left out"
    try:
        data_dir = resolve_data_dir(recipe)
    except RecipeError as e:
        print(f"scale: {e.args[0].splitlines()[0]}; skipping the step counts", file=sys.stderr)
        data_dir = None
    if data_dir is not None:
        rows = count_rows(recipe, data_dir)
        worlds = (1, args.gpus)
        res["scenarios"].append(
            {
                "name": f"data in {data_dir.name}",
                "rows": rows,
                "plans": {w: plan(recipe, rows, w) for w in worlds},
            }
        )
        if "quora" in rows and rows["quora"] < QUORA_FULL_ROWS:
            full = {**rows, "quora": QUORA_FULL_ROWS}
            res["scenarios"].append(
                {
                    "name": "full Quora",
                    "rows": full,
                    "plans": {w: plan(recipe, full, w) for w in worlds},
                }
            )
            scenario = (
                f"'full Quora' takes {QUORA_FULL_ROWS:,} training pairs (the CS224N handout's "
                f"count; the file in {data_dir} has {rows['quora']:,}); run times below are "
                "for it"
            )
        else:
            scenario = f"row counts from {data_dir}"

    print(f"measuring one train step of {args.backbone} at {B}x{T} ...", file=sys.stderr)
    m = measure(recipe, args.backbone, task_name, B, T)
    res["measured"] = m
    cfg = load_backbone(args.backbone).config
    from bench.bench_pal import flops_ratio

    d = recipe.module.resolved(cfg.hidden_size).size
    res["flops_ratio_formula"] = flops_ratio(
        cfg.hidden_size, cfg.num_hidden_layers, T, d, cfg.intermediate_size
    )
    plans = res["scenarios"][-1]["plans"] if res["scenarios"] else {1: None, args.gpus: None}
    res["estimate"] = estimate(m, plans, B)
    res["assumptions"] = assumptions(scenario, T)
    out = args.out or RESULTS / f"scale-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(report(res))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
