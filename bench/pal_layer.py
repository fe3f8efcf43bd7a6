"""Where a PAL's time goes: one encoder layer against the parts of its PAL, op by op.

    python -m bench.pal_layer                            # MiniLM and bert-base at 32x64
    python -m bench.pal_layer --shapes minilm:32x128 --threads 1

Each part runs on its real input shape:

- "bare layer": the backbone's layer 0 (transformers' BertLayer) with no route set;
- "layer + PAL": the same layer as palbert runs it inside a forward (the forward wrapper,
  the residual hook, the route, the PAL term and its sum): its ratio to the bare layer is
  the PAL's overhead per layer, to be held against the FLOP share beside it;
- "layer + PAL, again (A/A)": the same, on a second copy of the model: identical work, so
  its distance from "layer + PAL" is what this machine can resolve;
- "layer + PAL, k heads of 34": the same d_pal split into the paper's 34-dim heads, where
  the default splits it otherwise (MiniLM: 6 heads of 17);
- the PAL's parts alone: V^E (H -> d_pal), its attention (the Q/K/V GEMM and SDPA), V^D
  with the residual sum, the whole term; and V^E sharing one GEMM with the layer's own
  query projection (which reads the same h) against the two GEMMs run apart.

"infer" is the forward under no_grad in eval mode; "train" is forward and backward with
dropout on, as a train step runs it. Parts take turns, one call each in an order shuffled
per turn. Per part: the minimum over ``--calls`` turns (these calls are milliseconds long,
so the minimum is steadier than a whole step's time), and the median over turns of its call
over the bare layer's call in the same turn with a 95% bootstrap interval. Each part's
cost is set against its FLOPs: the PAL would cost the FLOP ratio if every part ran as many
FLOPs per second as the bare layer does. Raw results go to bench/results/layer-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import bench_pal
from bench.machine import machine_info
from palbert.layers import Route
from palbert.masks import sdpa_padding_mask

RESULTS = Path(__file__).resolve().parent / "results"


def first(out):
    """A layer's hidden states, whether transformers returns them alone or in a tuple."""
    return out[0] if isinstance(out, tuple) else out


def parts(name: str, B: int, T: int) -> tuple[dict, dict, int]:
    """name -> (zero-argument call, its forward multiply-adds), and d_pal."""
    model = bench_pal.palbert(name, "pal")
    cfg = model.backbone_info.config
    H, ffn = cfg.hidden_size, cfg.intermediate_size
    pal = model.task_modules["t0"]
    d = pal.config.size
    layer = model.backbone.encoder.layer[0]
    torch.manual_seed(0)
    h = torch.randn(B, T, H, requires_grad=True)
    y = torch.randn(B, T, d, requires_grad=True)
    keep = torch.ones(B, T)
    keep[: B // 2, T * 3 // 4 :] = 0  # half the rows padded, as bench_pal's batches are
    mask = sdpa_padding_mask(keep)
    additive = (1.0 - keep[:, None, None, :]) * torch.finfo(h.dtype).min  # BertLayer's mask
    attn, query = pal.attn["0"], layer.attention.self.query
    # an A/A control: the same model built again (its own weights' memory); its ratio to
    # "layer + PAL" is this machine's resolution, placement effects included
    again = bench_pal.palbert(name, "pal")
    # the same PAL with the paper's head width (34 dims, as bert-base's 204 has) at this d_pal
    heads = d // 34 if d % 34 == 0 else None
    wide = (
        bench_pal.palbert(name, "pal", heads=heads) if heads and heads != pal.config.heads else None
    )
    route = Route.of(keep, task="t0")  # one route, as a forward builds one for all layers

    def routed(m):
        def call():
            with m.router.routing(route):
                return first(m.backbone.encoder.layer[0](h, attention_mask=additive))

        return call

    calls = {
        "bare layer": lambda: first(layer(h, attention_mask=additive)),
        # the whole layer as palbert runs it: wrapper, hooks, route, PAL term and the sum
        "layer + PAL": routed(model),
        "layer + PAL, again (A/A)": routed(again),
        "PAL: V^E": lambda: pal.V_E(h),
        "PAL: attention": lambda: attn(y, mask),
        "PAL: V^D + residual": lambda: h + pal.V_D(y),
        "PAL: whole term": lambda: h + pal.residual(0, h, mask),
        # the idea: V^E shares one GEMM with the layer's query projection
        "Q and V^E, two GEMMs": lambda: query(h).sum() + pal.V_E(h).sum(),
        "Q and V^E, one GEMM": lambda: F.linear(
            h, torch.cat([query.weight, pal.V_E.weight]), torch.cat([query.bias, pal.V_E.bias])
        ).sum(),
    }
    bare_macs = 4 * H * H + 2 * T * H + 2 * H * ffn
    pal_macs = 2 * H * d + 3 * d * d + 2 * T * d
    macs = {  # per token
        "bare layer": bare_macs,
        "layer + PAL": bare_macs + pal_macs,
        "layer + PAL, again (A/A)": bare_macs + pal_macs,
        "PAL: V^E": H * d,
        "PAL: attention": 3 * d * d + 2 * T * d,
        "PAL: V^D + residual": d * H,
        "PAL: whole term": 2 * H * d + 3 * d * d + 2 * T * d,
        "Q and V^E, two GEMMs": H * H + H * d,
        "Q and V^E, one GEMM": H * H + H * d,
    }
    extra = [again]
    if wide is not None:
        key = f"layer + PAL, {heads} heads of {d // heads}"
        calls[key], macs[key] = routed(wide), bare_macs + pal_macs
        extra.append(wide)
    modules = [layer, pal] + [p for m in extra for p in (m.backbone.encoder.layer[0], m)]
    return {k: (calls[k], macs[k] * B * T) for k in calls}, {"modules": modules, "h": h, "y": y}, d


def timed(call, train: bool, ctx: dict):
    """One forward (no_grad, eval) or forward + backward (train mode) of ``call``."""

    def run() -> None:
        for m in ctx["modules"]:
            m.train(train)
        if not train:
            with torch.no_grad():
                call()
            return
        out = call()
        out.backward(torch.ones_like(out))
        for t in (ctx["h"], ctx["y"], *[p for m in ctx["modules"] for p in m.parameters()]):
            t.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["minilm:32x64", "random:bert-base:32x64"])
    parser.add_argument("--calls", type=int, default=40, help="turns per part (default 40)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(calls=args.calls)
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    results = {"machine": machine, "command": " ".join(["python", *sys.argv]), "shapes": []}
    for shape in args.shapes:
        name, bt = shape.rsplit(":", 1)
        B, T = (int(x) for x in bt.split("x"))
        calls, ctx, d = parts(name, B, T)
        entry = {"shape": shape, "d_pal": d}
        for mode in ("infer", "train"):
            runs = {k: timed(c, mode == "train", ctx) for k, (c, _) in calls.items()}
            times = {k: [] for k in runs}
            order = list(runs)
            rng = random.Random(0)
            for r in range(args.calls + 2):
                rng.shuffle(order)  # no part always runs right after another
                for k in order:
                    t0 = time.perf_counter()
                    runs[k]()
                    if r >= 2:  # two warm-up turns
                        times[k].append(time.perf_counter() - t0)
            best = {k: min(v) for k, v in times.items()}
            bare_s, bare_macs = best["bare layer"], calls["bare layer"][1]
            rows = {}
            print(f"\n{shape} {mode} (d_pal={d}):")
            print(
                f"  {'part':<30}{'ms':>8}{'x bare':>8}{'FLOP share':>11}{'FLOP/s vs bare':>16}"
                f"{'paired':>8}  95% CI"
            )
            for k, s in best.items():
                macs = calls[k][1]
                # per turn: this part's call over the bare layer's call of the same turn
                turns = [x / y for x, y in zip(times[k], times["bare layer"], strict=True)]
                rows[k] = {
                    "ms": s * 1e3,
                    "of_bare": s / bare_s,
                    "flop_share": macs / bare_macs,
                    "efficiency": (macs / s) / (bare_macs / bare_s),
                    "paired": statistics.median(turns),
                    "ci95_paired": bench_pal.bootstrap_ci(turns),
                    "times_s": times[k],
                }
                r_ = rows[k]
                print(
                    f"  {k:<30}{r_['ms']:>8.2f}{r_['of_bare']:>8.3f}{r_['flop_share']:>11.3f}"
                    f"{r_['efficiency']:>16.2f}{r_['paired']:>8.3f}"
                    "  {:.3f}-{:.3f}".format(*r_["ci95_paired"])
                )
            entry[mode] = rows
        results["shapes"].append(entry)
    out = args.out or RESULTS / f"layer-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
