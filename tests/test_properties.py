"""Property-based tests (hypothesis): the data readers and the task-file reader, fed hostile
bytes, raise only palbert's own errors (DataError, TaskFileError) naming the file - and the
line, for rows - and read back exactly what a well-formed file holds.

Example counts are kept small so the module runs in seconds; to hunt for more, scale
them: ``PALBERT_PROPERTY_SCALE=25 python -m pytest tests/test_properties.py``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from palbert.tasks import DataError, build_task
from palbert.tasks.readers import read_records
from palbert.tasks.spec import INPUT_FORMATS

SCALE = float(os.environ.get("PALBERT_PROPERTY_SCALE", "1"))
FEW = settings(
    max_examples=int(40 * SCALE),
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SUFFIXES = [".csv", ".tsv", ".jsonl", ".txt"]

# Pieces that matter to a CSV/TSV/JSONL parser, mixed with arbitrary bytes: separators,
# quotes, line ends of all kinds, NULs, BOMs, bytes that are not UTF-8 (alone and as
# truncated sequences), JSON punctuation and the column names the specs below look for.
PIECES = [
    b",", b"\t", b'"', b'""', b"\n", b"\r\n", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xff",
    b"\xe9", b"\xc3", b"\xed\xa0\x80", b"{", b"}", b"[", b"]", b":", b'"id"', b'"sentence"',
    b'"sentiment"', b"id", b"sentence", b"sentiment", b"sentence1", b"sentence2",
    b"similarity", b"0", b"1", b"4.5", b"nan", b"inf", b"-1e999", b" ", b"\\",
]  # fmt: skip
HEADERS = [
    b"",
    b"id,sentence,sentiment\n",
    b"\tid\tsentence\tsentiment\n",
    b"id\tsentence1\tsentence2\tsimilarity\r\n",
    b"\xef\xbb\xbfid,sentence,sentiment\r\n",
    b'{"id": "a", "sentence": "s", "sentiment": 1}\n',
]
chunks = st.one_of(
    st.sampled_from(PIECES),
    st.binary(max_size=12),
    st.text(max_size=8).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(1000, 200_000).map(lambda n: b"x" * n),  # very long lines / fields
)
contents = st.builds(
    lambda head, body: head + b"".join(body),
    st.sampled_from(HEADERS),
    st.lists(chunks, max_size=30),
)

# A single-sentence classification task and a regression pair task, both over any format.
SPECS = [
    {"name": "c", "text": "sentence", "label": "sentiment", "labels": ["0", "1"]},
    {
        "name": "r",
        "kind": "regression",
        "pair": True,
        "text": ["sentence1", "sentence2"],
        "label": "similarity",
        "label_range": [0, 5],
    },
]


def physical_lines(path: Path) -> int:
    """Lines as the readers count them (\\n, \\r\\n and \\r all end one)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        return sum(1 for _ in fh)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


@FEW
@given(
    data=contents,
    suffix=st.sampled_from(SUFFIXES),
    fmt=st.sampled_from(INPUT_FORMATS),
    multiline=st.booleans(),
)
def test_read_records_raises_only_data_errors_and_names_real_lines(
    folder, data, suffix, fmt, multiline
):
    path = folder / f"data{suffix}"
    path.write_bytes(data)
    try:
        table = read_records(path, fmt, multiline)
    except DataError as e:
        assert str(path) in str(e)
        return
    n = physical_lines(path)
    for rec in table.records:
        assert 1 <= rec.line <= n
        assert (rec.values is None) == isinstance(rec.problem, str)


@FEW
@given(
    data=contents,
    suffix=st.sampled_from(SUFFIXES),
    fmt=st.sampled_from(INPUT_FORMATS),
    multiline=st.booleans(),
    spec=st.sampled_from(SPECS),
    split=st.sampled_from(["train", "test"]),
    on_error=st.sampled_from(["raise", "skip"]),
)
def test_task_read_raises_only_data_errors_naming_file_and_line(
    folder, data, suffix, fmt, multiline, spec, split, on_error
):
    path = folder / f"task{suffix}"
    path.write_bytes(data)
    task = build_task(
        {**spec, "format": fmt, "multiline": multiline, "files": {split: path.name}},
        data_dir=folder,
        cache_dir=False,
    )
    n = physical_lines(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = task.read(split, on_error=on_error)
    except DataError as e:
        assert str(path) in str(e)
        for file, line, _ in e.problems:
            assert file == str(path) and 1 <= line <= n
        if e.problems:  # rows are named by file and line
            file, line, _ = e.problems[0]
            assert f"{file}:{line} " in str(e)
        return
    assert rows
    for r in rows:
        assert 1 <= r.line <= n and r.text_a.strip()
        assert r.label is not None or split == "test"
    for file, line, _ in task.skipped:
        assert file == str(path) and 1 <= line <= n


# -- well-formed files read back exactly --------------------------------------------------

# anything UTF-8 can hold: quotes, tabs, line breaks, BOM characters, ...; but no NUL, which
# makes a file binary and is refused whole, naming its line (tests/test_tasks_readers.py)
field_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)


@FEW
@given(
    rows=st.lists(st.tuples(field_text, field_text, field_text), min_size=1, max_size=8),
    delimiter=st.sampled_from([",", "\t"]),
    multiline=st.booleans(),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
    quote_all=st.booleans(),
)
def test_delimited_files_written_by_csv_read_back_exactly(
    folder, rows, delimiter, multiline, bom, newline, quote_all
):
    breaks = ("\r", "\n") + (("\t",) if delimiter == "\t" else ())
    if not multiline:  # one row per line: a field may not hold a line break (or a tab in TSV)
        assume(not any(b in f for row in rows for f in row for b in breaks))
    # csv.writer quotes only the line break characters of its own line terminator
    quote_all = quote_all or any("\r" in f for row in rows for f in row)
    quoting = csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator=newline, quoting=quoting)
    writer.writerow(["id", "a", "b"])
    writer.writerows(rows)
    path = folder / "round.csv"
    path.write_bytes((("\ufeff" if bom else "") + buf.getvalue()).encode("utf-8"))
    table = read_records(path, "tsv" if delimiter == "\t" else "csv", multiline)
    assert table.columns == ["id", "a", "b"]
    assert [r.problem for r in table.records] == [None] * len(rows)
    assert [tuple(r.values.values()) for r in table.records] == rows


@pytest.fixture(scope="module")
def tokenizer():
    from palbert.backbones import load_tokenizer

    return load_tokenizer("minilm")


@FEW
@given(texts=st.lists(field_text, min_size=1, max_size=6), max_length=st.integers(4, 24))
def test_any_text_reaches_batches_or_is_a_named_bad_row(folder, tokenizer, texts, max_length):
    """Whatever the text (control characters, line breaks, lone combining marks...),
    a row is tokenized into a batch no longer than max_length, or reported."""
    lines, starts = ['"id","sentence","label"\r\n'], []
    for i, t in enumerate(texts):
        buf = io.StringIO()
        csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\r\n").writerow((i, t, i % 2))
        starts.append(1 + sum(len(io.StringIO(x, newline="").readlines()) for x in lines))
        lines.append(buf.getvalue())
    (folder / "tok.csv").write_bytes("".join(lines).encode("utf-8"))
    spec = {"name": "t", "text": "sentence", "labels": ["0", "1"], "multiline": True}
    task = build_task({**spec, "files": {"train": "tok.csv"}}, data_dir=folder, cache_dir=False)
    usable = [i for i, t in enumerate(texts) if t.strip()]
    if not usable:
        with pytest.raises(DataError, match=r"tok.csv: none of the"):
            task.tokenized("train", tokenizer, max_length=max_length, on_error="skip")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = task.tokenized("train", tokenizer, max_length=max_length, on_error="skip")
        loader = task.batches("train", tokenizer, 4, max_length=max_length, on_error="skip")
        batches = list(loader)
    assert len(data) == len(usable)
    assert [line for _, line, _ in task.skipped] == [
        starts[i] for i in range(len(texts)) if i not in usable
    ]
    assert sum(len(b["input_ids"]) for b in batches) == len(usable)
    assert all(b["input_ids"].shape[1] <= max_length for b in batches)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | field_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_text, inner, max_size=3),
    max_leaves=8,
)


@FEW
@given(
    objs=st.lists(st.dictionaries(field_text, json_values, max_size=4), min_size=1, max_size=6),
    ascii_only=st.booleans(),
)
def test_jsonl_files_read_back_exactly(folder, objs, ascii_only):
    path = folder / "round.jsonl"
    text = "".join(json.dumps(o, ensure_ascii=ascii_only) + "\n" for o in objs)
    path.write_bytes(text.encode("utf-8"))
    table = read_records(path)
    assert [r.values for r in table.records] == objs
    assert [r.line for r in table.records] == list(range(1, len(objs) + 1))


# -- the task-file reader ----------------------------------------------------------------


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    """A valid task file written by PalBert.save_task on a random:tiny model (built once)."""
    from palbert import ModuleConfig, PalBert

    torch.manual_seed(0)
    model = PalBert.from_pretrained("random:tiny", module=ModuleConfig(kind="pal", init="normal"))
    task = build_task({"name": "sts"})
    model.add_task("sts", task.build_head(model.hidden_size), spec=task)
    path = model.save_task("sts", tmp_path_factory.mktemp("taskfile") / "sts.safetensors")
    return Blob(path.read_bytes())


def read_or_refuse(path: Path, blob: bytes):
    """read_task_file on ``blob``: the TaskFile, or None after a TaskFileError naming it."""
    from palbert.taskfile import TaskFileError, read_task_file

    path.write_bytes(blob)
    try:
        return read_task_file(path)
    except TaskFileError as e:
        assert str(path) in str(e)
        return None


def weights(tf) -> list[tuple[str, tuple[int, ...], bytes]]:
    """The stored weights as sorted (dtype, shape, bytes), names aside (a damaged name is
    refused when the tensors are matched to a module: see palbert.taskfile.fill_module)."""
    return sorted(
        (str(t.dtype), tuple(t.shape), t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for t in tf.tensors.values()
    )


class Blob(bytes):
    """File bytes that print short in hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


@FEW
@given(blob=st.binary(max_size=300))
def test_task_file_reader_refuses_arbitrary_bytes(folder, blob):
    assert read_or_refuse(folder / "any.safetensors", blob) is None


@FEW
@given(
    header=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    tail=st.binary(max_size=64),
)
def test_task_file_reader_refuses_arbitrary_headers(folder, header, tail):
    raw = json.dumps(header).encode()
    read_or_refuse(folder / "hdr.safetensors", struct.pack("<Q", len(raw)) + raw + tail)


@FEW
@given(data=st.data())
def test_task_file_reader_refuses_every_truncation(folder, task_file, data):
    cut = data.draw(st.integers(0, len(task_file) - 1))
    assert read_or_refuse(folder / "cut.safetensors", task_file[:cut]) is None


def test_task_file_reader_accepts_the_valid_file(folder, task_file):
    assert read_or_refuse(folder / "ok.safetensors", task_file) is not None


@settings(FEW, max_examples=int(150 * SCALE))
@given(data=st.data())
def test_a_flipped_byte_is_refused_or_leaves_the_weights_intact(folder, task_file, data):
    """A flip in the weights is caught by the hash; one in the header is refused or changes
    no stored weight (dtype, shape, bytes): nothing reinterprets the weights silently."""
    n = struct.unpack("<Q", task_file[:8])[0]
    # flips in the header are the interesting ones: aim most of them there, often turning a
    # byte into one that keeps the JSON valid (a digit, a dtype letter)
    where = data.draw(st.integers(0, 8 + n - 1) | st.integers(0, len(task_file) - 1))
    new = data.draw(st.sampled_from(b'0123456789FIUBE[]{},:" ') | st.integers(0, 255))
    assume(new != task_file[where])
    blob = bytearray(task_file)
    blob[where] = new
    got = read_or_refuse(folder / "flip.safetensors", bytes(blob))
    if got is not None:
        original = read_or_refuse(folder / "orig.safetensors", task_file)
        assert weights(got) == weights(original)


def test_every_one_byte_change_of_a_dtype_code_is_refused(folder, task_file):
    """F32 -> I32 or U32 keeps the layout and the hash valid; it must still be refused."""
    at = task_file.index(b'"dtype":"F32"') + len(b'"dtype":"')
    for pos in range(at, at + 3):
        for byte in range(256):
            if byte == task_file[pos]:
                continue
            blob = bytearray(task_file)
            blob[pos] = byte
            assert read_or_refuse(folder / "dtype.safetensors", bytes(blob)) is None, blob[
                at - 1 : at + 4
            ]


@settings(FEW, max_examples=int(30 * SCALE))
@given(
    key=st.sampled_from(
        [
            "palbert.format_version",
            "palbert.task",
            "palbert.spec",
            "palbert.module",
            "palbert.backbone",
            "palbert.active_layers",
            "palbert.dtype",
            "palbert.sha256",
            "__metadata__",
        ]
    ),
    value=json_values,
    as_json=st.booleans(),
)
def test_task_file_reader_refuses_metadata_of_any_type(folder, task_file, key, value, as_json):
    """The valid file with one metadata value replaced by any JSON value (or its text)."""
    n = struct.unpack("<Q", task_file[:8])[0]
    header = json.loads(task_file[8 : 8 + n])
    new = json.dumps(value) if as_json else value
    if key == "__metadata__":
        header[key] = new
    else:
        header["__metadata__"][key] = new
    raw = json.dumps(header).encode()
    read_or_refuse(
        folder / "meta.safetensors", struct.pack("<Q", len(raw)) + raw + task_file[8 + n :]
    )
