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
from dataclasses import dataclass, field
from typing import Any, Literal

from palbert.tasks.errors import DataError

Kind = Literal["classification", "regression"]
Encoding = Literal["single", "cross", "bi"]

KINDS = ("classification", "regression")
ENCODINGS = ("single", "cross", "bi")
FORMATS = ("auto", "cs224n", "csv", "tsv", "jsonl")
HEAD_TYPES = ("linear", "mlp", "cosine")
POOLINGS = ("cls", "mean", "last_k")
TOKEN_POOLINGS = ("cls", "mean")
ACTIVATIONS = ("relu", "gelu", "tanh")
DEFAULT_MAX_LENGTH = 128  # tokens per input when neither the task nor the recipe sets one
BI_FEATURES = ("u", "v", "|u-v|", "u*v")
COSINE_SCALES = ("relu", "affine")
METRICS = ("accuracy", "f1", "f1_macro", "pearson", "spearman")
CLASSIFICATION_METRICS = ("accuracy", "f1", "f1_macro")
REGRESSION_METRICS = ("pearson", "spearman")


def _unknown_key(key: str, allowed: list[str], where: str) -> DataError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DataError(f"{where}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"{where} must be one of {', '.join(choices)}, not {value!r}{hint}")
    return value


def _check_type(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    # bool is an int in Python; a recipe saying `batch_size: true` is still a mistake
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DataError(f"{where} must be {_type_name(types)}, not {value!r}")
    if not isinstance(value, types):
        raise DataError(f"{where} must be {_type_name(types)}, not {value!r}")
    return value


def _type_name(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


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

    type: str = "linear"
    pooling: str = "cls"
    k: int = 2
    token_pooling: str = "mean"
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.1
    features: tuple[str, ...] = BI_FEATURES
    cosine_scale: str = "relu"

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "head") -> HeadSpec:
        """Validate a ``head:`` mapping; unknown keys and bad values raise :class:`DataError`."""
        d = dict(d or {})
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in allowed:
                raise _unknown_key(key, allowed, where)
        kw: dict[str, Any] = {}
        if "type" in d:
            kw["type"] = _choice(d["type"], HEAD_TYPES, f"{where}.type")
        if "pooling" in d:
            kw["pooling"] = _choice(d["pooling"], POOLINGS, f"{where}.pooling")
        if "token_pooling" in d:
            kw["token_pooling"] = _choice(
                d["token_pooling"], TOKEN_POOLINGS, f"{where}.token_pooling"
            )
        if "k" in d:
            k = _check_type(d["k"], int, f"{where}.k")
            if k < 1:
                raise DataError(f"{where}.k must be >= 1, not {k}")
            kw["k"] = k
        if "hidden" in d:
            hidden = d["hidden"]
            if isinstance(hidden, int) and not isinstance(hidden, bool):
                hidden = [hidden]
            _check_type(hidden, (list, tuple), f"{where}.hidden")
            for h in hidden:
                if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                    raise DataError(
                        f"{where}.hidden must be a list of positive ints, not {hidden!r}"
                    )
            kw["hidden"] = tuple(hidden)
        if "activation" in d:
            kw["activation"] = _choice(d["activation"], ACTIVATIONS, f"{where}.activation")
        if "dropout" in d:
            p = float(_check_type(d["dropout"], (int, float), f"{where}.dropout"))
            if not 0.0 <= p < 1.0:
                raise DataError(f"{where}.dropout must be in [0, 1), not {p}")
            kw["dropout"] = p
        if "features" in d:
            feats = _check_type(d["features"], (list, tuple), f"{where}.features")
            if not feats:
                raise DataError(f"{where}.features must not be empty")
            for f in feats:
                _choice(f, BI_FEATURES, f"{where}.features[]")
            kw["features"] = tuple(feats)
        if "cosine_scale" in d:
            kw["cosine_scale"] = _choice(d["cosine_scale"], COSINE_SCALES, f"{where}.cosine_scale")
        spec = cls(**kw)
        if spec.type == "linear" and spec.hidden:
            raise DataError(f"{where}: hidden sizes need type 'mlp', not 'linear'")
        return spec

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

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str, where: str = "dataset") -> DatasetSpec:
        if isinstance(d, str):
            d = {"name": d}
        _check_type(d, dict, where)
        allowed = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in allowed:
                raise _unknown_key(key, allowed, where)
        if "name" not in d:
            raise DataError(f"{where}: 'name' (the Hugging Face dataset) is required")
        kw = dict(d)
        _check_type(kw["name"], str, f"{where}.name")
        if kw.get("config") is not None:
            _check_type(kw["config"], str, f"{where}.config")
        if "splits" in kw:
            splits = _check_type(kw["splits"], dict, f"{where}.splits")
            kw["splits"] = {str(k): str(v) for k, v in splits.items()}
        return cls(**kw)

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

    name: str
    kind: Kind = "classification"
    pair: bool = False
    text: tuple[str, ...] = ("sentence",)
    label: str | None = "label"
    id: str | None = None
    labels: tuple[str, ...] | None = None
    num_labels: int | None = None
    label_range: tuple[float, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    dataset: DatasetSpec | None = None
    format: str = "auto"
    multiline: bool = False
    encoding: Encoding = "single"
    head: HeadSpec = field(default_factory=HeadSpec)
    metrics: tuple[str, ...] = ("accuracy",)
    primary_metric: str = "accuracy"
    batch_size: int | None = None
    max_length: int | None = None
    loss_weight: float = 1.0

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
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Validate a task mapping. Unknown keys, wrong types and contradictions raise
        :class:`DataError` naming the key.

        >>> TaskSpec.from_dict({"name": "sst"}).labels
        ('0', '1', '2', '3', '4')
        >>> TaskSpec.from_dict({"name": "x", "kind": "regression", "label_range": [0, 1],
        ...                     "text": "t", "label": "y", "files": {"train": "a.csv"}}).kind
        'regression'
        """
        _check_type(d, dict, "task")
        if "name" not in d:
            raise DataError("task: 'name' is required")
        name = _check_type(d["name"], str, "task.name")
        if not name or any(c in name for c in "/\\ \t\n"):
            raise DataError(
                f"task.name must be a non-empty word without spaces or slashes, not {name!r}"
            )
        where = f"task {name!r}"
        allowed = cls.keys()
        for key in d:
            if key not in allowed:
                raise _unknown_key(key, allowed, where)

        base = d.get("extends", name if name in BUILTIN_SPECS else None)
        if base is not None:
            if base not in BUILTIN_SPECS:
                raise DataError(
                    f"{where}.extends: {base!r} is not a built-in task ({', '.join(BUILTIN_SPECS)})"
                )
            merged = dict(BUILTIN_SPECS[base])
            for key, value in d.items():
                if key == "head" and isinstance(value, dict):
                    merged["head"] = {**merged.get("head", {}), **value}
                elif key == "files" and isinstance(value, dict):
                    merged["files"] = {**merged.get("files", {}), **value}
                elif key != "extends":
                    merged[key] = value
            # a new head type brings its own default encoding unless the user set one
            if "head" in d and "encoding" not in d:
                merged.pop("encoding", None)
            d = merged
            d["name"] = name
        return cls._validate(d, where)

    @classmethod
    def _validate(cls, d: dict[str, Any], where: str) -> TaskSpec:
        kw: dict[str, Any] = {"name": d["name"]}
        kind = kw["kind"] = _choice(d.get("kind", "classification"), KINDS, f"{where}.kind")
        pair = kw["pair"] = bool(_check_type(d.get("pair", False), bool, f"{where}.pair"))

        text = d.get("text", ["sentence1", "sentence2"] if pair else "sentence")
        if isinstance(text, str):
            text = [text]
        _check_type(text, (list, tuple), f"{where}.text")
        if any(not isinstance(t, str) or not t for t in text):
            raise DataError(f"{where}.text must name columns, not {text!r}")
        if len(text) != (2 if pair else 1):
            want = "two columns (pair: true)" if pair else "one column (pair: false)"
            raise DataError(f"{where}.text must name {want}, not {text!r}")
        kw["text"] = tuple(text)

        label = d.get("label", "label")
        if label is not None:
            _check_type(label, str, f"{where}.label")
        kw["label"] = label
        if d.get("id") is not None:
            _check_type(d["id"], str, f"{where}.id")
        kw["id"] = d.get("id")

        if kind == "classification":
            if d.get("label_range") is not None:
                raise DataError(f"{where}.label_range is for regression tasks (kind: regression)")
            labels = d.get("labels")
            n = d.get("num_labels")
            if labels is not None:
                _check_type(labels, (list, tuple), f"{where}.labels")
                canon = [canonical_label(v) for v in labels]
                if len(canon) < 2:
                    raise DataError(f"{where}.labels needs at least two labels, not {labels!r}")
                if len(set(canon)) != len(canon):
                    raise DataError(f"{where}.labels has duplicates: {labels!r}")
                if n is not None and n != len(canon):
                    raise DataError(f"{where}: num_labels {n} but {len(canon)} labels listed")
                kw["labels"] = tuple(canon)
                kw["num_labels"] = len(canon)
            elif n is not None:
                _check_type(n, int, f"{where}.num_labels")
                if n < 2:
                    raise DataError(f"{where}.num_labels must be >= 2, not {n}")
                kw["labels"] = tuple(str(i) for i in range(n))
                kw["num_labels"] = n
        else:
            for key in ("labels", "num_labels"):
                if d.get(key) is not None:
                    raise DataError(f"{where}.{key} is for classification tasks")
            rng = d.get("label_range")
            if rng is None:
                raise DataError(f"{where}: a regression task needs label_range: [lo, hi]")
            _check_type(rng, (list, tuple), f"{where}.label_range")
            if len(rng) != 2 or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) for x in rng
            ):
                raise DataError(f"{where}.label_range must be [lo, hi] numbers, not {rng!r}")
            lo, hi = float(rng[0]), float(rng[1])
            if not lo < hi:
                raise DataError(f"{where}.label_range needs lo < hi, not {rng!r}")
            kw["label_range"] = (lo, hi)
            kw["num_labels"] = 1

        files = d.get("files") or {}
        _check_type(files, dict, f"{where}.files")
        for split, path in files.items():
            _check_type(split, str, f"{where}.files key")
            _check_type(path, str, f"{where}.files.{split}")
        kw["files"] = dict(files)
        if d.get("dataset") is not None:
            kw["dataset"] = DatasetSpec.from_dict(d["dataset"], f"{where}.dataset")
        if kw["files"] and kw.get("dataset"):
            raise DataError(f"{where}: give either files or dataset, not both")
        if not kw["files"] and not kw.get("dataset"):
            raise DataError(
                f"{where}: needs files (split -> path) or a dataset (Hugging Face name)"
            )
        kw["format"] = _choice(d.get("format", "auto"), FORMATS, f"{where}.format")
        kw["multiline"] = _check_type(d.get("multiline", False), bool, f"{where}.multiline")

        head = HeadSpec.from_dict(d.get("head"), f"{where}.head")
        kw["head"] = head
        default_enc = "bi" if head.type == "cosine" else ("cross" if pair else "single")
        enc = kw["encoding"] = _choice(
            d.get("encoding", default_enc), ENCODINGS, f"{where}.encoding"
        )
        if pair and enc == "single":
            raise DataError(f"{where}: a pair task needs encoding 'cross' or 'bi', not 'single'")
        if not pair and enc != "single":
            raise DataError(f"{where}: encoding {enc!r} needs a pair task (pair: true)")
        if head.type == "cosine":
            if kind != "regression" or enc != "bi":
                raise DataError(
                    f"{where}.head.type 'cosine' needs a regression pair task with encoding 'bi'"
                )
        if head.pooling != "last_k" and "k" in (d.get("head") or {}):
            raise DataError(f"{where}.head.k is only used with pooling 'last_k'")

        fit = CLASSIFICATION_METRICS if kind == "classification" else REGRESSION_METRICS
        metrics = d.get("metrics")
        if metrics is None:
            metrics = ["accuracy"] if kind == "classification" else ["pearson", "spearman"]
        if isinstance(metrics, str):
            metrics = [metrics]
        _check_type(metrics, (list, tuple), f"{where}.metrics")
        for m in metrics:
            _choice(m, fit, f"{where}.metrics[] (for {kind})")
        if not metrics:
            raise DataError(f"{where}.metrics must not be empty")
        if "f1" in metrics and kw.get("num_labels") not in (None, 2):
            raise DataError(
                f"{where}: metric 'f1' is binary; use 'f1_macro' for {kw['num_labels']} labels"
            )
        kw["metrics"] = tuple(metrics)
        primary = d.get("primary_metric", metrics[0])
        kw["primary_metric"] = _choice(primary, tuple(metrics), f"{where}.primary_metric")

        for key in ("batch_size", "max_length"):
            if d.get(key) is not None:
                v = _check_type(d[key], int, f"{where}.{key}")
                if v < 1:
                    raise DataError(f"{where}.{key} must be >= 1, not {v}")
                kw[key] = v
        w = _check_type(d.get("loss_weight", 1.0), (int, float), f"{where}.loss_weight")
        if not (math.isfinite(w) and w >= 0):
            raise DataError(f"{where}.loss_weight must be a finite number >= 0, not {w}")
        kw["loss_weight"] = float(w)
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
