"""The inference path: length batches, input checks, eval mode, concurrent predict."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import torch

from palbert import ModuleConfig, PalBert
from palbert.inference import PAD_TOLERANCE, length_batches, padding_waste
from palbert.tasks import build_task

SENTENCES = [
    "a gripping, funny film",
    "dull.",
    "the plot goes nowhere but the cast is great and the music is lovely throughout",
    "i wanted to like it",
    "two hours i will never get back, and the popcorn was stale too",
]
PAIRS = [
    ("a man plays the guitar", "a man is playing a guitar"),
    ("how do i learn python?", "what is the best way to learn python quickly and well"),
    ("the cat sleeps", "stocks fell"),
]


def test_length_batches_cover_every_row_once_within_tolerance():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=500)
    batches = length_batches(lengths, 32)
    assert sorted(i for b in batches for i in b.tolist()) == list(range(500))
    for b in batches:
        assert 1 <= len(b) <= 32
        assert lengths[b].min() >= PAD_TOLERANCE * lengths[b].max()
    assert padding_waste(lengths, 32) < 1 - PAD_TOLERANCE
    assert length_batches(np.array([], dtype=np.int64), 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_batches(lengths, 0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PalBert.from_pretrained("minilm", module=ModuleConfig(kind="pal", init="normal"))
    for spec in ({"name": "sst"}, {"name": "sts"}, {"name": "q", "extends": "quora"}):
        task = build_task(spec)
        m.add_task(task.spec.name, task.build_head(m.hidden_size), spec=task)
    return m


def test_models_come_in_eval_mode_and_predict_leaves_the_mode(model):
    assert not PalBert.from_pretrained("random:tiny").training
    assert not model.training
    model.predict("sst", SENTENCES)
    assert not model.training


def test_a_string_is_not_a_list_of_inputs(model):
    with pytest.raises(TypeError, match="list"):
        model.predict("sst", "a plain string")


def test_an_input_of_the_wrong_kind_is_named_by_its_index(model):
    """predict and palbert serve share this check (InputError), so they say the same."""
    from palbert.inference import InputError

    for task, inputs, words in (
        ("sts", [PAIRS[0], "one string"], "input 1: task 'sts' takes sentence pairs; this input is one string"),
        ("sst", ["ok", "fine", ("a", "")], "input 2: task 'sst' takes single sentences; this input is a pair"),
        ("sst", ["ok", 3], "input 1: expected a string or a pair of strings, not 3"),
        ("sts", [("a", "b", "c")], "input 0: expected a string or a pair"),
    ):  # fmt: skip
        with pytest.raises(InputError) as e:
            model.predict(task, inputs)
        assert str(e.value).startswith(words), e.value


@pytest.mark.parametrize(
    "task, inputs, message",
    [
        # an empty pair used to score 5.0, "identical", without a word
        ("sts", [PAIRS[0], ("", "")], "input 1: empty or whitespace-only text"),
        ("sts", [("a cat", " \t")], "input 0 (its second text): empty or whitespace-only"),
        ("sst", ["fine", "\n"], "input 1: empty"),
        # a lone surrogate used to fail inside the tokenizer, naming no input
        ("sst", ["fine", "half \ud83d"], "input 1: not valid Unicode (a lone surrogate U+D83D"),
    ],
)
def test_an_empty_or_invalid_text_is_refused_naming_the_input(model, task, inputs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        model.predict(task, inputs)


@pytest.mark.parametrize("text", ["", " \t", "half \ud83d"])
def test_a_data_row_and_an_input_are_refused_for_one_text_in_the_same_words(model, tmp_path, text):
    """One rule (``text_problem``) for a data file's rows and for predict's inputs: a text
    palbert would not train on, it does not predict either, and says why in the same words."""
    from palbert.inference import InputError
    from palbert.tasks.errors import DataError

    rows = [
        {"id": "a", "sentence": "fine", "sentiment": 1},
        {"id": "b", "sentence": text, "sentiment": 0},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "s",
        "extends": "sst",
        "format": "jsonl",
        "files": {"train": str(tmp_path / "d.jsonl")},
    }
    with pytest.raises(DataError) as row:
        build_task(spec, cache_dir=False).read("train")
    with pytest.raises(InputError) as given:
        model.predict("sst", ["fine", text])
    assert [reason for _, _, reason in row.value.problems] == [
        f"{given.value.reason} in 'sentence'"
    ]


def test_concurrent_predict_equals_one_thread(model):
    """Threads predicting different tasks and lengths at once on one model get exactly what
    each gets alone: the route of a forward belongs to its call, not to the model."""
    jobs = [
        ("sst", SENTENCES, 2),
        ("sts", PAIRS, 1),
        ("q", PAIRS[::-1], 3),
        ("sst", SENTENCES[::-1], 5),
        ("sts", PAIRS * 3, 4),
        ("q", PAIRS * 2, 2),
    ] * 3
    want = [model.predict(t, x, batch_size=b) for t, x, b in jobs]
    got: list = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        task, inputs, bs = jobs[i]
        start.wait()
        for _ in range(3):
            got[i] = model.predict(task, inputs, batch_size=bs)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
