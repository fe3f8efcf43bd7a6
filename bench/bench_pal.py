"""Task modules' cost against the bare encoder and PEFT LoRA, measured side by side.

    python -m bench.bench_pal            # MiniLM 32x64, 32x128, random bert-base 16x64, 16x128
    python -m bench.bench_pal --quick    # fewer rounds and iterations, no torch.compile
    python -m bench.bench_pal --shapes minilm:32x64 --rounds 7 --iters 5
    python -m bench.bench_pal --memory   # peak memory of one train step of each variant
    python -m bench.bench_pal --device cuda   # on a GPU: fp16 autocast, CUDA max-allocated

Every variant runs in one process on the same padded batch. A round runs each variant
``iters`` times, the variants taking turns (one call each, in an order shuffled per round),
so machine noise hits all alike. Per round a variant's time is its minimum (and its median)
over the round's calls; its ratio is that over the bare encoder's in the same round. The
table gives, over the rounds, the median of the per-round ratios and their spread (max -
min): a spread above the margin you care about means the machine was too noisy to tell.

Variants (train = forward, mean loss, backward, SGD step; infer = eval mode, no_grad):
  bare           the encoder alone; train updates all of it (the reference of every ratio)
  bare_again     a second bare encoder: an A/A control, whose ratio to bare (ideally 1) is
                 the resolution of this run; a difference smaller than its distance from 1
                 (or its interval's width) is not one this run can show
  pal            one task's PALs, everything trains           (train, infer)
  pal_encoder    the PAL model's own encoder with no PAL routed: "pal / pal_encoder" is
                 the PAL's cost on the very same weights in memory, free of the placement
                 effects the A/A pair shows between two copies of one encoder
  pal_frozen     PALs train, encoder frozen                    (train)
  lora8_frozen   PEFT LoRA r=8 on query/value, base frozen     (train, infer unmerged)
  loraP_frozen   PEFT LoRA with as many parameters as the PALs (train)
  low_rank, adapter: palbert's other task modules, frozen encoder (train, infer)
  pal_mixed4     the batch's rows as four tasks' PALs (contiguous rows), against pal
  *_compiled     torch.compile of bare / PAL                   (infer)

Memory (``--memory``): each train variant's step runs in a fresh process of its own (so no
allocator cache from another variant hides its growth); the figure is the peak resident set
(VmHWM, reset just before the step) minus the resident set with the models built, i.e. the
gradients and activations of one step. On CUDA it is ``torch.cuda.max_memory_allocated``
over the step minus the memory allocated before it.

Raw per-call times and the summary go to bench/results/pal-<time>.json (``--memory``:
bench/results/memory-<time>.json).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.machine import machine_info
from palbert import ModuleConfig, PalBert, load_backbone

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CPU = torch.device("cpu")
SHAPES = ["minilm:32x64", "minilm:32x128", "random:bert-base:16x64", "random:bert-base:16x128"]


def flops_ratio(H: int, L: int, T: int, d: int, ffn: int) -> float:
    """Forward multiply-adds per token with one task's PALs over the bare encoder's."""
    layer = 4 * H * H + 2 * T * H + 2 * H * ffn  # QKV+O, scores+context, FFN
    pal = 2 * H * d + 3 * d * d + 2 * T * d  # V^E, V^D, Q/K/V, scores+context
    return (L * (layer + pal)) / (L * layer)


class MeanHead(nn.Module):
    encoding, needs_hidden_states = "single", False

    def forward(self, features):
        return features[0].last_hidden_state


def palbert(
    name: str, kind: str, tasks: int = 1, mode: str = "full", device: torch.device = CPU, **module
) -> PalBert:
    torch.manual_seed(0)
    config = ModuleConfig(kind=kind, init="normal", **module)
    model = PalBert(load_backbone(name), module=config)
    for i in range(tasks):
        model.add_task(f"t{i}", MeanHead())
    model.set_train_mode(mode)
    return model.to(device)


def lora(name: str, r: int, device: torch.device = CPU) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["query", "value"])
    return get_peft_model(load_backbone(name).model, config).to(device)


def step(model: nn.Module, call, train: bool):
    """One train step (forward, loss, backward, SGD) or one inference forward, on the device
    the model is on (on CUDA under fp16 autocast)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5) if train else None
    cuda = next(model.parameters()).device.type == "cuda"

    def run() -> None:
        model.train(train)
        with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            if train:
                call().float().mean().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    call()
        if cuda:  # the clock must see the kernels finish, not just their launch
            torch.cuda.synchronize()

    run.model = model  # for gpu_paper.py's census
    return run


def variants(
    name: str, batch: dict, compile: bool, device: torch.device = CPU
) -> tuple[dict, dict]:
    """name -> (run, group): the models of one shape on ``device``, each behind a
    zero-argument call."""
    bare = load_backbone(name).model.to(device)
    # A/A control: a second bare encoder, identical work in memory of its own; its ratio to
    # bare is what this machine can resolve, and a goal closer than that cannot be checked
    again = load_backbone(name).model.to(device)
    pal = palbert(name, "pal", device=device)
    pal_frozen = palbert(name, "pal", mode="frozen", device=device)
    n_pal = sum(p.numel() for p in pal.task_modules.parameters())
    cfg = pal.backbone_info.config
    r_match = max(1, round(n_pal / (cfg.num_hidden_layers * 2 * 2 * cfg.hidden_size)))
    lora8, loraP = lora(name, 8, device), lora(name, r_match, device)
    low_rank = palbert(name, "low_rank", mode="frozen", device=device)
    adapter = palbert(name, "adapter", mode="frozen", device=device)
    mixed = palbert(name, "pal", tasks=4, device=device)
    B = batch["input_ids"].shape[0]
    task_ids = (torch.arange(B) * 4 // B).to(device)  # four contiguous runs of rows
    mixed_batch = {**batch, "task_ids": task_ids}

    def enc(m):
        return lambda: m(**batch).last_hidden_state

    def task(m):
        return lambda: m(batch, task="t0")

    def mixed_call():
        return torch.cat(list(mixed(mixed_batch).values()))

    def own_encoder(m):  # the PAL model's encoder alone: its weights, no route, no PAL
        return lambda: m.backbone(**batch).last_hidden_state

    train = {
        "bare": step(bare, enc(bare), True),
        "pal_encoder": step(pal, own_encoder(pal), True),
        "bare_again": step(again, enc(again), True),
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
        "pal_encoder": step(pal, own_encoder(pal), False),
        "bare_again": step(again, enc(again), False),
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


def shape_batch(shape: str, device: torch.device = CPU) -> tuple[str, dict, Any]:
    """``backbone:BxT`` -> (backbone, a padded batch of random ids on ``device``, its config)."""
    name, bt = shape.rsplit(":", 1)
    B, T = (int(x) for x in bt.split("x"))
    torch.manual_seed(0)
    cfg = load_backbone(name).config
    ids = torch.randint(1000, cfg.vocab_size, (B, T))
    mask = torch.ones_like(ids)
    mask[: B // 2, T * 3 // 4 :] = 0  # half the rows padded, as real batches are
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    return name, {k: v.to(device) for k, v in batch.items()}, cfg


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


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def step_memory(run) -> dict:
    """Bytes one call of ``run`` adds at its peak: CUDA max-allocated on a GPU, else the
    peak resident set (VmHWM, reset first through /proc/self/clear_refs) over the resident
    set before the call. Call it on a fresh process's first step: memory an earlier step
    freed stays resident in the allocator and would hide this one's growth."""
    gc.collect()
    if next(run.model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        return {"peak_bytes": torch.cuda.max_memory_allocated() - before, "kind": "cuda"}
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so growth shows
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set
    except OSError as e:
        raise SystemExit(f"--memory needs Linux's /proc/self/clear_refs: {e}") from e
    before = _proc_status_kb("VmRSS")
    run()
    return {"peak_bytes": (_proc_status_kb("VmHWM") - before) * 1024, "kind": "cpu_rss"}


TRAIN_VARIANTS = [
    "bare",
    "pal",
    "pal_frozen",
    "lora8_frozen",
    "loraP_frozen",
    "low_rank_frozen",
    "adapter_frozen",
    "pal_mixed4",
]


def memory_table(shapes: list[str], device: str, threads: int | None) -> dict:
    """Each (shape, train variant) in a fresh process (see step_memory); bytes by variant."""
    out = {}
    for shape in shapes:
        out[shape] = {}
        for variant in TRAIN_VARIANTS:
            cmd = [
                sys.executable,
                "-m",
                "bench.bench_pal",
                "--shapes",
                shape,
                "--memory-of",
                variant,
            ]
            cmd += ["--device", device] + (["--threads", str(threads)] if threads else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            out[shape][variant] = json.loads(done.stdout.splitlines()[-1])
            mb = out[shape][variant]["peak_bytes"] / 2**20
            print(f"  {shape:<24}{variant:<24}{mb:>9.1f} MiB", flush=True)
    return out


# (a, b): the ratio a / b is a goal of its own (issue 12), reported beside the ratios to bare
PAIRS = [
    ("pal", "pal_encoder"),
    ("pal_mixed4", "pal"),
    ("pal_frozen", "lora8_frozen"),
    ("pal_frozen", "loraP_frozen"),
    ("pal_compiled", "bare_compiled"),
    ("bare_compiled", "bare"),
    ("pal_compiled", "pal"),
]


def base_name(key: str) -> str:
    """A variant's name without its settings: "loraP_frozen(r=29)" -> "loraP_frozen"."""
    return key.split("(")[0]


def pairs_in(keys) -> list[tuple[str, str]]:
    """The PAIRS whose two variants are both among ``keys``, as those keys."""
    by_name = {base_name(k): k for k in keys}
    return [(by_name[a], by_name[b]) for a, b in PAIRS if a in by_name and b in by_name]


def ratio(times: dict, a: str, b: str) -> dict:
    """a / b over the rounds, three ways:

    - ``ratio_min`` / ``ratio_median``: the median over rounds of the per-round ratio, each
      round's time its minimum (median) call; ``spread_*`` the range (max - min) of those.
    - ``ratio_paired``: the median over every turn of a's call over b's call in that turn
      (seconds apart, so slow spells of a shared machine hit both), with ``ci95_paired``
      the 95% bootstrap interval of that median: the figure to hold against a goal.
    """
    row = {}
    for stat, f in (("min", min), ("median", statistics.median)):
        ratios = [f(x) / f(y) for x, y in zip(times[a], times[b], strict=True)]
        row[f"ratio_{stat}"] = statistics.median(ratios)
        row[f"spread_{stat}"] = max(ratios) - min(ratios)
    turns = [
        x / y
        for xs, ys in zip(times[a], times[b], strict=True)
        for x, y in zip(xs, ys, strict=True)
    ]
    row["ratio_paired"] = statistics.median(turns)
    row["ci95_paired"] = bootstrap_ci(turns)
    return row


def bootstrap_ci(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median of ``values``."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def summarize(times: dict) -> dict:
    out = {
        k: {"ms_min": min(min(t) for t in v) * 1e3, **ratio(times, k, "bare")}
        for k, v in times.items()
    }
    for a, b in pairs_in(times):
        out[f"{a} / {b}"] = {"ms_min": float("nan"), **ratio(times, a, b)}
    return out


def keep(variant: str, chosen: list[str] | None) -> bool:
    """Whether ``--variants`` keeps a variant: bare and its A/A control always, others by
    their name up to "(" (loraP_frozen)."""
    return chosen is None or variant in ("bare", "bare_again") or base_name(variant) in chosen


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
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="only these variants (bare is always kept), e.g. --variants pal lora8_frozen",
    )
    parser.add_argument("--memory", action="store_true", help="peak memory of a train step")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # one child
    parser.add_argument("--device", default="cpu", help="cpu or cuda (fp16 autocast)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        (shape,) = args.shapes
        name, batch, _ = shape_batch(shape, device)
        groups, _ = variants(name, batch, compile=False, device=device)
        key = next(k for k in groups["train"] if base_name(k) == args.memory_of)
        print(json.dumps({"variant": key, **step_memory(groups["train"][key])}))
        return
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rounds = args.rounds or (3 if args.quick else 7)
    iters = args.iters or (2 if args.quick else 4)
    compile = args.compile or not (args.quick or args.no_compile)
    machine = machine_info(device, clock=args.clock, rounds=rounds, iters=iters)
    print(" ".join(f"{k}={v}" for k, v in machine.items()), flush=True)
    command = " ".join(["python -m bench.bench_pal", *sys.argv[1:]])
    if args.memory:
        del machine["clock"], machine["rounds"], machine["iters"]
        out = args.out or RESULTS / f"memory-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
        table = memory_table(args.shapes, args.device, args.threads)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": machine, "command": command, "memory": table}))
        print(f"\nraw results: {out}")
        return
    results = {"machine": machine, "command": command, "shapes": []}
    out = args.out or RESULTS / f"pal-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    for shape in args.shapes:
        name, batch, cfg = shape_batch(shape, device)
        T = batch["input_ids"].shape[1]
        groups, params = variants(name, batch, compile, device)
        d = ModuleConfig(kind="pal").resolved(cfg.hidden_size).size
        flops = flops_ratio(cfg.hidden_size, cfg.num_hidden_layers, T, d, cfg.intermediate_size)
        entry = {"shape": shape, "flops_ratio": flops, "params": params}
        print(f"\n{shape}: PAL FLOPs ratio {flops:.3f}; trainable parameters {params}")
        for mode, runs in groups.items():
            runs = {k: f for k, f in runs.items() if keep(k, args.variants)}
            times = measure(runs, rounds, iters, warmup=1, clock=clock)
            summary = summarize(times)
            entry[mode] = {"times_s": times, "summary": summary}
            print(
                f"  {mode:<6}{'variant (ratio to bare)':<30}{'ms(min)':>9}{'ratio':>8}{'spread':>8}"
                f"{'ratio(med)':>11}{'spread':>8}{'paired':>8}  95% CI"
            )
            for k, s in summary.items():
                lo, hi = s["ci95_paired"]
                print(
                    f"  {'':<6}{k:<30}{s['ms_min']:>9.1f}{s['ratio_min']:>8.3f}"
                    f"{s['spread_min']:>8.3f}{s['ratio_median']:>11.3f}{s['spread_median']:>8.3f}"
                    f"{s['ratio_paired']:>8.3f}  {lo:.3f}-{hi:.3f}",
                    flush=True,
                )
        results["shapes"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))  # after each shape: a cut run keeps some
    print(f"\nraw results: {out}")


if __name__ == "__main__":
    main()
