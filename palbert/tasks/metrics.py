"""Metrics as ``evaluate.Metric`` subclasses defined here, so they work fully offline.

``evaluate.load("accuracy")`` fetches a script from the Hugging Face hub; these classes need
nothing but the package. Use them like any ``evaluate`` metric, or through
:func:`compute_metrics`::

    Accuracy().compute(predictions=[0, 1, 1], references=[0, 1, 0])   # {"accuracy": 0.667}
    m = Pearson(); m.add_batch(predictions=p1, references=r1); m.add_batch(...); m.compute()
    compute_metrics(["pearson", "spearman"], preds, refs)

Correlations are computed over everything given at once (a whole split), never averaged
over batches. Constant inputs have no correlation: Pearson/Spearman return NaN then.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata

_INT = datasets.Features(
    {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
)
_FLOAT = datasets.Features(
    {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
)
_INPUTS = "predictions: list of predicted values; references: list of true values (same length)."


def _info(description: str, features: datasets.Features) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description=_INPUTS, features=features
    )


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    p, r = np.asarray(predictions), np.asarray(references)
    return float((p == r).mean()) if len(r) else float("nan")


def f1(
    predictions: Sequence[int],
    references: Sequence[int],
    average: str = "binary",
    pos_label: int = 1,
) -> float:
    """Binary F1 of ``pos_label``, or the macro average over the classes present in either
    list (a class never predicted nor true is left out; zero division counts as 0)."""
    p, r = np.asarray(predictions), np.asarray(references)

    def one(c: int) -> float:
        tp = int(((p == c) & (r == c)).sum())
        fp = int(((p == c) & (r != c)).sum())
        fn = int(((p != c) & (r == c)).sum())
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    if average == "binary":
        return one(pos_label)
    if average == "macro":
        classes = np.union1d(p, r)
        return float(np.mean([one(int(c)) for c in classes])) if len(classes) else float("nan")
    raise ValueError(f"average must be 'binary' or 'macro', not {average!r}")


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(references, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson of the ranks (ties get their average rank)."""
    if len(predictions) < 2:
        return float("nan")
    return pearson(rankdata(predictions), rankdata(references))


class Accuracy(evaluate.Metric):
    """Fraction of predictions equal to the references: ``{"accuracy": float}``."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Accuracy: fraction of exact matches.", _INT)

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"accuracy": accuracy(predictions, references)}


class F1(evaluate.Metric):
    """F1 score: ``{"f1": float}``; ``average="binary"`` (default, ``pos_label=1``) or ``"macro"``."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("F1: harmonic mean of precision and recall.", _INT)

    def _compute(
        self, predictions, references, average: str = "binary", pos_label: int = 1
    ) -> dict[str, float]:
        return {"f1": f1(predictions, references, average=average, pos_label=pos_label)}


class Pearson(evaluate.Metric):
    """Pearson correlation over all inputs: ``{"pearson": float}``."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Pearson product-moment correlation.", _FLOAT)

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"pearson": pearson(predictions, references)}


class Spearman(evaluate.Metric):
    """Spearman rank correlation over all inputs: ``{"spearman": float}``."""

    def _info(self) -> evaluate.MetricInfo:
        return _info("Spearman rank correlation (Pearson of average ranks).", _FLOAT)

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"spearman": spearman(predictions, references)}


METRIC_CLASSES: dict[str, type[evaluate.Metric]] = {
    "accuracy": Accuracy,
    "f1": F1,
    "f1_macro": F1,
    "pearson": Pearson,
    "spearman": Spearman,
}


def load(name: str) -> evaluate.Metric:
    """An offline ``evaluate.Metric`` by name (accuracy, f1, f1_macro, pearson, spearman)."""
    if name not in METRIC_CLASSES:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRIC_CLASSES)}")
    # in memory: no arrow files under ~/.cache for every evaluation
    return METRIC_CLASSES[name](keep_in_memory=True)


def compute_metrics(
    names: Sequence[str], predictions: Sequence, references: Sequence
) -> dict[str, float]:
    """``{name: value}`` for each metric over the whole of ``predictions``/``references``."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    out: dict[str, float] = {}
    preds, refs = np.asarray(predictions).tolist(), np.asarray(references).tolist()
    for name in names:
        if not preds:
            out[name] = float("nan")
            continue
        metric = load(name)
        kwargs = {"average": "macro"} if name == "f1_macro" else {}
        result = metric.compute(predictions=preds, references=refs, **kwargs)
        out[name] = float(next(iter(result.values())))
    return out
