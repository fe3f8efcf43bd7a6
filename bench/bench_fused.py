"""What each fused path buys: PAL with and without it, against the bare encoder, one process.

    python -m bench.bench_fused                       # MiniLM 32x64, wall clock
    python -m bench.bench_fused --threads 1 --clock cpu --shape minilm:32x128

Variants: "fused" (palbert as shipped); "plain_qkv" (three Q/K/V GEMMs); "plain_mixed"
(mixed-batch rows gathered, scattered into zeros, then added) on a four-task batch against
"fused" on the same four-task batch; "plain" (all of them, the formulas as written). Rounds, turns and ratios as
in bench_pal.py; results to bench/results/fused-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone

import torch

from bench.bench_pal import RESULTS, measure, palbert, ratio, step
from palbert import load_backbone
from palbert.layers import LowDimAttention, Router

# The unfused references are the ones tests/test_fused.py checks the fused paths against.
from tests.test_fused import plain_attention, plain_term

PATCHES = {
    "qkv": [(LowDimAttention, "forward", plain_attention)],
    "mixed": [(Router, "term", plain_term)],
}


def patched(run, names):
    """``run`` with the plain paths ``names`` patched in for its duration."""

    def call():
        saved = []
        for n in names:
            for obj, attr, fn in PATCHES[n]:
                saved.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, fn)
        try:
            run()
        finally:
            for obj, attr, fn in reversed(saved):
                setattr(obj, attr, fn)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm:32x64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    name, bt = args.shape.rsplit(":", 1)
    B, T = (int(x) for x in bt.split("x"))
    torch.manual_seed(0)
    cfg = load_backbone(name).config
    ids = torch.randint(1000, cfg.vocab_size, (B, T))
    mask = torch.ones_like(ids)
    mask[: B // 2, T * 3 // 4 :] = 0
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    bare = load_backbone(name).model
    one = palbert(name, "pal")
    four = palbert(name, "pal", tasks=4)
    mixed = {**batch, "task_ids": torch.arange(B) * 4 // B}
    print(
        f"{args.shape} torch {torch.__version__} threads {torch.get_num_threads()} "
        f"clock {args.clock} rounds {args.rounds} x {args.iters}"
    )
    out = {"command": " ".join(["python -m bench.bench_fused", *sys.argv[1:]]), "modes": {}}
    for train in (False, True):
        mode = "train" if train else "infer"
        bare_run = step(bare, lambda: bare(**batch).last_hidden_state, train)
        pal_run = step(one, lambda: one(batch, task="t0"), train)
        mix_run = step(four, lambda: torch.cat(list(four(mixed).values())), train)
        runs = {
            "bare": bare_run,
            "fused": pal_run,
            "plain_qkv": patched(pal_run, ["qkv"]),
            "plain": patched(pal_run, ["qkv", "mixed"]),
            "mixed4_fused": mix_run,
            "mixed4_plain_mixed": patched(mix_run, ["mixed"]),
        }
        times = measure(runs, args.rounds, args.iters, warmup=1, clock=clock)
        rows = {k: ratio(times, k, "bare") for k in runs}
        rows["mixed4_fused / fused"] = ratio(times, "mixed4_fused", "fused")
        rows["mixed4_plain_mixed / fused"] = ratio(times, "mixed4_plain_mixed", "fused")
        out["modes"][mode] = {"times_s": times, "summary": rows}
        print(f"{mode}: {'variant':<28}{'ratio':>8}{'spread':>8}{'ratio(med)':>11}{'spread':>8}")
        for k, r in rows.items():
            print(
                f"{'':<7}{k:<28}{r['ratio_min']:>8.3f}{r['spread_min']:>8.3f}"
                f"{r['ratio_median']:>11.3f}{r['spread_median']:>8.3f}",
                flush=True,
            )
    path = RESULTS / f"fused-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
