"""Tokenization, the token cache, padding, epoch order, length grouping and rank sharding."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from palbert.tasks import DataError, DataWarning, build_task
from palbert.tasks.batching import Batches, Order, Segments, Shard, TokenizedSplit

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"


@pytest.fixture(scope="module")
def tok():
    from palbert.backbones import load_tokenizer

    return load_tokenizer("minilm")


def fake_split(n: int, seed: int = 0) -> TokenizedSplit:
    """n rows of varied lengths whose first token is the row number (easy to trace)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([[i] + [7] * (int(n_) - 1) for i, n_ in enumerate(lengths)]).astype(
        np.int32
    )
    return TokenizedSplit(
        [f"r{i}" for i in range(n)], Segments(ids, offsets), labels=np.arange(n, dtype=np.int64)
    )


def test_padding_to_longest_in_batch_with_mask():
    seg = Segments(
        np.array([5, 6, 7, 8, 9, 10], np.int32),
        np.array([0, 3, 4, 6]),
        np.array([0, 0, 1, 0, 0, 1], np.int8),
    )
    data = TokenizedSplit(["a", "b", "c"], seg, labels=np.array([1, 0, 1]), pad_id=0)
    b = data.collate([1, 0])
    assert b["input_ids"].tolist() == [[8, 0, 0], [5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert b["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 1]]
    assert b["labels"].tolist() == [0, 1] and b["labels"].dtype == torch.int64
    assert b["ids"] == ["b", "a"]
    assert all(b[k].dtype == torch.int64 for k in ("input_ids", "attention_mask", "token_type_ids"))
    assert data.collate([2])["input_ids"].tolist() == [[9, 10]]
    assert data[0] == {"id": "a", "input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "label": 1}


def sst_like(tmp_path, **kw):
    spec = {
        "name": "sstlike",
        "extends": "sst",
        "files": {"train": "sst_like-train.csv", "test": "sst_like-test-student.csv"},
    }
    spec.update(kw)
    return build_task(spec, data_dir=FIX, cache_dir=tmp_path / "cache")


def test_single_sentence_batches_match_the_tokenizer(tok, tmp_path):
    task = sst_like(tmp_path)
    rows = task.read("train")
    loader = task.batches("train", tok, batch_size=2)
    assert len(loader) == 3 == len(list(loader))
    b = next(iter(loader))
    want = tok([r.text_a for r in rows[:2]], padding=True, return_tensors="pt")
    assert torch.equal(b["input_ids"], want["input_ids"])
    assert torch.equal(b["attention_mask"], want["attention_mask"])
    assert torch.equal(b["token_type_ids"], want["token_type_ids"])
    assert b["labels"].tolist() == [4, 2]
    test = next(iter(task.batches("test", tok, batch_size=8)))
    assert "labels" not in test and test["ids"] == ["t01", "t02", "t03"]


def pairs(tmp_path, **kw):
    spec = {"name": "pairs", "extends": "quora", "files": {"train": "pairs-train.csv"}}
    spec.update(kw)
    return build_task(spec, data_dir=FIX, cache_dir=tmp_path / "cache")


def test_cross_encoding_has_segments_and_truncates_longest_first(tok, tmp_path):
    task = pairs(tmp_path)
    rows = task.read("train")
    b = next(iter(task.batches("train", tok, batch_size=4)))
    want = tok(
        [r.text_a for r in rows], [r.text_b for r in rows], padding=True, return_tensors="pt"
    )
    assert torch.equal(b["input_ids"], want["input_ids"])
    assert torch.equal(b["token_type_ids"], want["token_type_ids"])
    assert b["token_type_ids"].max() == 1
    short = next(iter(task.batches("train", tok, batch_size=4, max_length=10)))
    assert short["input_ids"].shape[1] == 10
    want = tok(
        [r.text_a for r in rows],
        [r.text_b for r in rows],
        truncation="longest_first",
        max_length=10,
    )
    assert short["input_ids"][0].tolist() == want["input_ids"][0]


def test_bi_encoding_tokenizes_each_sentence_alone(tok, tmp_path):
    task = pairs(tmp_path, encoding="bi")
    rows = task.read("train")
    b = next(iter(task.batches("train", tok, batch_size=4)))
    assert {"input_ids_b", "attention_mask_b", "token_type_ids_b"} <= set(b)
    want_b = tok([r.text_b for r in rows], padding=True, return_tensors="pt")
    assert torch.equal(b["input_ids_b"], want_b["input_ids"])
    assert torch.equal(b["attention_mask_b"], want_b["attention_mask"])
    assert b["token_type_ids"].max() == 0


def test_regression_labels_are_float(tok, tmp_path):
    task = build_task(
        {"name": "stslike", "extends": "sts", "files": {"train": "sts_like-train.csv"}},
        data_dir=FIX,
        cache_dir=False,
    )
    with pytest.raises(DataError):
        task.batches("train", tok)
    with pytest.warns(DataWarning):
        b = next(iter(task.batches("train", tok, batch_size=8, on_error="skip")))
    assert b["labels"].dtype == torch.float32
    assert b["labels"].tolist() == pytest.approx([4.8, 0.0, 3.6])


def test_disk_cache_is_reused_and_keyed_by_content(tok, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(FIX / "sst_like-train.csv", data_dir / "t.csv")
    spec = {"name": "c", "extends": "sst", "files": {"train": "t.csv"}}
    cache = tmp_path / "cache"
    first = build_task(spec, data_dir=data_dir, cache_dir=cache).tokenized("train", tok)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1

    task = build_task(spec, data_dir=data_dir, cache_dir=cache)
    task._parse = None  # a cache hit must not parse the file again  # type: ignore[assignment]
    again = task.tokenized("train", tok)
    assert again.ids == first.ids and np.array_equal(again.a.input_ids, first.a.input_ids)

    build_task(spec, data_dir=data_dir, cache_dir=cache).tokenized("train", tok, max_length=8)
    assert len(list(cache.glob("*.npz"))) == 2  # another max_length, another entry
    with open(data_dir / "t.csv", "a", newline="") as fh:
        fh.write("5\ta06\t a new row .\t2\r\n")
    changed = build_task(spec, data_dir=data_dir, cache_dir=cache).tokenized("train", tok)
    assert len(changed) == 6 and len(list(cache.glob("*.npz"))) == 3


def test_cached_skips_are_still_reported(tok, tmp_path):
    spec = {"name": "bad", "extends": "sst", "files": {"train": "bad-rows.csv"}}
    with pytest.warns(DataWarning):
        build_task(spec, data_dir=FIX, cache_dir=tmp_path).tokenized("train", tok, on_error="skip")
    task = build_task(spec, data_dir=FIX, cache_dir=tmp_path)
    with pytest.raises(DataError, match="8 bad row"):
        task.tokenized("train", tok)  # strict even when the cache holds the skipped version
    with pytest.warns(DataWarning):
        assert len(task.tokenized("train", tok, on_error="skip")) == 2
    assert len(task.skipped) == 8


def test_cached_skips_name_the_file_read_now(tok, tmp_path):
    # the cache is keyed by content, so a copy elsewhere is served from it: its bad rows
    # must name the copy, not the file whose reading filled the cache
    cache = tmp_path / "cache"
    spec = {"name": "bad", "extends": "sst", "files": {"train": "bad-rows.csv"}}
    with pytest.warns(DataWarning):
        build_task(spec, data_dir=FIX, cache_dir=cache).tokenized("train", tok, on_error="skip")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(FIX / "bad-rows.csv", copy / "bad-rows.csv")
    task = build_task(spec, data_dir=copy, cache_dir=cache)
    with pytest.raises(DataError) as e:
        task.tokenized("train", tok)
    assert len(list(cache.glob("*.npz"))) == 1  # served from the cache
    assert {f for f, _, _ in e.value.problems} == {str(copy / "bad-rows.csv")}
    assert str(FIX) not in str(e.value)


def order(loader: Batches) -> list[list[int]]:
    return [idx.tolist() for idx in loader.batch_indices()]


def test_shuffle_is_deterministic_per_seed_and_epoch():
    data = fake_split(103)
    a = order(Batches(data, 8, epoch=0, order=Order(shuffle=True, seed=1)))
    assert a == order(Batches(data, 8, epoch=0, order=Order(shuffle=True, seed=1)))
    assert a != order(Batches(data, 8, epoch=1, order=Order(shuffle=True, seed=1)))
    assert a != order(Batches(data, 8, epoch=0, order=Order(shuffle=True, seed=2)))
    loader = Batches(data, 8, order=Order(shuffle=True, seed=1))
    loader.set_epoch(1)
    assert order(loader) == order(Batches(data, 8, epoch=1, order=Order(shuffle=True, seed=1)))
    assert sorted(sum(a, [])) == list(range(103))
    assert order(Batches(data, 8)) == [list(range(s, min(s + 8, 103))) for s in range(0, 103, 8)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("group", [False, True])
def test_rank_shards_cover_every_row_once(world_size, group):
    n, bs = 103, 5
    data = fake_split(n)
    seen = []
    for rank in range(world_size):
        loader = Batches(
            data,
            bs,
            epoch=2,
            order=Order(shuffle=True, seed=3, group_by_length=group),
            shard=Shard(rank=rank, world_size=world_size),
        )
        batches = order(loader)
        assert len(loader) == len(batches)
        assert all(1 <= len(b) <= bs for b in batches)
        for b in batches:  # the collated batch holds exactly these rows
            assert data.collate(np.array(b))["input_ids"][:, 0].tolist() == b
        seen += sum(batches, [])
    assert sorted(seen) == list(range(n))


def test_ranks_see_what_one_process_sees_with_a_bigger_batch():
    data = fake_split(64)
    one = order(Batches(data, 8, order=Order(shuffle=True, seed=5)))
    r0 = order(
        Batches(data, 4, order=Order(shuffle=True, seed=5), shard=Shard(rank=0, world_size=2))
    )
    r1 = order(
        Batches(data, 4, order=Order(shuffle=True, seed=5), shard=Shard(rank=1, world_size=2))
    )
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one


def test_drop_last_gives_every_rank_the_same_batches():
    data = fake_split(103)
    lens = [
        len(Batches(data, 5, shard=Shard(rank=r, world_size=4, drop_last=True))) for r in range(4)
    ]
    assert lens == [5, 5, 5, 5]
    assert len(Batches(data, 5, shard=Shard(drop_last=True))) == 20
    assert len(Batches(data, 5)) == 21


def test_length_grouping_reduces_padding_and_keeps_rows():
    data = fake_split(400, seed=1)
    lengths = data.lengths

    def padded(loader):
        return sum(int(lengths[b].max()) * len(b) for b in loader.batch_indices())

    plain = Batches(data, 8, order=Order(shuffle=True, seed=0))
    grouped = Batches(
        data, 8, order=Order(shuffle=True, seed=0, group_by_length=True, bucket_batches=10)
    )
    assert padded(grouped) < padded(plain)
    assert sorted(sum(order(grouped), [])) == list(range(400))
    assert order(grouped) != order(
        Batches(
            data,
            8,
            epoch=1,
            order=Order(shuffle=True, seed=0, group_by_length=True, bucket_batches=10),
        )
    )
    # inside a batch rows have close lengths
    spreads = [int(lengths[b].max() - lengths[b].min()) for b in grouped.batch_indices()]
    assert max(spreads) <= 2 and sum(spreads) / len(spreads) < 1


def test_per_task_batch_size_from_spec(tok, tmp_path):
    task = sst_like(tmp_path, batch_size=2)
    assert len(task.batches("train", tok)) == 3
    assert len(task.batches("train", tok, batch_size=4)) == 2


def test_bad_loader_arguments():
    data = fake_split(4)
    with pytest.raises(ValueError):
        Batches(data, 0)
    with pytest.raises(ValueError):
        Batches(data, 2, shard=Shard(rank=2, world_size=2))
