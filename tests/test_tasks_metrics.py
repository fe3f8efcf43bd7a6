"""Offline evaluate.Metric subclasses against numpy/scipy, and task.evaluate."""

from __future__ import annotations

import math

import evaluate
import numpy as np
import pytest
import torch
from scipy import stats

from palbert.tasks import build_task
from palbert.tasks.metrics import F1, Accuracy, Pearson, Spearman, compute_metrics, load

RNG = np.random.default_rng(42)
P_CLS = RNG.integers(0, 2, 200)
Y_CLS = np.where(RNG.random(200) < 0.7, P_CLS, 1 - P_CLS)
Y_REG = RNG.uniform(0, 5, 300)
P_REG = Y_REG + RNG.normal(0, 1.0, 300)
P_REG[:20] = np.round(P_REG[:20])  # some ties for Spearman


def f1_numpy(p, y, c=1):
    tp = np.sum((p == c) & (y == c))
    prec = tp / max(np.sum(p == c), 1)
    rec = tp / max(np.sum(y == c), 1)
    return 0.0 if tp == 0 else 2 * prec * rec / (prec + rec)


def test_metrics_are_evaluate_metrics():
    for cls in (Accuracy, F1, Pearson, Spearman):
        assert issubclass(cls, evaluate.Metric)


def test_accuracy_and_f1_vs_numpy():
    assert Accuracy().compute(predictions=P_CLS, references=Y_CLS)["accuracy"] == pytest.approx(
        np.mean(P_CLS == Y_CLS)
    )
    assert F1().compute(predictions=P_CLS, references=Y_CLS)["f1"] == pytest.approx(
        f1_numpy(P_CLS, Y_CLS)
    )
    p = np.array([0, 1, 2, 2, 1, 0, 2])
    y = np.array([0, 2, 2, 1, 1, 0, 0])
    macro = np.mean([f1_numpy(p, y, c) for c in range(3)])
    assert F1().compute(predictions=p, references=y, average="macro")["f1"] == pytest.approx(macro)
    assert F1().compute(predictions=[0, 0], references=[0, 0])["f1"] == 0.0  # no positives


def test_correlations_vs_scipy():
    assert Pearson().compute(predictions=P_REG, references=Y_REG)["pearson"] == pytest.approx(
        stats.pearsonr(P_REG, Y_REG)[0], abs=1e-12
    )
    assert Spearman().compute(predictions=P_REG, references=Y_REG)["spearman"] == pytest.approx(
        stats.spearmanr(P_REG, Y_REG)[0], abs=1e-12
    )
    assert math.isnan(
        Pearson().compute(predictions=[1.0, 1.0, 1.0], references=[1.0, 2.0, 3.0])["pearson"]
    )


def test_batches_accumulate_to_the_whole_split():
    m = load("pearson")
    for s in range(0, 300, 32):
        m.add_batch(predictions=P_REG[s : s + 32], references=Y_REG[s : s + 32])
    whole = stats.pearsonr(P_REG, Y_REG)[0]
    assert m.compute()["pearson"] == pytest.approx(whole, abs=1e-12)
    per_batch = np.mean(
        [stats.pearsonr(P_REG[s : s + 32], Y_REG[s : s + 32])[0] for s in range(0, 300, 32)]
    )
    assert abs(per_batch - whole) > 1e-4  # the reference code's mistake gives another number


def test_task_evaluate():
    sst = build_task("sst")
    assert sst.spec.primary_metric == "accuracy"
    logits = torch.tensor([[3.0, 0, 0, 0, 0], [0, 0, 0, 2.0, 0], [0, 1.0, 0, 0, 0]])
    assert sst.evaluate(sst.predict(logits), torch.tensor([0, 3, 4])) == {
        "accuracy": pytest.approx(2 / 3)
    }
    assert sst.evaluate(logits, [0, 3, 4]) == {"accuracy": pytest.approx(2 / 3)}
    quora = build_task("quora")
    got = quora.evaluate(P_CLS.tolist(), Y_CLS)
    assert set(got) == {"accuracy", "f1"} and got["f1"] == pytest.approx(f1_numpy(P_CLS, Y_CLS))
    sts = build_task("sts")
    assert sts.spec.primary_metric == "pearson"
    got = sts.evaluate({"score": torch.tensor(P_REG, dtype=torch.float32)}, torch.tensor(Y_REG))
    assert got["pearson"] == pytest.approx(stats.pearsonr(P_REG, Y_REG)[0], abs=1e-6)
    assert got["spearman"] == pytest.approx(stats.spearmanr(P_REG, Y_REG)[0], abs=1e-6)


def test_compute_metrics_checks_lengths_and_names():
    with pytest.raises(ValueError, match="2 predictions but 3"):
        compute_metrics(["accuracy"], [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        load("bleu")
    assert compute_metrics(["f1_macro"], [0, 1, 2], [0, 1, 1])["f1_macro"] == pytest.approx(
        (1 + 2 / 3 + 0) / 3
    )


def test_every_metric_a_spec_may_name_has_its_class_and_no_other():
    from palbert.tasks.metrics import METRIC_CLASSES
    from palbert.tasks.spec import METRICS

    assert set(METRIC_CLASSES) == set(METRICS)
