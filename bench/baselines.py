"""What the frozen MiniLM backbone gives with no fine-tuning, on the CS224N dev sets.

    python -m bench.baselines [--data DIR] [--max-length 64] [--json out.json]

- SST: a linear probe (logistic regression, L2, fitted on the train set) on frozen [CLS]
  and on mean-pooled embeddings; dev accuracy.
- Quora: cosine similarity of the two questions' mean-pooled embeddings, thresholded; the
  threshold is the best one on (a sample of) the train set, and the dev accuracy at that
  threshold is reported (with the dev-optimal "oracle" threshold beside it).
- STS: zero-shot cosine of mean-pooled embeddings; dev Pearson and Spearman.
- CFIMDB: a linear probe as for SST.

These are the numbers the README shows next to the quickstart's, so users see what training
bought. Runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from palbert.backbones import load_backbone, load_tokenizer
from palbert.tasks import build_task
from palbert.tasks.paths import default_data_dir


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], max_length: int, batch: int = 64):
    """[CLS] and mean-pooled last-layer embeddings of ``texts`` (sorted by length for speed)."""
    order = np.argsort([len(t) for t in texts])
    cls = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    mean = np.zeros_like(cls)
    for s in range(0, len(texts), batch):
        idx = order[s : s + batch]
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        cls[idx] = h[:, 0].numpy()
        mean[idx] = ((h * m).sum(1) / m.sum(1)).numpy()
    return cls, mean


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def probe(xtr, ytr, xdev, ydev, classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression (L-BFGS, weight decay picked on a held-out tenth)."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xdev = (xtr - mu) / sd, (xdev - mu) / sd
    n = len(xtr)
    perm = np.random.default_rng(0).permutation(n)
    hold, fit = perm[: n // 10], perm[n // 10 :]

    def train(x, y, wd):
        x, y = torch.tensor(x), torch.tensor(y)
        lin = torch.nn.Linear(x.shape[1], classes)
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(lin(x), y) + wd * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return lin

    def acc(lin, x, y):
        with torch.no_grad():
            return float((lin(torch.tensor(x)).argmax(-1).numpy() == y).mean())

    best = max(
        (acc(train(xtr[fit], ytr[fit], wd), xtr[hold], ytr[hold]), wd)
        for wd in (1e-4, 1e-3, 1e-2, 1e-1)
    )[1]
    return acc(train(xtr, ytr, best), xdev, ydev)


def best_threshold(sim: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``sim >= threshold``."""
    cands = np.unique(np.round(sim, 4))
    accs = [((sim >= c) == y).mean() for c in cands]
    i = int(np.argmax(accs))
    return float(cands[i]), float(accs[i])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=default_data_dir(), help="default: palbert's data folder")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--quora-train-sample", type=int, default=4000)
    ap.add_argument("--json", default=None, help="also write the scores here")
    args = ap.parse_args()
    t0 = time.time()
    bb = load_backbone(args.backbone)
    tok = load_tokenizer(bb)
    model = bb.model.eval()
    out: dict[str, dict[str, float]] = {}

    def rows(task, split, on_error="raise"):
        ex = task.read(split, on_error=on_error)
        return ex, np.array([e.label for e in ex])

    for name, classes in (("sst", 5), ("cfimdb", 2)):
        task = build_task(name, data_dir=args.data)
        tr, ytr = rows(task, "train")
        dv, ydv = rows(task, "dev")
        ctr, mtr = embed(model, tok, [e.text_a for e in tr], args.max_length)
        cdv, mdv = embed(model, tok, [e.text_a for e in dv], args.max_length)
        out[name] = {
            "probe_cls_accuracy": probe(ctr, ytr, cdv, ydv, classes),
            "probe_mean_accuracy": probe(mtr, ytr, mdv, ydv, classes),
        }
        print(name, out[name], flush=True)

    quora = build_task("quora", data_dir=args.data)
    tr, ytr = rows(quora, "train", on_error="skip")
    pick = np.random.default_rng(0).permutation(len(tr))[: args.quora_train_sample]
    tr, ytr = [tr[i] for i in pick], ytr[pick]
    dv, ydv = rows(quora, "dev")
    sims = {}
    for split, ex in (("train", tr), ("dev", dv)):
        _, a = embed(model, tok, [e.text_a for e in ex], args.max_length)
        _, b = embed(model, tok, [e.text_b for e in ex], args.max_length)
        sims[split] = cosine(a, b)
    thr, _ = best_threshold(sims["train"], ytr)
    _, oracle = best_threshold(sims["dev"], ydv)
    out["quora"] = {
        "cosine_threshold": thr,
        "accuracy": float(((sims["dev"] >= thr) == ydv).mean()),
        "oracle_dev_accuracy": oracle,
    }
    print("quora", out["quora"], flush=True)

    sts = build_task("sts", data_dir=args.data)
    dv, ydv = rows(sts, "dev")
    _, a = embed(model, tok, [e.text_a for e in dv], args.max_length)
    _, b = embed(model, tok, [e.text_b for e in dv], args.max_length)
    sim = cosine(a, b)
    out["sts"] = {
        "pearson": float(pearsonr(sim, ydv)[0]),
        "spearman": float(spearmanr(sim, ydv)[0]),
    }
    print("sts", out["sts"], flush=True)
    print(f"done in {time.time() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
