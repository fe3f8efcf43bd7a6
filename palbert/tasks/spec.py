"""Task specifications: what a recipe's ``tasks:`` entry says, validated (no torch needed).

A spec is plain data. :func:`palbert.tasks.build_task` turns one into a :class:`Task` that can
read files, batch them and build its head::

    spec = TaskSpec.from_dict({
        "name": "reviews", "kind": "classification", "text": "review", "label": "stars",
        "files": {"train": "reviews-train.csv", "dev": "reviews-dev.csv"},
        "head": {"type": "mlp", "hidden": [256], "pooling": "mean"},
    })

A dict whose ``name`` is a built-in task (``sst``, ``cfimdb``, ``quora``, ``sts``) starts from
that task's definition and applies its keys on top, so ``{"name": "sts", "head": {"type":
"cosine"}}`` is the built-in STS task with the cosine bi-encoder head. ``extends: sst`` does
the same for a task with a new name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from palbert.activations import ACTIVATIONS
from palbert.tasks.errors import DataError
from palbert.validate import (
    Where,
    at_least,
    at_most,
    build,
    check,
    convert,
    each,
    fields_of,
    in_range,
    matches,
    non_empty,
    one_of,
    rules,
)

Kind = Literal["classification", "regression"]
Encoding = Literal["single", "cross", "bi"]
Format = Literal["auto", "cs224n", "csv", "tsv", "jsonl"]
HeadType = Literal["linear", "mlp", "cosine"]
Pooling = Literal["cls", "mean", "last_k"]
TokenPooling = Literal["cls", "mean"]
BiFeature = Literal["u", "v", "|u-v|", "u*v"]
CosineScale = Literal["relu", "affine"]
ClassificationMetric = Literal["accuracy", "f1", "f1_macro"]
RegressionMetric = Literal["pearson", "spearman"]
Metric = Literal[ClassificationMetric, RegressionMetric]

TASK_KINDS = typing.get_args(Kind)
ENCODINGS = typing.get_args(Encoding)
INPUT_FORMATS = typing.get_args(Format)
HEAD_TYPES = typing.get_args(HeadType)
POOLINGS = typing.get_args(Pooling)
TOKEN_POOLINGS = typing.get_args(TokenPooling)
BI_FEATURES = typing.get_args(BiFeature)
COSINE_SCALES = typing.get_args(CosineScale)
METRICS = typing.get_args(Metric)
CLASSIFICATION_METRICS = typing.get_args(ClassificationMetric)
REGRESSION_METRICS = typing.get_args(RegressionMetric)
DEFAULT_MAX_LENGTH = 128  # tokens per input when neither the task nor the recipe sets one
MAX_WIDTH = 1 << 16  # a head layer wider than this is a typo (and would exhaust memory)

# Task names become file names (exports, predictions, caches): a strict pattern, no paths.
TASK_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
TASK_NAME_RULE = matches(
    TASK_NAME,
    "1 to 64 letters, digits, '_', '.' or '-' starting with a letter or digit "
    "(a word without spaces or slashes)",
)


def canonical_label(value: Any) -> str:
    """The form labels are compared in: integral numbers lose their ``.0`` ("1.0" -> "1").

    >>> canonical_label("1.0"), canonical_label(3), canonical_label(" pos ")
    ('1', '3', 'pos')
    """
    s = str(value).strip()
    try:
        f = float(s)
    except ValueError:
        return s
    if math.isfinite(f) and f == int(f):
        return str(int(f))
    return s


def sort_labels(values: set[str] | list[str]) -> list[str]:
    """Sorted label names: numerically when all are numbers (so "10" comes after "9")."""
    vals = list(values)
    try:
        return sorted(vals, key=float)
    except ValueError:
        return sorted(vals)


@dataclass(frozen=True)
class HeadSpec:
    """How a task's head is built (see :mod:`palbert.tasks.heads` for the math).

    - ``type``: ``linear`` (one layer), ``mlp`` (``hidden`` sizes, ``activation``, ``dropout``
      between layers) or ``cosine`` (regression on a bi-encoded pair: cos(u, v) mapped to the
      label range, no parameters).
    - ``pooling``: ``cls``, ``mean`` (over real tokens) or ``last_k`` (average of the last
      ``k`` layers' hidden states, then ``token_pooling`` over tokens).
    - ``features``: which of u, v, |u-v|, u*v a bi-encoder classifier/regressor concatenates.
    - ``cosine_scale``: ``relu`` (lo + relu(cos) * (hi - lo); "times 5" for STS) or ``affine``
      (lo + (cos + 1) / 2 * (hi - lo)).
    """

    type: HeadType = "linear"
    pooling: Pooling = "cls"
    k: int = field(default=2, metadata=rules(at_least(1)))
    token_pooling: TokenPooling = "mean"
    hidden: tuple[int, ...] = field(
        default=(), metadata=rules(each(at_least(1), at_most(MAX_WIDTH)), listify=True)
    )
    activation: str = field(default="relu", metadata=rules(one_of(ACTIVATIONS)))
    dropout: float = field(default=0.1, metadata=rules(in_range(0, 1)))
    features: tuple[BiFeature, ...] = field(default=BI_FEATURES, metadata=rules(non_empty))
    cosine_scale: CosineScale = "relu"

    def __post_init__(self) -> None:
        where = Where(prefix=("head",), error=DataError)
        check(self, where)
        if self.type == "linear" and self.hidden:
            raise where.fail(("hidden",), ": hidden sizes need type 'mlp', not 'linear'")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: Where | None = None) -> HeadSpec:
        """Validate a ``head:`` mapping; unknown keys and bad values raise :class:`DataError`."""
        return build(cls, d, (), where or Where(prefix=("head",), error=DataError))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        d["features"] = list(self.features)
        if self.pooling != "last_k":  # k and token_pooling mean nothing then
            del d["k"], d["token_pooling"]
        return d


@dataclass(frozen=True)
class DatasetSpec:
    """A Hugging Face dataset: ``datasets.load_dataset(name, config, split=splits[split])``."""

    name: str
    config: str | None = None
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    revision: str | None = None

    def __post_init__(self) -> None:
        check(self, Where(prefix=("dataset",), error=DataError))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str, where: Where | None = None) -> DatasetSpec:
        """Validate a ``dataset:`` mapping (or a bare Hugging Face name)."""
        return build(
            cls, _dataset_mapping(d), (), where or Where(prefix=("dataset",), error=DataError)
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TaskSpec:
    """A validated task definition. Build one with :meth:`from_dict` (the recipe's mapping).

    Keys:

    - ``name``; ``kind``: ``classification`` or ``regression``; ``pair``: two texts or one.
    - ``text``: the text column (a list of two for pairs); ``label``: the label column
      (absent from files of unlabelled ``test*`` splits); ``id``: the id column (default: the
      ``id`` column when the file has one, else the row's line number).
    - classification: ``labels`` (names in id order; default: the values seen in the train
      split, sorted, numerically when all are numbers) or ``num_labels`` (names "0".."n-1").
      Values are compared after :func:`canonical_label`, so "1.0" in a file matches label "1".
    - regression: ``label_range: [lo, hi]`` (required; values outside are errors).
    - ``files``: split -> path (relative to the data folder or absolute), or ``dataset``
      (a Hugging Face dataset: ``{name, config, splits}``). ``format``: ``auto`` (by extension;
      tab- or comma-separated decided from the header line), ``cs224n``, ``csv``, ``tsv``,
      ``jsonl``. ``multiline``: allow quoted fields holding line breaks or tabs (off: such a
      row is reported as broken quoting).
    - ``encoding``: ``single``, ``cross`` (pair as one input) or ``bi`` (each text alone);
      default single / cross, or bi for the cosine head. ``head``: see :class:`HeadSpec`.
    - ``metrics`` (first is ``primary_metric`` unless given), ``batch_size``, ``max_length``,
      ``loss_weight`` (read by the trainer).
    """

    name: str = field(metadata=rules(TASK_NAME_RULE))
    kind: Kind = "classification"
    pair: bool = False
    text: tuple[str, ...] = field(
        default=("sentence",), metadata=rules(non_empty, each(non_empty), listify=True)
    )
    label: str | None = "label"
    id: str | None = None
    labels: tuple[str, ...] | None = None
    num_labels: int | None = field(default=None, metadata=rules(at_least(1)))
    label_range: tuple[float, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    dataset: DatasetSpec | None = None
    format: Format = "auto"
    multiline: bool = False
    encoding: Encoding = "single"
    head: HeadSpec = field(default_factory=HeadSpec)
    metrics: tuple[Metric, ...] = field(
        default=("accuracy",), metadata=rules(non_empty, listify=True)
    )
    primary_metric: Metric = "accuracy"
    batch_size: int | None = field(default=None, metadata=rules(at_least(1)))
    max_length: int | None = field(default=None, metadata=rules(at_least(1)))
    loss_weight: float = field(default=1.0, metadata=rules(at_least(0)))

    def __post_init__(self) -> None:
        # every spec, from a recipe, a task file or code, obeys the field rules (name included)
        check(self, Where(title=f"task {self.name!r}", error=DataError))

    @classmethod
    def coerce(cls, spec: Any, name: str | None = None) -> TaskSpec:
        """A TaskSpec from a TaskSpec, a mapping, or a :class:`palbert.tasks.Task` (its
        :meth:`~palbert.tasks.Task.resolved_spec`), renamed to ``name`` when given."""
        if hasattr(spec, "resolved_spec"):
            spec = spec.resolved_spec()
        if isinstance(spec, dict):
            spec = cls.from_dict(spec)
        if not isinstance(spec, cls):
            raise TypeError(
                f"expected a TaskSpec, a Task or a spec mapping, not {type(spec).__name__}"
            )
        if name is not None and spec.name != name:
            spec = dataclasses.replace(spec, name=name)
        return spec

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)] + ["extends"]

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Where | None = None) -> TaskSpec:
        """Validate a task mapping. Unknown keys, wrong types and contradictions raise
        :class:`DataError` naming the key (or ``where``'s error, e.g. a recipe's, with the
        YAML line).

        >>> TaskSpec.from_dict({"name": "sst"}).labels
        ('0', '1', '2', '3', '4')
        >>> TaskSpec.from_dict({"name": "x", "kind": "regression", "label_range": [0, 1],
        ...                     "text": "t", "label": "y", "files": {"train": "a.csv"}}).kind
        'regression'
        """
        where = where or Where(title="task", error=DataError)
        if not isinstance(d, dict):
            raise where.fail((), f"must be a mapping of keys, not {d!r}")
        if "name" not in d:
            raise where.fail(("name",), "is required")
        name = convert(d["name"], str, ("name",), where, rules(TASK_NAME_RULE))
        if where.title == "task":
            where = dataclasses.replace(where, title=f"task {name!r}")

        d = dict(d)
        base = d.pop("extends", name if name in BUILTIN_SPECS else None)
        if base is not None:
            if base not in BUILTIN_SPECS:
                raise where.fail(("extends",), ": " + unknown_task(base, extends=True))
            merged = dict(BUILTIN_SPECS[base])
            for key, value in d.items():
                if key in ("head", "files") and isinstance(value, dict):
                    merged[key] = {**merged.get(key, {}), **value}
                else:
                    merged[key] = value
            # a new head type brings its own default encoding unless the user set one
            if "head" in d and "encoding" not in d:
                merged.pop("encoding", None)
            d = merged
        return cls._validate(d, where)

    @classmethod
    def _validate(cls, d: dict[str, Any], where: Where) -> TaskSpec:
        """Typed fields from :func:`palbert.validate.fields_of`, then defaults that depend on
        other keys and the rules across keys."""
        raw_labels = d.get("labels")
        if isinstance(raw_labels, (list, tuple)):  # labels 0/1 or "1.0" name "1"
            d["labels"] = [
                canonical_label(v) if isinstance(v, (str, int, float)) else v for v in d["labels"]
            ]
        if isinstance(d.get("dataset"), str):
            d["dataset"] = _dataset_mapping(d["dataset"])
        kw = fields_of(cls, d, (), where)
        kind, pair = kw.get("kind", "classification"), kw.get("pair", False)

        text = kw.setdefault("text", ("sentence1", "sentence2") if pair else ("sentence",))
        if len(text) != (2 if pair else 1):
            want = "two columns (pair: true)" if pair else "one column (pair: false)"
            raise where.fail(("text",), f"must name {want}, not {list(text)!r}")

        if kind == "classification":
            if kw.get("label_range") is not None:
                raise where.fail(("label_range",), "is for regression tasks (kind: regression)")
            labels, n = kw.get("labels"), kw.get("num_labels")
            if labels is not None:
                if len(labels) < 2:
                    raise where.fail(("labels",), f"needs at least two labels, not {raw_labels!r}")
                if len(set(labels)) != len(labels):
                    raise where.fail(("labels",), f"has duplicates: {raw_labels!r}")
                if n is not None and n != len(labels):
                    raise where.fail(
                        ("num_labels",), f": num_labels {n} but {len(labels)} labels listed"
                    )
                kw["num_labels"] = len(labels)
            elif n is not None:
                if n < 2:
                    raise where.fail(("num_labels",), f"must be >= 2, not {n}")
                kw["labels"] = tuple(str(i) for i in range(n))
        else:
            for key in ("labels", "num_labels"):
                if kw.get(key) is not None:
                    raise where.fail((key,), "is for classification tasks")
            rng = kw.get("label_range")
            if rng is None:
                raise where.fail((), ": a regression task needs label_range: [lo, hi]")
            if not rng[0] < rng[1]:
                raise where.fail(("label_range",), f"needs lo < hi, not {list(rng)!r}")
            kw["num_labels"] = 1

        if kw.get("files") and kw.get("dataset"):
            raise where.fail((), ": give either files or dataset, not both")
        if not kw.get("files") and not kw.get("dataset"):
            raise where.fail(
                (),
                ": needs files (split -> path) or a dataset (Hugging Face name)"
                f"{_did_you_mean(kw['name'], 'the built-in task')}",
            )

        head = kw.setdefault("head", HeadSpec())
        default_enc = "bi" if head.type == "cosine" else ("cross" if pair else "single")
        enc = kw.setdefault("encoding", default_enc)
        if pair and enc == "single":
            raise where.fail(("encoding",), ": a pair task needs 'cross' or 'bi', not 'single'")
        if not pair and enc != "single":
            raise where.fail(("encoding",), f"{enc!r} needs a pair task (pair: true)")
        if head.type == "cosine" and (kind != "regression" or enc != "bi"):
            raise where.fail(
                ("head", "type"), ": 'cosine' needs a regression pair task with encoding 'bi'"
            )
        if head.pooling != "last_k" and "k" in (d.get("head") or {}):
            raise where.fail(("head", "k"), "is only used with pooling 'last_k'")

        fit = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
        metrics = kw.setdefault("metrics", fit[:1] if kind == "classification" else fit)
        for i, m in enumerate(metrics):
            if m not in fit:
                raise where.fail(
                    ("metrics", i), f"must be one of {', '.join(fit)} (for {kind}), not {m!r}"
                )
        if "f1" in metrics and kw.get("num_labels") not in (None, 2):
            raise where.fail(
                ("metrics",),
                f": metric 'f1' is binary; use 'f1_macro' for {kw['num_labels']} labels",
            )
        primary = kw.setdefault("primary_metric", metrics[0])
        problem = one_of(metrics)(primary)
        if problem:
            raise where.fail(("primary_metric",), problem)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :meth:`from_dict` turns back into an equal spec (for run folders
        and exported files)."""
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "pair": self.pair,
            "text": list(self.text) if self.pair else self.text[0],
            "label": self.label,
            "id": self.id,
            "files": dict(self.files),
            "format": self.format,
            "multiline": self.multiline,
            "encoding": self.encoding,
            "head": self.head.to_dict(),
            "metrics": list(self.metrics),
            "primary_metric": self.primary_metric,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "loss_weight": self.loss_weight,
        }
        if self.kind == "classification":
            if self.labels is not None:
                d["labels"] = list(self.labels)
        else:
            d["label_range"] = list(self.label_range or ())
        if self.dataset is not None:
            d["dataset"] = self.dataset.to_dict()
            del d["files"]
        d["extends"] = None  # the mapping is complete; do not merge a built-in again
        return d


def _dataset_mapping(d: Any) -> Any:
    return {"name": d} if isinstance(d, str) else d


def _did_you_mean(name: Any, what: str = "") -> str:
    close = difflib.get_close_matches(str(name), list(BUILTIN_SPECS), n=1)
    return f" (did you mean {what + ' ' if what else ''}{close[0]!r}?)" if close else ""


def unknown_task(name: Any, extends: bool = False) -> str:
    """The one wording of a name that is no built-in task (a recipe's task, ``build_task``,
    a spec's ``extends``), with the closest built-in one and what to do instead."""
    what = f"{name!r} is not a built-in task" if extends else f"unknown task {name!r}"
    instead = "" if extends else "; define others as a mapping (name, kind, text, label, files)"
    return f"{what}{_did_you_mean(name)}; built-in tasks are {', '.join(BUILTIN_SPECS)}{instead}"


def no_such_task(name: Any, names: Iterable[str], where: str = "") -> str:
    """The one wording of a task name that a model, a run or a server does not hold
    (``where`` says which, e.g. " in run R"), with the names it does."""
    return f"no task {name!r}{where}; tasks: {', '.join(names) or 'none'}"


def _cs224n_files(prefix: str, test: bool = True) -> dict[str, str]:
    files = {"train": f"{prefix}-train.csv", "dev": f"{prefix}-dev.csv"}
    if test:
        files["test"] = f"{prefix}-test-student.csv"
    return files


# The CS224N multitask project's tasks, with the course's file names under the data folder.
BUILTIN_SPECS: dict[str, dict[str, Any]] = {
    "sst": {
        "kind": "classification",
        "pair": False,
        "text": "sentence",
        "label": "sentiment",
        "labels": ["0", "1", "2", "3", "4"],  # very negative .. very positive (SST-5)
        "files": _cs224n_files("ids-sst"),
        "format": "cs224n",
        "metrics": ["accuracy"],
        "head": {"type": "linear", "pooling": "cls"},
    },
    "cfimdb": {
        "kind": "classification",
        "pair": False,
        "text": "sentence",
        "label": "sentiment",
        "labels": ["0", "1"],
        "files": _cs224n_files("ids-cfimdb"),
        "format": "cs224n",
        "metrics": ["accuracy"],
        "head": {"type": "linear", "pooling": "cls"},
    },
    "quora": {
        "kind": "classification",
        "pair": True,
        "text": ["sentence1", "sentence2"],
        "label": "is_duplicate",
        "labels": ["0", "1"],  # the files say "0.0" / "1.0"
        "files": _cs224n_files("quora"),
        "format": "cs224n",
        "metrics": ["accuracy", "f1"],
        "encoding": "cross",
        "head": {"type": "linear", "pooling": "cls"},
    },
    "sts": {
        "kind": "regression",
        "pair": True,
        "text": ["sentence1", "sentence2"],
        "label": "similarity",
        "label_range": [0.0, 5.0],
        "files": _cs224n_files("sts"),
        "format": "cs224n",
        "metrics": ["pearson", "spearman"],
        "encoding": "cross",
        "head": {"type": "linear", "pooling": "cls"},
    },
}
