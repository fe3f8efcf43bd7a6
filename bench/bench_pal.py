"""Task modules' cost against the bare encoder and PEFT LoRA, measured side by side.

    python bench/bench_pal.py            # MiniLM 32x64, 32x128 and random bert-base 16x64
    python bench/bench_pal.py --quick    # fewer rounds and iterations, no torch.compile
    python bench/bench_pal.py --shapes minilm:32x64 --rounds 7 --iters 5

Every variant runs in one process on the same padded batch. A round runs each variant
``iters`` times, the variants taking turns (one call each, in an order shuffled per round),
so machine noise hits all alike. Per round a variant's time is its minimum (and its median)
over the round's calls; its ratio is that over the bare encoder's in the same round. The
table gives, over the rounds, the median of the per-round ratios and their spread (max -
min): a spread above the margin you care about means the machine was too noisy to tell.

Variants (train = forward, mean loss, backward, SGD step; infer = eval mode, no_grad):
  bare           the encoder alone; train updates all of it (the reference of every ratio)
  pal            one task's PALs, everything trains           (train, infer)
  pal_frozen     PALs train, encoder frozen                    (train)
  lora8_frozen   PEFT LoRA r=8 on query/value, base frozen     (train, infer unmerged)
  loraP_frozen   PEFT LoRA with as many parameters as the PALs (train)
  low_rank, adapter: palbert's other task modules, frozen encoder (train, infer)
  pal_mixed4     the batch's rows as four tasks' PALs (contiguous rows), against pal
  *_compiled     torch.compile of bare / PAL                   (infer)

Raw per-call times and the summary go to bench/results/pal-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from palbert import ModuleConfig, PalBert, load_backbone

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ["minilm:32x64", "minilm:32x128", "random:bert-base:16x64"]


def flops_ratio(H: int, L: int, T: int, d: int, ffn: int) -> float:
    """Forward multiply-adds per token with one task's PALs over the bare encoder's."""
    layer = 4 * H * H + 2 * T * H + 2 * H * ffn  # QKV+O, scores+context, FFN
    pal = 2 * H * d + 3 * d * d + 2 * T * d  # V^E, V^D, Q/K/V, scores+context
    return (L * (layer + pal)) / (L * layer)


class MeanHead(nn.Module):
    encoding, needs_hidden_states = "single", False

    def forward(self, features):
        return features[0].last_hidden_state


def palbert(name: str, kind: str, tasks: int = 1, mode: str = "full") -> PalBert:
    torch.manual_seed(0)
    model = PalBert(load_backbone(name), module=ModuleConfig(kind=kind, init="normal"))
    for i in range(tasks):
        model.add_task(f"t{i}", MeanHead())
    model.set_train_mode(mode)
    return model


def lora(name: str, r: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"])
    return get_peft_model(load_backbone(name).model, config)


def step(model: nn.Module, call, train: bool):
    """One train step (forward, loss, backward, SGD) or one inference forward."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5) if train else None

    def run() -> None:
        model.train(train)
        if train:
            call().float().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                call()

    return run


def variants(name: str, batch: dict, compile: bool) -> tuple[dict, dict]:
    """name -> (run, group): the models of one shape, each behind a zero-argument call."""
    bare = load_backbone(name).model
    pal = palbert(name, "pal")
    pal_frozen = palbert(name, "pal", mode="frozen")
    n_pal = sum(p.numel() for p in pal.task_modules.parameters())
    cfg = pal.info.config
    r_match = max(1, round(n_pal / (cfg.num_hidden_layers * 2 * 2 * cfg.hidden_size)))
    lora8, loraP = lora(name, 8), lora(name, r_match)
    low_rank = palbert(name, "low_rank", mode="frozen")
    adapter = palbert(name, "adapter", mode="frozen")
    mixed = palbert(name, "pal", tasks=4)
    B = batch["input_ids"].shape[0]
    mixed_batch = {**batch, "task_ids": torch.arange(B) * 4 // B}  # four contiguous runs

    def enc(m):
        return lambda: m(**batch).last_hidden_state

    def task(m):
        return lambda: m(batch, task="t0")

    def mixed_call():
        return torch.cat(list(mixed(mixed_batch).values()))

    train = {
        "bare": step(bare, enc(bare), True),
        "pal": step(pal, task(pal), True),
        "pal_frozen": step(pal_frozen, task(pal_frozen), True),
        "lora8_frozen": step(lora8, enc(lora8), True),
        f"loraP_frozen(r={r_match})": step(loraP, enc(loraP), True),
        "low_rank_frozen": step(low_rank, task(low_rank), True),
        "adapter_frozen": step(adapter, task(adapter), True),
        "pal_mixed4": step(mixed, mixed_call, True),
    }
    infer = {
        "bare": step(bare, enc(bare), False),
        "pal": step(pal, task(pal), False),
        "lora8": step(lora8, enc(lora8), False),
        "low_rank": step(low_rank, task(low_rank), False),
        "adapter": step(adapter, task(adapter), False),
        "pal_mixed4": step(mixed, mixed_call, False),
    }
    if compile:
        bare_c, pal_c = torch.compile(bare), torch.compile(pal)
        infer["bare_compiled"] = step(bare, enc(bare_c), False)
        infer["pal_compiled"] = step(pal, task(pal_c), False)
    params = {
        "pal": n_pal,
        "lora8": sum(p.numel() for p in lora8.parameters() if p.requires_grad),
        f"loraP(r={r_match})": sum(p.numel() for p in loraP.parameters() if p.requires_grad),
        "low_rank": sum(p.numel() for p in low_rank.task_modules.parameters()),
        "adapter": sum(p.numel() for p in adapter.task_modules.parameters()),
    }
    return {"train": train, "infer": infer}, params


def measure(runs: dict, rounds: int, iters: int, warmup: int, clock=time.perf_counter) -> dict:
    """Per-call seconds of each variant, rounds x iters, the variants taking turns."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {k: [[] for _ in range(rounds)] for k in runs}
    order = list(runs)
    rng = random.Random(0)
    for r in range(rounds):
        rng.shuffle(order)
        for _ in range(iters):
            for k in order:
                t0 = clock()
                runs[k]()
                times[k][r].append(clock() - t0)
    return times


# (a, b): the ratio a / b is a goal of its own (issue 12), reported beside the ratios to bare
PAIRS = [
    ("pal_mixed4", "pal"),
    ("pal_frozen", "lora8_frozen"),
    ("pal_frozen", "loraP_frozen"),
    ("pal_compiled", "bare_compiled"),
    ("bare_compiled", "bare"),
    ("pal_compiled", "pal"),
]


def ratio(times: dict, a: str, b: str) -> dict:
    """Over the rounds: median and spread (max - min) of the per-round ratio a / b, with each
    round's time taken as the minimum and as the median of its calls."""
    row = {}
    for stat, f in (("min", min), ("median", statistics.median)):
        ratios = [f(x) / f(y) for x, y in zip(times[a], times[b], strict=True)]
        row[f"ratio_{stat}"] = statistics.median(ratios)
        row[f"spread_{stat}"] = max(ratios) - min(ratios)
    return row


def summarize(times: dict) -> dict:
    out = {
        k: {"ms_min": min(min(t) for t in v) * 1e3, **ratio(times, k, "bare")}
        for k, v in times.items()
    }
    for a, b in PAIRS:
        a = next((k for k in times if k.startswith(a)), None)
        b = next((k for k in times if k.startswith(b)), None)
        if a and b:
            out[f"{a} / {b}"] = {"ms_min": float("nan"), **ratio(times, a, b)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds x 2 calls, no compile")
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="backbone:BxT")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile", action="store_true", help="compile even under --quick")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time, steadier than wall time on a machine shared with "
        "other jobs (use with --threads 1, where no thread waits on another)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rounds = args.rounds or (3 if args.quick else 7)
    iters = args.iters or (2 if args.quick else 4)
    compile = args.compile or not (args.quick or args.no_compile)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "rounds": rounds,
        "iters": iters,
    }
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    command = " ".join(["python bench/bench_pal.py", *sys.argv[1:]])
    results = {"machine": machine, "command": command, "shapes": []}
    out = args.out or RESULTS / f"pal-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    for shape in args.shapes:
        name, bt = shape.rsplit(":", 1)
        B, T = (int(x) for x in bt.split("x"))
        torch.manual_seed(0)
        cfg = load_backbone(name).config
        ids = torch.randint(1000, cfg.vocab_size, (B, T))
        mask = torch.ones_like(ids)
        mask[: B // 2, T * 3 // 4 :] = 0  # half the rows padded, as real batches are
        batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        groups, params = variants(name, batch, compile)
        d = ModuleConfig(kind="pal").resolved(cfg.hidden_size).size
        flops = flops_ratio(cfg.hidden_size, cfg.num_hidden_layers, T, d, cfg.intermediate_size)
        entry = {"shape": shape, "flops_ratio": flops, "params": params}
        print(f"\n{shape}: PAL FLOPs ratio {flops:.3f}; trainable parameters {params}")
        for mode, runs in groups.items():
            times = measure(runs, rounds, iters, warmup=1, clock=clock)
            summary = summarize(times)
            entry[mode] = {"times_s": times, "summary": summary}
            print(
                f"  {mode:<6}{'variant':<24}{'ms(min)':>9}{'ratio':>8}{'spread':>8}"
                f"{'ratio(med)':>11}{'spread':>8}"
            )
            for k, s in summary.items():
                print(
                    f"  {'':<6}{k:<24}{s['ms_min']:>9.1f}{s['ratio_min']:>8.3f}"
                    f"{s['spread_min']:>8.3f}{s['ratio_median']:>11.3f}{s['spread_median']:>8.3f}",
                    flush=True,
                )
        results["shapes"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))  # after each shape: a cut run keeps some
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
