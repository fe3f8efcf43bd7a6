"""Time minBERT against transformers' BertModel (sdpa) on the same weights and inputs.

For each model and batch shape it measures, side by side, the inference time (eval, no_grad)
and the train-step time (train mode: forward, sum of the last hidden state, backward, SGD step)
and prints the median milliseconds and the ratio minBERT / transformers::

    python -m bench.bench_backbones                      # ~4 min on 2 idle CPU cores
    python -m bench.bench_backbones --full               # bert-base at every shape too (long on CPU)
    python -m bench.bench_backbones --models minilm --iters 10 --shapes 32x128

The two implementations run alternately within each iteration, so a neighbour's load on a
shared machine slows both rather than one of them. ``ratio`` compares medians; ``ratio(min)``
compares the fastest iterations, which is steadier when other processes share the cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.machine import machine_info
from palbert.backbones import load_backbone

IMPLS = ("minbert", "transformers")
ALL_SHAPES = ["16x64", "16x128", "32x64", "32x128"]


def load_pair(name: str) -> dict[str, nn.Module]:
    """Both implementations of one backbone, holding the same weights."""
    if name == "minilm":
        return {impl: load_backbone("minilm", impl=impl).model for impl in IMPLS}
    torch.manual_seed(0)
    theirs = load_backbone(f"random:{name}").model
    mine = load_backbone(f"random:{name}", impl="minbert").model
    mine.load_state_dict(theirs.state_dict(), strict=True)
    return {"minbert": mine, "transformers": theirs}


def make_batch(vocab_size: int, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Sentence pairs padded to ``seq``: lengths between seq/2 and seq, one row unpadded."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    positions = torch.arange(seq)[None, :]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(1000, vocab_size, (batch, seq), generator=g) * mask  # pad id 0
    token_type_ids = ((positions >= lengths[:, None] // 2) & mask.bool()).long()
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=token_type_ids)


def inference_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        model.eval()
        with torch.no_grad():
            model(**batch)

    return step


def train_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)

    def step() -> None:
        model.train()
        model(**batch).last_hidden_state.sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_side_by_side(
    steps: dict[str, Callable[[], None]], warmup: int, iters: int
) -> dict[str, list[float]]:
    """Milliseconds of each timed iteration per implementation, running them alternately."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {impl: [] for impl in steps}
    order = list(steps)
    for i in range(iters):
        for impl in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            start = time.perf_counter()
            steps[impl]()
            times[impl].append((time.perf_counter() - start) * 1e3)
    return times


def parse_shape(text: str) -> tuple[int, int]:
    batch, seq = text.lower().split("x")
    return int(batch), int(seq)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=["minilm", "bert-base"], help="minilm, bert-base, ..."
    )
    p.add_argument("--shapes", nargs="+", default=ALL_SHAPES, help="BATCHxSEQ for MiniLM")
    p.add_argument("--base-shapes", nargs="+", default=["16x64"], help="BATCHxSEQ for the others")
    p.add_argument("--iters", type=int, default=5, help="timed iterations for MiniLM")
    p.add_argument("--base-iters", type=int, default=2, help="timed iterations for the others")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"]
    )
    p.add_argument("--full", action="store_true", help="every shape and --iters for every model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.full:
        args.base_shapes, args.base_iters = args.shapes, args.iters
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    info = machine_info(transformers=transformers.__version__)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    header = f"{'model':<10} {'batch':>5} {'seq':>4} {'mode':<9} {'minBERT ms':>11} {'transf. ms':>11} {'ratio':>6} {'ratio(min)':>10}"
    print(header)
    print("-" * len(header))
    ratios = []
    started = time.perf_counter()
    for name in args.models:
        models = load_pair(name)
        vocab = models["minbert"].config.vocab_size
        minilm = name == "minilm"
        for shape in args.shapes if minilm else args.base_shapes:
            batch_size, seq = parse_shape(shape)
            torch.manual_seed(args.seed)
            batch = make_batch(vocab, batch_size, seq, args.seed)
            for mode in args.modes:
                make_step = inference_step if mode == "inference" else train_step
                steps = {impl: make_step(model, batch) for impl, model in models.items()}
                iters = args.iters if minilm else args.base_iters
                times = time_side_by_side(steps, args.warmup, iters)
                ms = {impl: statistics.median(t) for impl, t in times.items()}
                ratio = ms["minbert"] / ms["transformers"]
                # a busy neighbour only ever adds time, so the fastest runs are the least noisy
                min_ratio = min(times["minbert"]) / min(times["transformers"])
                ratios.append(ratio)
                print(
                    f"{name:<10} {batch_size:>5} {seq:>4} {mode:<9} "
                    f"{ms['minbert']:>11.1f} {ms['transformers']:>11.1f} {ratio:>6.3f} "
                    f"{min_ratio:>10.3f}",
                    flush=True,
                )
    geomean = statistics.geometric_mean(ratios)
    print(f"geometric mean ratio minBERT/transformers: {geomean:.3f}")
    print(f"({time.perf_counter() - started:.0f} s; medians of timed iterations after warmup)")


if __name__ == "__main__":
    main()
