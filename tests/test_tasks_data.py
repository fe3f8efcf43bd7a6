"""The built-in tasks on the real CS224N files (../shared/data/cs224n or $PALBERT_DATA_DIR)."""

from __future__ import annotations

import os
import re
from contextlib import nullcontext
from pathlib import Path

import pytest

from palbert.tasks import DataError, DataWarning, build_task

DATA = Path(
    os.environ.get("PALBERT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared/data/cs224n"
)
pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(
        not DATA.is_dir(), reason=f"real CS224N data not found at {DATA} (set PALBERT_DATA_DIR)"
    ),
]

# row counts from ../shared/data/README.md
COUNTS = {
    ("sst", "train"): 8044,
    ("sst", "dev"): 1101,
    ("sst", "test"): 2210,
    ("cfimdb", "train"): 1707,
    ("cfimdb", "dev"): 245,
    ("cfimdb", "test"): 488,
    ("quora", "train"): 16000,
    ("quora", "dev"): 2000,
    ("sts", "train"): 5540,
    ("sts", "dev"): 863,
    ("sts", "test"): 1725,
}
QUORA_BAD_LINES = [2042, 11237]


@pytest.fixture(scope="module")
def tok():
    from palbert.backbones import load_tokenizer

    return load_tokenizer("minilm")


@pytest.mark.parametrize("name, split", [k for k in COUNTS if k != ("quora", "train")])
def test_row_counts_match_the_readme(name, split):
    task = build_task(name, data_dir=DATA, cache_dir=False)
    rows = task.read(split)
    assert len(rows) == COUNTS[name, split]
    assert task.skipped == []
    labelled = not split.startswith("test")
    assert all((r.label is not None) == labelled for r in rows)
    assert len({r.id for r in rows}) == len(rows)
    if name in ("quora", "sts"):
        assert all(re.fullmatch(r"[0-9a-f]{25}", r.id) for r in rows)
    if name == "sst":
        assert all(r.text_a.startswith(" ") for r in rows)  # pre-tokenized, leading space kept


def test_splits_available():
    assert build_task("sst", data_dir=DATA).splits() == ["train", "dev", "test"]
    assert build_task("quora", data_dir=DATA).splits() == [
        "train",
        "dev",
    ]  # no Quora test file here


def test_label_values():
    sst = build_task("sst", data_dir=DATA, cache_dir=False).read("dev")
    assert {r.label for r in sst} == {0, 1, 2, 3, 4}
    sts = build_task("sts", data_dir=DATA, cache_dir=False).read("train")
    assert min(r.label for r in sts) == 0.0 and max(r.label for r in sts) == 5.0
    quora = build_task("quora", data_dir=DATA, cache_dir=False).read("dev")
    assert {r.label for r in quora} == {0, 1}


def test_quora_train_bad_rows_are_reported_not_swallowed():
    task = build_task("quora", data_dir=DATA, cache_dir=False)
    with pytest.raises(DataError) as e:
        task.read("train")
    assert [line for _, line, _ in e.value.problems] == QUORA_BAD_LINES
    for line in QUORA_BAD_LINES:
        assert f"quora-train.csv:{line} " in str(e.value)
    assert "missing label" in e.value.problems[0][2]
    with pytest.warns(DataWarning, match="2 bad row"):
        rows = task.read("train", on_error="skip")
    assert len(rows) == 15998 == COUNTS["quora", "train"] - 2
    assert [line for _, line, _ in task.skipped] == QUORA_BAD_LINES
    assert task.skipped_by_split["train"] == task.skipped


def test_every_real_split_tokenizes_and_batches(tok, tmp_path):
    for name in ("sst", "cfimdb", "quora", "sts"):
        task = build_task(name, data_dir=DATA, cache_dir=tmp_path)
        for split in task.splits():
            with (
                pytest.warns(DataWarning) if (name, split) == ("quora", "train") else nullcontext()
            ):
                data = task.tokenized(split, tok, max_length=128, on_error="skip")
            n = COUNTS[name, split] - (2 if (name, split) == ("quora", "train") else 0)
            assert len(data) == n
            assert int(data.a.lengths.max()) <= 128
            loader = task.batches(split, tok, batch_size=64, on_error="skip")
            b = next(iter(loader))
            assert b["input_ids"].shape == b["attention_mask"].shape == b["token_type_ids"].shape
            assert ("labels" in b) == (not split.startswith("test"))
            assert len(loader) == -(-n // 64)
