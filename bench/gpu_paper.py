"""GPU ratios on paper: bench_pal's variants as CUDA kernels, from a census taken on the CPU.

    python -m bench.gpu_paper                     # bench_pal's shapes plus bert-base 32x128
    python -m bench.gpu_paper --shapes minilm:32x64 random:bert-base:64x128

No GPU is used. One train step and one inference forward of each variant run on the CPU under
bf16 autocast (the stand-in for CUDA fp16 autocast: the same casts, 2-byte activations), and a
dispatch mode records every aten op that would launch a kernel: views and allocations are left
out, everything else is one kernel, with its FLOPs (torch's FLOP formulas, scale.py's for the
CPU attention kernel) and the bytes of its tensors. Each kernel is then priced on a GPU as

    max(T_LAUNCH, FLOPs / (fp16 peak x utilisation), bytes / memory bandwidth)

and a step is the sum of its kernels (eager PyTorch runs them one after another). Small
batches are launch-bound (the ratio to bare tends to the ratio of kernel counts); large ones
compute-bound (it tends to the FLOP ratio).

Dropout is switched off for the census: CPU dropout is three ops where CUDA's is one fused
kernel, so each hidden-state dropout call of a train step is added back as two kernels
(forward, backward) of its tensor's bytes. Raw results go to bench/results/gpu-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench import bench_pal
from bench.scale import GPUS, UTILISATION, flop_counter

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = [*bench_pal.SHAPES, "random:bert-base:32x128"]
# Per-kernel floor of eager PyTorch on a GPU: launch plus the framework's own dispatch, which
# for small kernels is what the GPU waits on (assumed; a typical range is 5-20 us).
T_LAUNCH = (5e-6, 10e-6)
# allocations and metadata ops: no kernel on a GPU
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh"}


class Census(TorchDispatchMode):
    """Every kernel-launching aten op run inside the block: (name, FLOPs, bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = flop_counter().flop_registry
        self.kernels: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in NO_KERNEL:
            return out
        formula = self.flops.get(func.overloadpacket)
        flops = formula(*args, **kwargs, out_val=out) if formula else 0
        tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        self.kernels.append((name, int(flops), int(nbytes)))
        return out


def census(run, train: bool) -> dict[str, Any]:
    """The kernels of one call of a bench_pal ``run`` with dropout off, plus CUDA's fused
    dropout kernels."""
    model = run.model
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    saved = [m.p for m in drops]
    added: list[tuple[str, int, int]] = []

    def hook(module, args, out):
        if module.training:  # a fused dropout kernel forward and one backward on CUDA
            nbytes = 2 * out.numel() * out.element_size() + out.numel()  # in, out, 1-byte mask
            added.extend([("native_dropout", 0, nbytes), ("native_dropout_backward", 0, nbytes)])

    handles = [m.register_forward_hook(hook) for m in drops]
    for m in drops:
        m.p = 0.0
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16), Census() as c:
            run()
    finally:
        for m, p in zip(drops, saved, strict=True):
            m.p = p
        for h in handles:
            h.remove()
    kernels = c.kernels + (added if train else [])
    return {
        "kernels": len(kernels),
        "flops": sum(k[1] for k in kernels),
        "bytes": sum(k[2] for k in kernels),
        "by_op": dict(Counter(k[0] for k in kernels).most_common()),
        "list": kernels,
    }


def gpu_seconds(kernels: list, gpu: dict, util: float, launch: float) -> float:
    """Eager step time: each kernel at the slowest of its launch, compute and memory floors."""
    peak, bw = gpu["tflops"] * 1e12 * util, gpu["gbps"] * 1e9
    return sum(max(launch, f / peak, b / bw) for _, f, b in kernels)


def estimate(counts: dict[str, dict], gpu: dict) -> dict[str, dict]:
    """Per variant (and per bench_pal pair "a / b"): step time range on ``gpu`` and the ratio
    to bare (to b) over the assumed settings."""
    settings = [(u, t) for u in UTILISATION for t in T_LAUNCH]
    seconds = {
        k: [gpu_seconds(c["list"], gpu, u, t) for u, t in settings] for k, c in counts.items()
    }
    rows = [(k, k, "bare") for k in counts]
    rows += [(f"{a} / {b}", a, b) for a, b in bench_pal.pairs_in(counts)]
    out = {}
    for name, a, b in rows:
        ratios = [x / y for x, y in zip(seconds[a], seconds[b], strict=True)]
        ms = [x * 1e3 for x in seconds[a]]
        out[name] = {"ms": (min(ms), max(ms)), "ratio": (min(ratios), max(ratios))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="backbone:BxT")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    out = args.out or RESULTS / f"gpu-{stamp}.json"
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.gpu_paper", *sys.argv[1:]]),
        "torch": torch.__version__,
        "assumptions": {"gpus": GPUS, "utilisation": UTILISATION, "t_launch_s": T_LAUNCH},
        "shapes": [],
    }
    for shape in args.shapes:
        name, batch, cfg = bench_pal.shape_batch(shape)
        groups, _ = bench_pal.variants(name, batch, compile=False)
        T = batch["input_ids"].shape[1]
        d = bench_pal.ModuleConfig(kind="pal").resolved(cfg.hidden_size).size
        entry = {
            "shape": shape,
            "flops_ratio": bench_pal.flops_ratio(
                cfg.hidden_size, cfg.num_hidden_layers, T, d, cfg.intermediate_size
            ),
        }
        print(f"\n{shape}: PAL FLOPs ratio (forward, by hand) {entry['flops_ratio']:.3f}")
        for mode in ("train", "infer"):
            counts = {k: census(f, mode == "train") for k, f in groups[mode].items()}
            entry[mode] = {"census": counts, "gpus": {}}
            for g, spec in GPUS.items():
                entry[mode]["gpus"][g] = estimate(counts, spec)
            print(f"  {mode:<6}{'variant':<34}{'kernels':>8}{'GFLOP':>8}  ratio to bare on", end="")
            print("".join(f"{g:>16}" for g in GPUS))
            for k in entry[mode]["gpus"][next(iter(GPUS))]:
                cells = "".join(
                    "{:>16}".format("{:.2f}-{:.2f}".format(*entry[mode]["gpus"][g][k]["ratio"]))
                    for g in GPUS
                )
                c = counts.get(k)
                n, gf = (f"{c['kernels']}", f"{c['flops'] / 1e9:.2f}") if c else ("", "")
                print(f"  {'':<6}{k:<34}{n:>8}{gf:>8}  {'':<15}{cells}")
            for c in counts.values():
                del c["list"]  # the per-kernel list is long; counts by op stay
        results["shapes"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
