"""PAL overhead: one task's PALs against the bare backbone, measured side by side.

    python bench/bench_pal.py                 # MiniLM (real weights) and random bert-base
    python bench/bench_pal.py --quick         # fewer iterations

For each backbone and input shape the two models run interleaved on the same inputs
(one iteration of each in turn), so machine noise hits both alike; the table reports
median milliseconds and the ratio PAL / bare. Train step = forward, mean loss, backward,
SGD step with everything trainable; inference = eval mode under no_grad.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from palbert import ModuleConfig, PalBert, load_backbone


def flops_ratio(H: int, L: int, T: int, d: int, ffn: int) -> float:
    """Forward multiply-adds per token with one task's PALs over the bare encoder's."""
    layer = 4 * H * H + 2 * T * H + 2 * H * ffn  # QKV+O, scores+context, FFN
    pal = 2 * H * d + 3 * d * d + 2 * T * d  # V^E, V^D, Q/K/V, scores+context
    return (L * (layer + pal)) / (L * layer)


def step_fn(model, batch, train: bool, pal: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-5) if train else None

    def run():
        if train:
            out = model(batch, task="t") if pal else model(**batch).last_hidden_state
            out.float().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(batch, task="t") if pal else model(**batch)

    return run


class MeanHead(torch.nn.Module):
    encoding, needs_hidden_states = "single", False

    def forward(self, features):
        return features[0].last_hidden_state


def bench(name: str, batch_size: int, seq: int, iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    bare = load_backbone(name).model
    model = PalBert(load_backbone(name), module=ModuleConfig(kind="pal", init="normal"))
    model.add_task("t", MeanHead())
    cfg = model.info.config
    ids = torch.randint(1000, cfg.vocab_size, (batch_size, seq))
    mask = torch.ones_like(ids)
    mask[: batch_size // 2, seq * 3 // 4 :] = 0  # some padding, as real batches have
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    row = {"backbone": name, "batch": batch_size, "seq": seq}
    for mode in ("train", "infer"):
        train = mode == "train"
        bare.train(train), model.train(train)
        runs = {
            "bare": step_fn(bare, batch, train, False),
            "pal": step_fn(model, batch, train, True),
        }
        times = {k: [] for k in runs}
        for i in range(warmup + iters):
            for k, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                if i >= warmup:
                    times[k].append(time.perf_counter() - t0)
        bare_ms = statistics.median(times["bare"]) * 1e3
        pal_ms = statistics.median(times["pal"]) * 1e3
        row[mode] = (bare_ms, pal_ms, pal_ms / bare_ms)
    d = model.task_configs["t"].size
    row["flops"] = flops_ratio(
        cfg.hidden_size, cfg.num_hidden_layers, seq, d, cfg.intermediate_size
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backbones", nargs="+", default=["minilm", "random:bert-base"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'backbone':<18}{'B':>4}{'T':>5}  {'train bare/PAL ms':>20}{'ratio':>7}"
        f"  {'infer bare/PAL ms':>20}{'ratio':>7}{'FLOPs':>7}"
    )
    for name in args.backbones:
        big = "base" in name
        shapes = [(16, 64), (16, 128)] if big else [(32, 64), (32, 128)]
        iters = (3 if big else 8) if args.quick else (8 if big else 20)
        for b, t in shapes:
            r = bench(name, b, t, iters=iters, warmup=2)
            tr, inf = r["train"], r["infer"]
            print(
                f"{name:<18}{b:>4}{t:>5}  {tr[0]:>9.1f} /{tr[1]:>9.1f}{tr[2]:>7.3f}"
                f"  {inf[0]:>9.1f} /{inf[1]:>9.1f}{inf[2]:>7.3f}{r['flops']:>7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
