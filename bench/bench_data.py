"""Data preparation against training: is tokenizing and batching SST negligible?

Measures, on the real SST train split:

- tokenization, cold (read + check + one batched fast-tokenizer call) and from the on-disk
  cache, in examples/s;
- collating one epoch into padded batches (shuffled, and length-grouped), in examples/s;
- the train step of the embedded MiniLM on the same batches (forward, cross-entropy on a
  linear [CLS] head, backward, SGD step);

and prints data preparation per batch as a fraction of a train step (target: under 5%).

    python -m bench.bench_data [--data-dir ../shared/data/cs224n] [--batch-size 32] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from palbert.backbones import load_backbone, load_tokenizer
from palbert.encoded import Encoded
from palbert.tasks import build_task
from palbert.tasks.batching import Order
from palbert.tasks.paths import default_data_dir

DEFAULT_DATA = default_data_dir(["sst-train.csv"])  # palbert's own rule (palbert.tasks.paths)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument(
        "--steps", type=int, default=10, help="timed train steps (after 2 warm-up steps)"
    )
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    if args.data_dir is None or not args.data_dir.is_dir():
        raise SystemExit(
            f"SST data not found at {args.data_dir}; pass --data-dir or set PALBERT_DATA_DIR"
        )
    torch.set_num_threads(args.threads)
    tok = load_tokenizer("minilm")
    bs, ml = args.batch_size, args.max_length

    with tempfile.TemporaryDirectory() as cache:
        task = build_task("sst", data_dir=args.data_dir, cache_dir=cache)
        data, t_cold = timed(lambda: task.tokenized("train", tok, max_length=ml))
        n = len(data)
        rows, t_read = timed(
            lambda: build_task("sst", data_dir=args.data_dir, cache_dir=False).read("train")
        )
        fresh = build_task("sst", data_dir=args.data_dir, cache_dir=cache)  # new process-like state
        _, t_cached = timed(lambda: fresh.tokenized("train", tok, max_length=ml))

    loader = task.batches("train", tok, bs, ml, Order(shuffle=True, seed=0))
    batches, t_epoch = timed(lambda: list(loader))
    grouped = task.batches("train", tok, bs, ml, Order(shuffle=True, seed=0, group_by_length=True))
    gbatches, t_gepoch = timed(lambda: list(grouped))
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    cells = sum(b["input_ids"].numel() for b in batches)
    gcells = sum(b["input_ids"].numel() for b in gbatches)

    bb = load_backbone("minilm")
    model = bb.model.train()
    head = task.build_head(bb.hidden_size).train()
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=1e-3)

    def step(b) -> None:
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
        )
        logits = head([Encoded(out.last_hidden_state, b["attention_mask"])])
        loss = task.loss(logits, b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:
        step(b)
    times = []
    for b in batches[2 : 2 + args.steps]:
        _, t = timed(lambda b=b: step(b))
        times.append(t)
    t_step = statistics.median(times)
    n_batches = len(batches)
    collate_per_batch = t_epoch / n_batches
    cold_per_batch = t_cold / n_batches  # tokenizing once, spread over one epoch

    print(
        f"SST train: {n} examples, batch {bs}, max_length {ml}, {args.threads} threads, torch {torch.__version__}"
    )
    print(f"read + check rows only         {t_read * 1e3:8.1f} ms   {n / t_read:10.0f} ex/s")
    print(f"tokenize cold (read+tokenize)  {t_cold * 1e3:8.1f} ms   {n / t_cold:10.0f} ex/s")
    print(f"tokenize from disk cache       {t_cached * 1e3:8.1f} ms   {n / t_cached:10.0f} ex/s")
    print(
        f"collate one epoch (shuffled)   {t_epoch * 1e3:8.1f} ms   {n / t_epoch:10.0f} ex/s  ({n_batches} batches, {collate_per_batch * 1e3:.2f} ms/batch, padding {1 - tokens / cells:.0%})"
    )
    print(
        f"collate one epoch (grouped)    {t_gepoch * 1e3:8.1f} ms   {n / t_gepoch:10.0f} ex/s  (padding {1 - tokens / gcells:.0%})"
    )
    print(
        f"train step MiniLM (median of {len(times)}) {t_step * 1e3:8.1f} ms   {bs / t_step:10.0f} ex/s"
    )
    print(f"ratio collate / train step               {collate_per_batch / t_step:8.3%}")
    print(
        f"ratio (collate + cold tokenize) / step   {(collate_per_batch + cold_per_batch) / t_step:8.3%}   (target < 5%)"
    )


if __name__ == "__main__":
    main()
