"""Token batches: tokenize once (cached on disk), pad each batch to its longest row.

::

    data = tokenize_examples(examples, tokenizer, max_length=128, encoding="single")
    loader = Batches(data, 32, Order(shuffle=True, seed=0), Shard(rank=0, world_size=1))
    for batch in loader:             # dict of LongTensors + "ids"
        ...
    loader.set_epoch(1)              # a new order, fixed by (seed, epoch)

The order of one epoch: a permutation of all rows drawn from ``numpy.random.default_rng((seed,
epoch))``; optionally rows sorted by length inside buckets of ``bucket_batches`` global batches
and the order of the batches shuffled (length grouping, less padding); then cut into global
batches of ``batch_size * world_size`` rows of which rank r takes rows ``[r*bs, (r+1)*bs)``.
So N processes see exactly the rows one process sees with an N times larger batch, every row
exactly once per epoch. The last, partial global batch is split evenly between the ranks
(rank r gets none when fewer rows than ranks remain) or dropped with ``drop_last``, which is
the way to give every rank the same number of batches.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from palbert.files import atomic_write_with
from palbert.tasks.readers import Example

CACHE_VERSION = 1


@dataclass
class Segments:
    """Token rows stored flat: row i is ``input_ids[offsets[i]:offsets[i+1]]``."""

    input_ids: np.ndarray  # int32, all rows concatenated
    offsets: np.ndarray  # int64, n + 1
    token_type_ids: np.ndarray | None = None  # int8 like input_ids; None means all zeros

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> list[int]:
        return self.input_ids[self.offsets[i] : self.offsets[i + 1]].tolist()

    def pad(self, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and token_type_ids of rows ``idx``, padded to the longest."""
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        width = max(int(lengths.max()), 1) if len(idx) else 1
        cols = np.arange(width)
        mask = cols[None, :] < lengths[:, None]
        # gather positions of every (row, col); positions past a row's end are masked out
        pos = np.minimum(self.offsets[idx][:, None] + cols[None, :], len(self.input_ids) - 1)
        ids = np.where(mask, self.input_ids[pos], pad_id).astype(np.int64)
        if self.token_type_ids is not None:
            tt = np.where(mask, self.token_type_ids[pos], 0).astype(np.int64)
        else:
            tt = np.zeros_like(ids)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "token_type_ids": torch.from_numpy(tt),
        }


@dataclass
class TokenizedSplit:
    """A split tokenized once: indexable (``data[i]`` is a dict of lists) and collatable.

    ``b`` holds the second sentences for bi-encoder tasks (each sentence tokenized alone).
    """

    ids: list[str]
    a: Segments
    b: Segments | None = None
    labels: np.ndarray | None = None  # int64 (classification) or float32 (regression)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        item: dict[str, Any] = {"id": self.ids[i], "input_ids": self.a.row(i)}
        if self.a.token_type_ids is not None:
            item["token_type_ids"] = self.a.token_type_ids[
                self.a.offsets[i] : self.a.offsets[i + 1]
            ].tolist()
        if self.b is not None:
            item["input_ids_b"] = self.b.row(i)
        if self.labels is not None:
            item["label"] = self.labels[i].item()
        return item

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row (both sentences for bi-encoders): the cost length grouping sorts by."""
        n = self.a.lengths
        return n + self.b.lengths if self.b is not None else n

    def collate(self, idx: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """The batch of rows ``idx``: LongTensors padded to the longest row, labels, ids."""
        idx = np.asarray(idx, dtype=np.int64)
        batch: dict[str, Any] = self.a.pad(idx, self.pad_id)
        if self.b is not None:
            for k, v in self.b.pad(idx, self.pad_id).items():
                batch[f"{k}_b"] = v
        if self.labels is not None:
            batch["labels"] = torch.from_numpy(self.labels[idx])
        batch["ids"] = [self.ids[i] for i in idx]
        return batch


def _segments(enc: dict[str, list[list[int]]], with_types: bool) -> Segments:
    rows = enc["input_ids"]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=total)
    tt = None
    if with_types:
        tt = np.fromiter(
            itertools.chain.from_iterable(enc["token_type_ids"]), dtype=np.int8, count=total
        )
    return Segments(flat, offsets, tt)


def capped_length(max_length: int, tokenizer: Any) -> int:
    """``max_length``, lowered to the tokenizer's ``model_max_length`` where that is smaller."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < max_length else int(max_length)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    max_length: int = 128,
    encoding: str = "single",
    labels_dtype: str | None = "int64",
    skipped: list[tuple[str, int, str]] | None = None,
) -> TokenizedSplit:
    """Tokenize rows in one batched call of the fast tokenizer per sentence column.

    ``single``: [CLS] a [SEP]; ``cross``: [CLS] a [SEP] b [SEP] with token_type_ids,
    truncated longest-first to ``max_length``; ``bi``: a and b each alone, each truncated to
    ``max_length``. ``labels_dtype`` None means the split is unlabelled.
    """
    texts_a = [e.text_a for e in examples]
    common = dict(max_length=max_length, padding=False, return_attention_mask=False)
    b = None
    if encoding == "cross":
        texts_b = [e.text_b for e in examples]
        enc = tokenizer(
            texts_a, texts_b, truncation="longest_first", return_token_type_ids=True, **common
        )
        a = _segments(enc, True)
    else:
        single = dict(truncation=True, return_token_type_ids=False, **common)
        a = _segments(tokenizer(texts_a, **single), False)
        if encoding == "bi":
            b = _segments(tokenizer([e.text_b for e in examples], **single), False)
    labels = None
    if labels_dtype is not None:
        labels = np.array([e.label for e in examples], dtype=labels_dtype)
    return TokenizedSplit(
        ids=[e.id for e in examples],
        a=a,
        b=b,
        labels=labels,
        skipped=list(skipped or []),
        pad_id=int(tokenizer.pad_token_id or 0),
    )


# -- on-disk cache ------------------------------------------------------------------------

_TOKENIZER_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's vocabulary and rules (not its transient truncation state)."""
    try:
        return _TOKENIZER_KEYS[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)  # set by every call with truncation=True
        state.pop("padding", None)
        blob = json.dumps(state, sort_keys=True)
    else:  # a slow tokenizer: its vocabulary and special tokens
        blob = json.dumps(
            [sorted(tokenizer.get_vocab().items()), str(tokenizer.special_tokens_map)],
            sort_keys=True,
        )
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    try:
        _TOKENIZER_KEYS[tokenizer] = key
    except TypeError:
        pass
    return key


def default_cache_dir() -> Path:
    """``$PALBERT_CACHE_DIR`` or ``~/.cache/palbert/tokenized``."""
    env = os.environ.get("PALBERT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "palbert" / "tokenized"


def file_fingerprint(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def save_tokenized(path: Path, data: TokenizedSplit) -> None:
    """Write atomically (:mod:`palbert.files`) so concurrent runs never read half a file."""
    arrays: dict[str, np.ndarray] = {"a_ids": data.a.input_ids, "a_off": data.a.offsets}
    if data.a.token_type_ids is not None:
        arrays["a_tt"] = data.a.token_type_ids
    if data.b is not None:
        arrays["b_ids"] = data.b.input_ids
        arrays["b_off"] = data.b.offsets
    if data.labels is not None:
        arrays["labels"] = data.labels
    meta = {"ids": data.ids, "skipped": data.skipped, "pad_id": data.pad_id}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add .npz to a name
            np.savez(fh, **arrays)

    atomic_write_with(path, write)


def load_tokenized(path: Path) -> TokenizedSplit | None:
    """Read a cached split; None when it is missing or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            a = Segments(z["a_ids"], z["a_off"], z["a_tt"] if "a_tt" in z else None)
            b = Segments(z["b_ids"], z["b_off"]) if "b_ids" in z else None
            labels = z["labels"] if "labels" in z else None
    except (OSError, ValueError, KeyError):
        return None
    skipped = [tuple(s) for s in meta["skipped"]]
    return TokenizedSplit(meta["ids"], a, b, labels, skipped, int(meta["pad_id"]))  # type: ignore[arg-type]


# -- batches ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    """How an epoch's rows are ordered: shuffled from ``(seed, epoch)`` or kept, and
    optionally sorted by length inside buckets of ``bucket_batches`` global batches."""

    shuffle: bool = False
    seed: int = 0
    group_by_length: bool = False
    bucket_batches: int = 50


@dataclass(frozen=True)
class Shard:
    """Which rows of each global batch this process takes (rank ``rank`` of ``world_size``);
    ``drop_last`` drops the last, partial global batch."""

    rank: int = 0
    world_size: int = 1
    drop_last: bool = False


class Batches:
    """One rank's batches of a tokenized split, re-ordered per epoch from ``(seed, epoch)``.

    ``len(loader)`` is the number of batches this rank yields in an epoch. See the module
    docstring for the exact order, length grouping and sharding rules.

    >>> loader = Batches(data, 32, Order(shuffle=True, seed=0))      # doctest: +SKIP
    >>> loader.set_epoch(3); first = next(iter(loader))              # doctest: +SKIP
    """

    def __init__(
        self,
        data: TokenizedSplit,
        batch_size: int = 32,
        order: Order | None = None,
        shard: Shard | None = None,
        epoch: int = 0,
    ) -> None:
        order, shard = order or Order(), shard or Shard()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        if shard.world_size < 1 or not 0 <= shard.rank < shard.world_size:
            raise ValueError(f"rank {shard.rank} is not in a world of size {shard.world_size}")
        self.data = data
        self.batch_size = batch_size
        self.epoch = epoch
        self.shuffle, self.seed = order.shuffle, order.seed
        self.group_by_length, self.bucket_batches = order.group_by_length, order.bucket_batches
        self.rank, self.world_size, self.drop_last = shard.rank, shard.world_size, shard.drop_last

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.data)
        g = self.batch_size * self.world_size
        full, rest = divmod(n, g)
        if rest and not self.drop_last and self.rank < rest:
            full += 1
        return full

    def global_batches(self) -> list[np.ndarray]:
        """Every rank's rows of this epoch, as global batches of ``batch_size * world_size``."""
        n = len(self.data)
        g = self.batch_size * self.world_size
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.group_by_length:
            lengths = self.data.lengths
            chunk = g * self.bucket_batches
            parts = []
            for s in range(0, n, chunk):
                piece = order[s : s + chunk]
                # longest first inside the bucket; stable so equal lengths keep the shuffle
                parts.append(piece[np.argsort(-lengths[piece], kind="stable")])
            order = np.concatenate(parts) if parts else order
        batches = [order[s : s + g] for s in range(0, n, g)]
        if batches and len(batches[-1]) < g and self.drop_last:
            batches.pop()
        if self.group_by_length and self.shuffle and len(batches) > 1:
            # the partial batch moves too; sharding below handles it wherever it lands
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batch_indices(self) -> list[np.ndarray]:
        """This rank's row indices, batch by batch, for the current epoch."""
        out = []
        bs, r, w = self.batch_size, self.rank, self.world_size
        for gb in self.global_batches():
            if len(gb) == bs * w:
                mine = gb[r * bs : (r + 1) * bs]
            else:
                mine = np.array_split(gb, w)[r]
            if len(mine):
                out.append(mine)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for idx in self.batch_indices():
            yield self.data.collate(idx)


def merge_batches(parts: list[tuple[str, dict[str, Any]]], names: list[str], pad_id: int = 0):
    """One mixed batch from several tasks' micro-batches (``TokenizedSplit.collate``'s dicts):
    rows padded to one width, with ``task_ids`` (indices into ``names``) and ``side`` (a
    bi-encoded micro-batch adds its second sentences as rows of side 1, after its first);
    labels, where the parts have them, stay per task, in row order. The one padder of mixed
    batches: training's merged micro-batches and ``palbert serve``'s batches."""
    width = max(int(b["input_ids"].shape[1]) for _, b in parts)
    cols: dict[str, list[torch.Tensor]] = {
        "input_ids": [],
        "attention_mask": [],
        "token_type_ids": [],
    }
    width = max([width, *(int(b["input_ids_b"].shape[1]) for _, b in parts if "input_ids_b" in b)])
    task_ids, sides, labels = [], [], {}
    for task, b in parts:
        for side, suffix in enumerate(("", "_b") if "input_ids_b" in b else ("",)):
            n, w = b["input_ids" + suffix].shape
            for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
                t = b.get(key + suffix, torch.zeros_like(b["input_ids" + suffix]))
                cols[key].append(torch.nn.functional.pad(t, (0, width - w), value=fill))
            task_ids.append(torch.full((n,), names.index(task), dtype=torch.long))
            sides.append(torch.full((n,), side, dtype=torch.long))
        if "labels" in b:
            labels.setdefault(task, []).append(b["labels"])
    batch = {k: torch.cat(v) for k, v in cols.items()}
    batch["task_ids"] = torch.cat(task_ids)
    batch["side"] = torch.cat(sides)
    return batch, {t: torch.cat(v) for t, v in labels.items()}
