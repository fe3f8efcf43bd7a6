"""Task specs: validation messages, built-ins, overrides and round trips."""

from __future__ import annotations

import pytest

from palbert.tasks import BUILTIN_TASKS, DataError, TaskSpec, build_task

USER = {
    "name": "mytask",
    "kind": "classification",
    "pair": False,
    "text": "review",
    "label": "stars",
    "files": {"train": "a.csv", "dev": "b.csv"},
}


def test_builtin_tasks():
    assert list(BUILTIN_TASKS) == ["sst", "cfimdb", "quora", "sts"]
    sst, cf, q, sts = (BUILTIN_TASKS[n] for n in ("sst", "cfimdb", "quora", "sts"))
    assert (
        sst.labels == ("0", "1", "2", "3", "4")
        and sst.metrics == ("accuracy",)
        and sst.encoding == "single"
    )
    assert cf.labels == ("0", "1") and cf.files["test"] == "ids-cfimdb-test-student.csv"
    assert (
        q.pair
        and q.encoding == "cross"
        and q.metrics == ("accuracy", "f1")
        and q.text == ("sentence1", "sentence2")
    )
    assert (
        sts.kind == "regression"
        and sts.label_range == (0.0, 5.0)
        and sts.metrics == ("pearson", "spearman")
    )
    assert sts.files == {
        "train": "sts-train.csv",
        "dev": "sts-dev.csv",
        "test": "sts-test-student.csv",
    }
    with pytest.raises(TypeError):
        BUILTIN_TASKS["x"] = sst  # type: ignore[index]


def test_user_defined_task():
    spec = TaskSpec.from_dict(USER)
    assert spec.text == ("review",) and spec.labels is None and spec.encoding == "single"
    task = build_task(USER)
    s = task.spec
    assert (s.name, s.kind, s.pair, s.encoding, s.primary_metric) == (
        "mytask",
        "classification",
        False,
        "single",
        "accuracy",
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"lables": ["a", "b"]}, r"unknown key task 'mytask'\.lables; did you mean 'labels'\?"),
        (
            {"head": {"poolin": "mean"}},
            r"unknown key task 'mytask'\.head\.poolin; did you mean 'head\.pooling'\?",
        ),
        ({"kind": "classifcation"}, r"kind must be one of .* \(did you mean 'classification'\?\)"),
        ({"batch_size": "32"}, r"batch_size must be int"),
        ({"batch_size": True}, r"batch_size must be int"),
        ({"pair": "yes"}, r"pair must be bool"),
        ({"text": ["a", "b"]}, r"text must name one column"),
        ({"pair": True}, r"text must name two columns"),
        ({"kind": "regression"}, r"needs label_range"),
        ({"kind": "regression", "label_range": [5, 0]}, r"lo < hi"),
        ({"label_range": [0, 1]}, r"label_range is for regression"),
        ({"labels": ["a"]}, r"at least two labels"),
        ({"labels": ["1", "1.0"]}, r"duplicates"),
        ({"labels": ["a", "b"], "num_labels": 3}, r"num_labels 3 but 2 labels"),
        (
            {"metrics": ["pearson"]},
            r"metrics\.0 must be one of accuracy, f1, f1_macro \(for classification\)",
        ),
        ({"num_labels": 3, "metrics": ["f1"]}, r"'f1' is binary; use 'f1_macro'"),
        ({"primary_metric": "f1"}, r"primary_metric must be one of accuracy"),
        ({"files": {}}, r"needs files .* or a dataset"),
        ({"dataset": {"name": "glue", "config": "sst2"}}, r"either files or dataset"),
        ({"encoding": "cross"}, r"encoding 'cross' needs a pair task"),
        (
            {"pair": True, "text": ["a", "b"], "head": {"type": "cosine"}},
            r"'cosine' needs a regression pair task",
        ),
        ({"head": {"k": 3}}, r"k is only used with pooling 'last_k'"),
        ({"head": {"hidden": [64]}}, r"hidden sizes need type 'mlp'"),
        ({"head": {"type": "mlp", "hidden": [0]}}, r"head\.hidden\.0 must be >= 1, not 0"),
        ({"head": {"dropout": 1.5}}, r"dropout must be in \[0, 1\)"),
        ({"head": {"features": ["u", "w"]}}, r"head\.features\.1 must be one of u, v"),
        ({"loss_weight": -1}, r"loss_weight must be"),
        ({"extends": "glue"}, r"extends: 'glue' is not a built-in"),
        ({"name": "my task"}, r"without spaces"),
    ],
)
def test_spec_errors_name_the_key(change, match):
    with pytest.raises(DataError, match=match):
        TaskSpec.from_dict({**USER, **change})


def test_errors_are_value_errors():
    assert issubclass(DataError, ValueError)
    with pytest.raises(ValueError):
        TaskSpec.from_dict({"kind": "regression"})  # no name


def test_builtin_overrides_merge():
    spec = TaskSpec.from_dict(
        {"name": "sts", "head": {"type": "cosine", "pooling": "last_k", "k": 2}}
    )
    assert spec.encoding == "bi" and spec.head.type == "cosine" and spec.head.k == 2
    assert spec.label_range == (0.0, 5.0) and spec.files["train"] == "sts-train.csv"
    bi = TaskSpec.from_dict(
        {"name": "quora", "encoding": "bi", "head": {"type": "mlp", "hidden": [128]}}
    )
    assert bi.encoding == "bi" and bi.head.hidden == (128,)
    small = TaskSpec.from_dict(
        {"name": "sst_small", "extends": "sst", "files": {"train": "mine.csv"}, "batch_size": 8}
    )
    assert small.files == {
        "train": "mine.csv",
        "dev": "ids-sst-dev.csv",
        "test": "ids-sst-test-student.csv",
    }
    assert small.labels == BUILTIN_TASKS["sst"].labels and small.batch_size == 8


def test_to_dict_round_trips():
    specs = [
        *BUILTIN_TASKS.values(),
        TaskSpec.from_dict(
            {**USER, "labels": ["b", "a"], "head": {"type": "mlp", "hidden": [8, 4]}}
        ),
    ]
    specs.append(
        TaskSpec.from_dict({"name": "sts", "head": {"type": "cosine", "cosine_scale": "affine"}})
    )
    specs.append(
        TaskSpec.from_dict(
            {
                **USER,
                "files": {},
                "dataset": {"name": "glue", "config": "sst2", "splits": {"train": "train"}},
            }
        )
    )
    for spec in specs:
        assert TaskSpec.from_dict(spec.to_dict()) == spec


def test_build_task_by_unknown_name():
    with pytest.raises(DataError, match="built-in tasks are sst, cfimdb, quora, sts"):
        build_task("snli")


BAD_NAMES = ["/abs/path/x", "../x", "a/b", "a\\b", "a\nb", ".", "..", "", "-x", "x" * 65, "a b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_task_names_are_strict_from_every_source(name):
    import dataclasses

    sts = BUILTIN_TASKS["sts"]
    match = r"name must be 1 to 64 letters, digits, '_', '\.' or '-'"
    with pytest.raises(DataError, match=match):
        TaskSpec.from_dict({**USER, "name": name})  # recipes and task files
    with pytest.raises(DataError, match=match):
        TaskSpec.coerce(sts, name=name)  # the API's renaming
    with pytest.raises(DataError, match=match):
        dataclasses.replace(sts, name=name)
    with pytest.raises(DataError, match=match):
        TaskSpec.from_dict(sts.to_dict() | {"name": name})


@pytest.mark.parametrize("name", ["sst_small", "a.b-c", "X1", "x" * 64])
def test_good_task_names(name):
    assert TaskSpec.from_dict({**USER, "name": name}).name == name


def test_spec_rules_that_used_to_pass_silently():
    with pytest.raises(DataError, match=r"head\.hidden\.0 must be <= 65536, not 1000000000000"):
        TaskSpec.from_dict({**USER, "head": {"type": "mlp", "hidden": [10**12]}})
    with pytest.raises(DataError, match=r"head\.hidden\.0 must be int, not 1000000000000\.0"):
        TaskSpec.from_dict({**USER, "head": {"type": "mlp", "hidden": [1e12]}})
    with pytest.raises(DataError, match=r"loss_weight must be a finite number, not inf"):
        TaskSpec.from_dict({**USER, "loss_weight": float("inf")})
    with pytest.raises(
        DataError, match=r"needs files .* \(did you mean the built-in task 'sts'\?\)"
    ):
        TaskSpec.from_dict({"name": "stss"})
