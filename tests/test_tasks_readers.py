"""Readers on small fixtures: formats, strictness, skipping, label mapping, offline datasets."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from palbert.tasks import DataError, DataWarning, build_task
from palbert.tasks.readers import read_records

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
ROOT = Path(__file__).resolve().parents[1]


def sst_like(**kw):
    spec = {
        "name": "sstlike",
        "extends": "sst",
        "files": {"train": "sst_like-train.csv", "test": "sst_like-test-student.csv"},
    }
    spec.update(kw)
    return build_task(spec, data_dir=FIX, cache_dir=False)


def test_cs224n_format_with_quotes_and_crlf():
    rows = sst_like().read("train")
    assert [r.id for r in rows] == ["a01", "a02", "a03", "a04", "a05"]
    assert [r.label for r in rows] == [4, 2, 0, 3, 1]
    assert rows[1].text_a == ' a ""so-so"" movie .'  # csv quoting undone once, "" -> "
    assert (
        rows[0].text_a == " a gorgeous , witty film ."
    )  # leading space of pre-tokenized text kept
    assert [r.line for r in rows] == [2, 3, 4, 5, 6]
    assert all(r.text_b is None for r in rows)


def test_test_student_two_index_header_is_unlabelled():
    rows = sst_like().read("test")
    assert [(r.id, r.text_a, r.label) for r in rows][0] == (
        "t01",
        " effective but too-tepid biopic",
        None,
    )
    assert len(rows) == 3


def test_pair_rows_and_float_labels():
    task = build_task(
        {"name": "pairs", "extends": "quora", "files": {"train": "pairs-train.csv"}},
        data_dir=FIX,
        cache_dir=False,
    )
    rows = task.read("train")
    assert [r.label for r in rows] == [1, 0, 0, 1]  # "1.0" / "0.0" -> class ids
    assert rows[2].text_a == '"Is it "correct" grammar?"'
    assert rows[0].text_b == "What is the best way to learn Python?"
    assert task.labels == ["0", "1"]


def bad_task():
    return build_task(
        {"name": "bad", "extends": "sst", "files": {"train": "bad-rows.csv"}},
        data_dir=FIX,
        cache_dir=False,
    )


EXPECTED_BAD = {
    3: "missing field",
    4: "unknown label 'positive'",
    5: "unknown label '7'",
    6: "empty or whitespace-only text in 'sentence'",
    7: "broken quoting",
    9: "extra field",
    10: "missing label in 'sentiment'",
    11: "duplicate id 'b01'",
}


def test_every_bad_row_is_named_in_one_error():
    with pytest.raises(DataError) as e:
        bad_task().read("train")
    msg = str(e.value)
    assert len(e.value.problems) == len(EXPECTED_BAD)
    for (file, line, reason), (want_line, want) in zip(
        e.value.problems, EXPECTED_BAD.items(), strict=True
    ):
        assert file.endswith("bad-rows.csv")
        assert line == want_line
        assert want in reason
        assert f"bad-rows.csv:{line} " in msg
    assert "8 bad row(s)" in msg
    # the hint speaks recipe YAML first (where users set it), then Python
    assert "`on_error: skip` in the recipe's task entry" in msg and 'on_error="skip"' in msg
    assert "on_error='skip'" not in msg


def test_skip_reports_count_and_rows_and_keeps_good_rows():
    task = bad_task()
    with pytest.warns(DataWarning, match="8 bad row"):
        rows = task.read("train", on_error="skip")
    # the row after the unclosed quote (line 8) is read normally, not swallowed
    assert [r.line for r in rows] == [2, 8]
    assert [line for _, line, _ in task.skipped] == list(EXPECTED_BAD)


def test_on_error_must_be_known():
    with pytest.raises(ValueError, match="on_error"):
        bad_task().read("train", on_error="ignore")


def test_error_message_is_capped_but_problems_complete(tmp_path):
    lines = ["\tid\tsentence\tsentiment"] + [f"{i}\tx{i}\t\t1" for i in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    task = build_task(
        {"name": "t", "extends": "sst", "files": {"train": "t.csv"}},
        data_dir=tmp_path,
        cache_dir=False,
    )
    with pytest.raises(DataError) as e:
        task.read("train")
    assert len(e.value.problems) == 30
    assert "... and 10 more" in str(e.value)


def test_regression_labels_out_of_range_unparsable_not_finite():
    task = build_task(
        {"name": "stslike", "extends": "sts", "files": {"train": "sts_like-train.csv"}},
        data_dir=FIX,
        cache_dir=False,
    )
    with pytest.raises(DataError) as e:
        task.read("train")
    reasons = {line: r for _, line, r in e.value.problems}
    assert set(reasons) == {5, 6, 7}
    assert "out of range [0, 5]" in reasons[5]
    assert "unparsable label 'high'" in reasons[6]
    assert "not finite" in reasons[7]
    with pytest.warns(DataWarning):
        rows = task.read("train", on_error="skip")
    assert [r.label for r in rows] == [4.8, 0.0, 3.6]


def test_missing_file_names_the_path(tmp_path):
    task = build_task("sst", data_dir=tmp_path, cache_dir=False)
    with pytest.raises(DataError, match=str(tmp_path / "ids-sst-train.csv")):
        task.read("train")
    assert task.splits() == []
    with pytest.raises(DataError, match="no split 'validation'"):
        task.read("validation")


def test_unknown_column_is_an_error_naming_columns():
    task = build_task(
        {
            "name": "typo",
            "extends": "sst",
            "text": "sentense",
            "files": {"train": "sst_like-train.csv"},
        },
        data_dir=FIX,
        cache_dir=False,
    )
    with pytest.raises(DataError, match=r"unknown column 'sentense'.*did you mean 'sentence'"):
        task.read("train")
    task = build_task(
        {
            "name": "nolabel",
            "extends": "sst",
            "label": "stars",
            "files": {"train": "sst_like-train.csv"},
        },
        data_dir=FIX,
        cache_dir=False,
    )
    with pytest.raises(
        DataError, match="unknown column 'stars'.*only test splits may be unlabelled"
    ):
        task.read("train")


def reviews(**kw):
    spec = {
        "name": "reviews",
        "text": "review",
        "label": "stars",
        "id": "review_id",
        "files": {"train": "reviews.csv", "dev": "reviews-dev.csv"},
    }
    spec.update(kw)
    return build_task(spec, data_dir=FIX, cache_dir=False)


def test_string_labels_sorted_and_recorded():
    task = reviews()
    assert task.labels == ["neg", "neutral", "pos"] and task.num_labels == 3
    rows = task.read("train")
    assert [(r.id, r.label) for r in rows] == [
        ("r1", 2),
        ("r2", 0),
        ("r3", 1),
        ("r4", 0),
        ("r5", 2),
    ]
    assert rows[0].text_a == "Great, would buy again"  # comma inside quotes, comma-separated file
    assert rows[2].text_a == 'It is "fine", I guess'
    with pytest.raises(DataError, match=r"reviews-dev.csv:4 unknown label 'great'"):
        task.read("dev")
    assert task.to_dict()["labels"] == ["neg", "neutral", "pos"]


def test_declared_labels_keep_their_order():
    task = reviews(labels=["pos", "neutral", "neg"])
    assert task.labels == ["pos", "neutral", "neg"]
    assert [r.label for r in task.read("train")] == [0, 2, 1, 2, 0]


def test_numeric_labels_sort_numerically(tmp_path):
    rows = ["text,label"] + [f"t{i},{v}" for i, v in enumerate([10, 2, 1, 2, 10])]
    (tmp_path / "n.csv").write_text("\n".join(rows) + "\n")
    task = build_task(
        {"name": "n", "text": "text", "files": {"train": "n.csv"}},
        data_dir=tmp_path,
        cache_dir=False,
    )
    assert task.labels == ["1", "2", "10"]
    assert [r.label for r in task.read("train")] == [2, 1, 0, 1, 2]
    assert [r.id for r in task.read("train")] == [
        "2",
        "3",
        "4",
        "5",
        "6",
    ]  # no id column: line numbers


def test_jsonl_rows_and_their_errors():
    task = reviews(files={"train": "reviews.jsonl"}, id=None, labels=["neg", "neutral", "pos"])
    with pytest.raises(DataError) as e:
        task.read("train")
    reasons = {line: r for _, line, r in e.value.problems}
    assert set(reasons) == {3, 4}
    assert reasons[3].startswith("invalid JSON")
    assert "missing field 'review'" in reasons[4]
    with pytest.warns(DataWarning):
        rows = task.read("train", on_error="skip")
    assert [(r.text_a, r.label, r.line) for r in rows] == [
        ("Works well", 2, 1),
        ("Meh", 1, 2),
        ("Bad", 0, 6),
    ]


def test_jsonl_regression_pairs():
    task = build_task(
        {
            "name": "scores",
            "kind": "regression",
            "pair": True,
            "text": ["left", "right"],
            "label": "score",
            "label_range": [0, 1],
            "files": {"train": "scores.jsonl"},
        },
        data_dir=FIX,
        cache_dir=False,
    )
    rows = task.read("train")
    assert [(r.id, r.text_b, r.label) for r in rows] == [
        ("j0", "a b", 1.0),
        ("j1", "z", 0.25),
        ("j2", "q", 0.5),
    ]
    assert task.num_labels == 1 and task.labels == [] and task.spec.label_range == (0.0, 1.0)


def test_quoted_line_break_is_broken_quoting_unless_multiline():
    spec = {"name": "ml", "text": "text", "files": {"train": "multiline.csv"}, "labels": ["a", "b"]}
    task = build_task(spec, data_dir=FIX, cache_dir=False)
    with pytest.raises(DataError) as e:
        task.read("train")
    # line 2 opens a quote it does not close; line 3 then has the wrong shape: both reported
    assert [line for _, line, _ in e.value.problems] == [2, 3]
    assert "broken quoting" in e.value.problems[0][2]
    rows = build_task({**spec, "multiline": True}, data_dir=FIX, cache_dir=False).read("train")
    assert [(r.id, r.text_a, r.line) for r in rows] == [
        ("m1", "line one\nline two", 2),
        ("m2", "plain", 4),
        ("m3", "a, b", 5),
    ]


def test_unterminated_quote_in_multiline_mode_is_reported(tmp_path):
    (tmp_path / "u.csv").write_text('text,label\nok,a\n"never closed,b\nlost,a\n')
    task = build_task(
        {
            "name": "u",
            "text": "text",
            "labels": ["a", "b"],
            "multiline": True,
            "files": {"train": "u.csv"},
        },
        data_dir=tmp_path,
        cache_dir=False,
    )
    with pytest.raises(DataError, match=r"u.csv:3 broken quoting.*lines 3-4"):
        task.read("train")


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_records(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("\tid\tsentence\tsentiment\n")
    assert read_records(tmp_path / "h.csv").records == []  # the reader: zero rows
    # a split with no rows is refused by whoever reads it (it used to reach the tokenizer,
    # which raised IndexError), naming the file; the same for an empty JSONL file
    (tmp_path / "h.jsonl").write_text("\n")
    for name in ("h.csv", "h.jsonl"):
        task = build_task(
            {"name": "h", "extends": "sst", "format": "auto", "files": {"train": name}},
            data_dir=tmp_path,
            cache_dir=False,
        )
        with pytest.raises(DataError, match=rf"{name}: split 'train' has no data rows"):
            task.read("train")
        with pytest.raises(DataError, match=rf"{name}: split 'train' has no data rows"):
            task.tokenized("train", tokenizer())


def tokenizer():
    from palbert.backbones import load_tokenizer

    return load_tokenizer("minilm")


def test_skipping_every_row_is_refused(tmp_path):
    (tmp_path / "b.csv").write_text("\tid\tsentence\tsentiment\n0\ta\t\t1\n1\tb\tx\t9\n")
    task = build_task(
        {"name": "b", "extends": "sst", "files": {"train": "b.csv"}},
        data_dir=tmp_path,
        cache_dir=False,
    )
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=r"b.csv: none of the 2 row\(s\) of split 'train'") as e:
            task.read("train", on_error=on_error)
        assert [line for _, line, _ in e.value.problems] == [2, 3]
        assert "b.csv:3 unknown label '9'" in str(e.value)


NOT_UTF8 = {
    # name: (bytes, spec overrides); rows 2 and 4 are good, row 3 holds a Latin-1 byte
    "l.csv": (b"\tid\tsentence\tsentiment\n0\ta\t fine\t1\n1\tb\t caf\xe9\t0\n2\tc\t ok\t0\n", {}),
    "m.csv": (
        b"\tid\tsentence\tsentiment\n0\ta\t fine\t1\n1\tb\t caf\xe9\t0\n2\tc\t ok\t0\n",
        {"multiline": True},
    ),
    "j.jsonl": (
        b'{"id": "a", "sentence": "fine", "sentiment": 1}\n'
        b'{"id": "b", "sentence": "caf\xe9", "sentiment": 0}\n'
        b'{"id": "c", "sentence": "ok", "sentiment": 0}\n',
        {},
    ),
}


@pytest.mark.parametrize("name", NOT_UTF8)
def test_bytes_that_are_not_utf8_are_bad_rows_named_by_file_and_line(tmp_path, name):
    data, extra = NOT_UTF8[name]
    (tmp_path / name).write_bytes(data)
    spec = {"name": "u", "extends": "sst", "format": "auto", "files": {"train": name}}
    task = build_task({**spec, **extra}, data_dir=tmp_path, cache_dir=False)
    first = 1 if name.endswith(".jsonl") else 2  # JSONL has no header line
    with pytest.raises(DataError) as e:
        task.read("train")
    assert [(Path(f).name, line) for f, line, _ in e.value.problems] == [(name, first + 1)]
    assert "not UTF-8 text (byte 0xe9" in e.value.problems[0][2]
    assert f"{name}:{first + 1} not UTF-8" in str(e.value)
    with pytest.warns(DataWarning, match="1 bad row"):
        rows = task.read("train", on_error="skip")
    assert [(r.id, r.line) for r in rows] == [("a", first), ("c", first + 2)]
    assert [line for _, line, _ in task.skipped] == [first + 1]


def test_a_header_that_is_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "h.csv").write_bytes(b"\tid\tsent\xffence\tsentiment\n0\ta\tx\t1\n")
    with pytest.raises(DataError, match=r"h.csv:1 cannot read the header: not UTF-8"):
        read_records(tmp_path / "h.csv")


def test_a_file_that_cannot_be_read_is_a_data_error(tmp_path, monkeypatch):
    import palbert.tasks.readers as readers

    (tmp_path / "p.csv").write_text("text,label\nx,1\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(readers, "open", refuse, raising=False)  # shadows the builtin there
    with pytest.raises(DataError, match=r"cannot read data file .*p.csv: Permission denied"):
        read_records(tmp_path / "p.csv")


def test_json_a_parser_cannot_hold_is_a_bad_row(tmp_path):
    # nesting past the recursion limit and numbers past int's digit limit used to escape
    # as RecursionError / ValueError
    lines = [
        b'{"id": "a", "sentence": "fine", "sentiment": 1}',
        b"[" * 100_000,
        b'{"id": 1' + b"0" * 5000 + b', "sentence": "x", "sentiment": 1}',
        b'{"id": "c", "sentence": "ok", "sentiment": 0}',
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    table = read_records(tmp_path / "d.jsonl")
    assert [(r.line, r.problem is None) for r in table.records] == [
        (1, True),
        (2, False),
        (3, False),
        (4, True),
    ]
    assert table.records[1].problem == "invalid JSON: nested too deeply"
    assert table.records[2].problem.startswith("invalid JSON: ")


def test_skipped_rows_are_reported_once_without_source_lines():
    # one report on stderr, not a log line plus a warning followed by a line of palbert's
    # code; still a DataWarning that filters act on
    code = (
        "import warnings, sys\n"
        "from palbert.tasks import build_task, DataWarning\n"
        f"t = build_task({{'name': 'bad', 'extends': 'sst', 'files': {{'train': 'bad-rows.csv'}}}},"
        f" data_dir={str(FIX)!r}, cache_dir=False)\n"
        "t.read('train', on_error='skip')\n"
        "print(len(t.skipped))\n"
        "if sys.argv[1] != 'default':\n"
        "    warnings.simplefilter(sys.argv[1], DataWarning)\n"
        "try:\n"
        "    t.read('train', on_error='skip')\n"
        "except DataWarning:\n"
        "    print('raised')\n"
    )

    def run(action):
        out = subprocess.run(
            [sys.executable, "-c", code, action], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split(), out.stderr

    stdout, stderr = run("default")
    assert stdout == ["8"]
    assert stderr.count("8 bad row(s)") == 2  # once per read
    assert stderr.count("bad-rows.csv:3 missing field") == 2
    assert "DataWarning: task 'bad' split 'train'" in stderr
    assert "warnings.warn" not in stderr and ".py:" not in stderr  # no source shown
    stdout, stderr = run("ignore")
    assert stderr.count("8 bad row(s)") == 1  # the second read is silenced entirely
    stdout, stderr = run("error")
    assert stdout == ["8", "raised"]


def test_absolute_paths_ignore_data_dir(tmp_path):
    task = build_task(
        {"name": "abs", "extends": "sst", "files": {"train": str(FIX / "sst_like-train.csv")}},
        data_dir=tmp_path,
        cache_dir=False,
    )
    assert len(task.read("train")) == 5


def test_reader_modules_import_no_torch_at_module_level():
    # "readers without torch": the data side must stay usable without it
    for mod in ("errors", "spec", "readers", "predictions", "task", "__init__"):
        tree = ast.parse((ROOT / "palbert" / "tasks" / f"{mod}.py").read_text())
        for node in tree.body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "torch" or n.startswith("torch.") for n in names), (mod, names)


def test_hf_dataset_offline_fails_with_clear_message(tmp_path):
    code = (
        "from palbert.tasks import build_task, DataError\n"
        "t = build_task({'name': 'imdb', 'text': 'text', 'labels': ['neg', 'pos'],"
        " 'dataset': {'name': 'stanfordnlp/imdb', 'splits': {'train': 'train'}}})\n"
        "try:\n"
        "    t.read('train')\n"
        "except DataError as e:\n"
        "    print('DATAERROR', e)\n"
    )
    env = dict(
        os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert "DATAERROR" in out.stdout, out.stderr[-2000:]
    assert "hub is unreachable" in out.stdout
    assert "stanfordnlp/imdb" in out.stdout
    assert "Use local files instead" in out.stdout and "files:" in out.stdout


def test_hf_dataset_rows_and_classlabel_names(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"sentence": ["good", "bad", "  "], "label": [1, 0, 1]},
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["negative", "positive"]),
            }
        ),
    )
    calls = []

    def fake_load(name, config=None, split=None, revision=None):
        calls.append((name, config, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr("palbert.tasks.readers.hub_reachable", lambda timeout=3.0: True)
    task = build_task(
        {"name": "hf", "text": "sentence", "dataset": {"name": "glue", "config": "sst2"}},
        cache_dir=False,
    )
    assert task.splits() == ["train", "dev", "test"]
    assert task.labels == ["negative", "positive"]  # the ClassLabel's own order
    with pytest.warns(DataWarning, match="1 bad row"):
        rows = task.read("dev", on_error="skip")
    assert [(r.id, r.text_a, r.label) for r in rows] == [("1", "good", 1), ("2", "bad", 0)]
    assert task.skipped == [
        ("glue/sst2[validation]", 3, "empty or whitespace-only text in 'sentence'")
    ]
    assert ("glue", "sst2", "validation") in calls


def test_jsonl_text_that_is_not_a_string_or_not_unicode_is_a_bad_row_named_by_line(tmp_path):
    lines = [
        '{"id": "a", "sentence": "fine", "sentiment": 1}',
        '{"id": "b", "sentence": ["a", "list"], "sentiment": 1}',
        '{"id": "c", "sentence": 42, "sentiment": 0}',
        '{"id": "d", "sentence": {"an": "object"}, "sentiment": 0}',
        '{"id": "e", "sentence": "half a pair \\ud800 here", "sentiment": 0}',
        '{"id": 6, "sentence": "a numeric id and label are fine", "sentiment": 1}',
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    task = sst_like(files={"train": str(tmp_path / "d.jsonl")}, format="jsonl")
    with pytest.raises(DataError) as e:
        task.read("train")
    reasons = {line: r for _, line, r in e.value.problems}
    assert reasons == {
        2: "'sentence' holds a list, not text",
        3: "'sentence' holds a number, not text",
        4: "'sentence' holds an object, not text",
        5: "not valid Unicode (a lone surrogate U+D800 at character 13) in 'sentence'",
    }
    assert str(tmp_path / "d.jsonl") in str(e.value)
    with pytest.warns(DataWarning):
        assert [r.text_a for r in task.read("train", on_error="skip")] == [
            "fine",
            "a numeric id and label are fine",
        ]


def test_a_device_or_folder_is_not_a_regular_file_not_a_missing_one(tmp_path):
    (tmp_path / "ids-sst-train.csv").symlink_to(os.devnull)
    (tmp_path / "ids-sst-dev.csv").mkdir()
    task = build_task("sst", data_dir=tmp_path, cache_dir=False)
    assert task.splits() == ["train", "dev"]  # there, so read, and refused by name
    for split, what in (("train", "a device"), ("dev", "a folder")):
        with pytest.raises(DataError, match=rf"split '{split}': .* is not a regular file \({what}"):
            task.read(split)
    with pytest.raises(DataError, match=r"is not a regular file \(a device"):
        read_records(tmp_path / "ids-sst-train.csv")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_binary_file_or_a_line_without_end_is_refused_by_line_before_it_fills_memory(
    tmp_path, fmt
):
    from palbert.tasks.readers import MAX_LINE_CHARS

    nul = tmp_path / f"nul.{fmt}"
    nul.write_bytes(b"id,sentence\n1,fine\n" + b"\0" * 100)
    with pytest.raises(DataError, match=rf"nul.{fmt}:3: a NUL byte at character 1"):
        read_records(nul)
    # a file of one endless line is refused after one bounded read, not held whole
    long = tmp_path / f"long.{fmt}"
    long.write_bytes(b"x" * (3 * MAX_LINE_CHARS))
    with pytest.raises(DataError, match=rf"long.{fmt}:1: a line of over 1,048,576 characters"):
        read_records(long)
