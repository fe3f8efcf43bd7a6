"""Reading task files strictly: CS224N TSV, CSV/TSV, JSONL and Hugging Face datasets.

No torch here. Two layers:

- :func:`read_records` turns a file into ``Record(line, values, problem)``: one per data row,
  with the row's first physical line number (the header is line 1) and its fields by column
  name, or a ``problem`` when the row cannot be split into fields (broken quoting, wrong
  number of fields, invalid JSON).
- :func:`parse_examples` checks records against a :class:`TaskSpec` (text present and
  non-empty, label parsable and in range) and returns :class:`Example` rows plus the
  ``(file, line, reason)`` of every bad one.

::

    records = read_records("ids-sst-dev.csv")
    result = parse_examples(records, spec, "dev", labels=["0", "1", "2", "3", "4"])
    result.examples[0].text_a, result.problems

Broken quoting: with ``multiline`` off (the default) every physical line is parsed on its own,
so a quote that is never closed damages only its own row, which is reported, instead of
silently swallowing the rows after it.

Bytes that are not UTF-8 damage only the rows that hold them: files are decoded with
``surrogateescape`` (undecodable bytes become lone surrogates U+DC80..U+DCFF, which valid
UTF-8 never yields) and each such row is reported by line instead of failing the whole file.
A JSONL string escape that leaves a lone surrogate (``"\\ud800"``) is reported the same way.

What is not a text file is refused whole, naming the file and line, before it fills memory:
a NUL byte (a binary file) or a physical line longer than :data:`MAX_LINE_CHARS`. JSONL
text fields must be strings: a list, number or object there is a bad row, not text.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palbert.hub import hub_reachable
from palbert.tasks.errors import DataError, format_problems
from palbert.tasks.spec import DatasetSpec, TaskSpec, canonical_label

# the csv default (131,072 characters per field) is too small for long documents
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# How files are opened: a BOM is dropped; undecodable bytes survive as lone surrogates.
_TEXT = dict(encoding="utf-8-sig", errors="surrogateescape")
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# no row of text is this long; a longer line is a binary file or a file without line breaks
MAX_LINE_CHARS = 1 << 20


def _not_utf8(text: str, where: str = "") -> str | None:
    """Why ``text`` (decoded with ``surrogateescape``) is not UTF-8, or None if it is.
    ``where`` says where in the row; by default the character's position in ``text``."""
    m = _UNDECODABLE.search(text)
    if m is None:
        return None
    byte = ord(m.group()) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
    return f"not UTF-8 text (byte 0x{byte:02x} {where or f'at character {m.start() + 1}'})"


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be tokenized as Unicode (a lone surrogate, which UTF-8 cannot
    encode), or None."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return (
        f"not valid Unicode (a lone surrogate U+{ord(m.group()):04X} at character {m.start() + 1})"
    )


def text_problem(text: str | None) -> str | None:
    """Why one text cannot be trained on or predicted, or None: the one rule for a data
    row's texts and for the inputs of ``predict`` and ``palbert serve``. An empty text has
    nothing to score (an empty pair came out as "identical"), and a lone surrogate cannot be
    tokenized at all."""
    if text is None or not text.strip():
        return "empty or whitespace-only text"
    return unicode_problem(text)


def _bounded_lines(fh: Any, path: Path) -> Iterator[str]:
    """The physical lines of ``fh``, refusing (:class:`DataError` naming the file and line) a
    NUL byte or a line over :data:`MAX_LINE_CHARS`: neither is a text data file, and reading
    such a "line" whole could take all the memory there is."""
    for lineno, line in enumerate(iter(lambda: fh.readline(MAX_LINE_CHARS + 1), ""), start=1):
        nul = line.find("\x00")
        if nul >= 0:
            raise DataError(
                f"{path}:{lineno}: a NUL byte at character {nul + 1}; this is a binary file, "
                "not CSV/TSV/JSONL text"
            )
        if len(line) > MAX_LINE_CHARS:
            raise DataError(
                f"{path}:{lineno}: a line of over {MAX_LINE_CHARS:,} characters; a text data "
                "file has one row per line (is this the right file?)"
            )
        yield line


@dataclass(frozen=True, slots=True)
class Example:
    """One checked row. ``label`` is the class id (classification), the float score
    (regression) or None (unlabelled split); ``line`` is the row's line in its file."""

    id: str
    text_a: str
    text_b: str | None
    label: int | float | None
    line: int


@dataclass(frozen=True, slots=True)
class Record:
    """One raw row: fields by column name, or the reason it could not be split."""

    line: int
    values: dict[str, Any] | None
    problem: str | None = None


@dataclass
class Table:
    """A file's column names and records (``columns`` is None for JSONL without rows)."""

    source: str
    columns: list[str]
    records: list[Record]
    fingerprint: str | None = None  # set for Hugging Face datasets (their cache fingerprint)


@dataclass
class ParseResult:
    examples: list[Example]
    problems: list[tuple[str, int, str]] = field(default_factory=list)
    labelled: bool = True


def detect_format(path: str | Path, fmt: str = "auto") -> str:
    """``tsv``, ``csv`` or ``jsonl`` for a file: by ``fmt``, the extension, then the header
    (a tab in the first line means tab-separated, as in the CS224N ``.csv`` files)."""
    if fmt == "cs224n":
        return "tsv"
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "tsv"
    with open(path, newline="", **_TEXT) as fh:
        first = fh.readline(MAX_LINE_CHARS)
    return "tsv" if "\t" in first else "csv"


def read_records(path: str | Path, fmt: str = "auto", multiline: bool = False) -> Table:
    """Read a CSV/TSV/JSONL file into records (no checks beyond splitting rows into fields).

    A missing or unreadable file -> :class:`DataError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(not_a_file(path))
    try:
        kind = detect_format(path, fmt)
        if kind == "jsonl":
            return _read_jsonl(path)
        return _read_delimited(path, "\t" if kind == "tsv" else ",", multiline)
    except OSError as e:  # permissions, a disk error, a file removed while read
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from e


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a data file: it does not exist, or it is not a regular
    file (a folder, or a device such as /dev/null, perhaps through a symlink)."""
    if not path.exists():
        return f"data file not found: {path}"
    what = "a folder" if path.is_dir() else "a device or other special file"
    return f"{path} is not a regular file ({what}); name a CSV/TSV/JSONL file"


def _read_delimited(path: Path, delimiter: str, multiline: bool) -> Table:
    opts = dict(delimiter=delimiter, quotechar='"', doublequote=True, strict=True)
    records: list[Record] = []
    with open(path, newline="", **_TEXT) as fh:
        lines = _bounded_lines(fh, path)
        if multiline:
            rows = _stream_rows(lines, opts)
        else:
            rows = _line_rows(lines, opts, delimiter)
        try:
            header_line, header, problem = next(rows)
        except StopIteration:
            raise DataError(f"{path}: the file is empty (no header line)") from None
        if problem is not None or header is None:
            raise DataError(f"{path}:{header_line} cannot read the header: {problem}")
        columns = list(header)
        n = len(columns)
        for line, row, problem in rows:
            if problem is not None:
                records.append(Record(line, None, problem))
            elif len(row) != n:
                what = "missing field" if len(row) < n else "extra field"
                records.append(
                    Record(
                        line,
                        None,
                        f"{what}: expected {n} fields ({_cols(columns)}), found {len(row)}",
                    )
                )
            else:
                records.append(Record(line, dict(zip(columns, row, strict=True))))
    return Table(str(path), columns, records)


def _cols(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns)


def _line_rows(
    fh: Iterable[str], opts: dict, delimiter: str
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    # One csv parse per physical line: broken quoting cannot merge rows.
    for lineno, line in enumerate(fh, start=1):
        if not line.strip("\r\n"):
            continue  # blank lines (a trailing one is common) carry no row
        bad = _not_utf8(line)
        if bad is not None:
            yield lineno, None, bad
            continue
        try:
            row = next(csv.reader((line,), **opts))
        except csv.Error as e:
            msg = str(e)
            if "unexpected end of data" in msg:
                msg = "broken quoting: a quoted field is not closed on its line"
            else:
                msg = f"broken quoting: {msg}"
            yield lineno, None, msg
            continue
        bad = next(
            (c for c in row if "\n" in c or "\r" in c or (delimiter == "\t" and "\t" in c)), None
        )
        if bad is not None:
            yield lineno, None, "broken quoting: a quoted field holds a tab or line break"
            continue
        yield lineno, row, None


def _stream_rows(
    fh: Iterable[str], opts: dict
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    # multiline: quoted fields may span lines; report each record at its first line.
    reader = csv.reader(fh, **opts)
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield last + 1, None, f"broken quoting: {e} (lines {last + 1}-{reader.line_num})"
            if reader.line_num == last:
                return
            last = reader.line_num
            continue
        start, last = last + 1, reader.line_num
        if not row:
            continue
        span = f"in lines {start}-{last}"
        bad = next((b for b in (_not_utf8(f, span) for f in row) if b is not None), None)
        if bad is not None:
            yield start, None, bad
            continue
        yield start, row, None


def _read_jsonl(path: Path) -> Table:
    records: list[Record] = []
    columns: dict[str, None] = {}  # insertion-ordered set
    with open(path, **_TEXT) as fh:
        for lineno, line in enumerate(_bounded_lines(fh, path), start=1):
            if not line.strip():
                continue
            bad = _not_utf8(line)
            if bad is not None:
                records.append(Record(lineno, None, bad))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                records.append(Record(lineno, None, f"invalid JSON: {e.msg} at column {e.colno}"))
                continue
            except (ValueError, RecursionError) as e:  # e.g. a 5000-digit number, deep nesting
                reason = "nested too deeply" if isinstance(e, RecursionError) else _first_line(e)
                records.append(Record(lineno, None, f"invalid JSON: {reason}"))
                continue
            if not isinstance(obj, dict):
                records.append(
                    Record(lineno, None, f"expected a JSON object, found {type(obj).__name__}")
                )
                continue
            bad = next(
                (
                    f"{unicode_problem(v)} in {k!r}"
                    for k, v in obj.items()
                    if isinstance(v, str) and unicode_problem(v)
                ),
                None,
            )
            if bad is not None:
                records.append(Record(lineno, None, bad))
                continue
            columns.update(dict.fromkeys(obj))
            records.append(Record(lineno, obj))
    return Table(str(path), list(columns), records)


def read_hf_dataset(ds_spec: DatasetSpec, split: str) -> Table:
    """Load one split of a Hugging Face dataset as records (line = row index + 1).

    Offline, or when the hub cannot be reached and the dataset is not cached, raises
    :class:`DataError` saying so and how to use local files instead.
    """
    if split not in ds_spec.splits:
        raise DataError(
            f"dataset {ds_spec.name!r} has no split mapped to {split!r}; "
            f"dataset.splits maps {sorted(ds_spec.splits)}"
        )
    hf_split = ds_spec.splits[split]
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DataError("reading a Hugging Face dataset needs the 'datasets' package") from e
    label = f"{ds_spec.name}" + (f"/{ds_spec.config}" if ds_spec.config else "")
    offline = _hf_offline()
    reachable = not offline and hub_reachable()
    try:
        # unreachable hub: answer from the local cache at once instead of retrying for minutes
        with _forced_offline(not reachable):
            ds = datasets.load_dataset(
                ds_spec.name, ds_spec.config, split=hf_split, revision=ds_spec.revision
            )
    except Exception as e:
        if offline:
            why = "the Hugging Face hub is unreachable (offline mode is on: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)"
        elif not reachable:
            why = "the Hugging Face hub is unreachable (no connection to huggingface.co)"
        else:
            why = "the Hugging Face hub could not provide it (a wrong name, config or split?)"
        raise DataError(
            f"cannot load Hugging Face dataset {label!r} split {hf_split!r}: {why}, and it is not "
            f"in the local datasets cache ({type(e).__name__}: {_first_line(e)}).\n"
            f"Use local files instead: export the split once where the hub is reachable, e.g. "
            f"datasets.load_dataset({ds_spec.name!r}, {ds_spec.config!r}, split={hf_split!r})"
            f".to_json('{split}.jsonl'), then give the task files: {{{split}: {split}.jsonl}} "
            f"(CSV/TSV/JSONL, paths relative to the data folder) instead of dataset:."
        ) from e
    columns = list(ds.column_names)
    names: dict[str, list[str]] = {}
    for col, feat in ds.features.items():
        if type(feat).__name__ == "ClassLabel":
            names[col] = list(feat.names)
    records = []
    for i, row in enumerate(ds):
        values = dict(row)
        for col, ns in names.items():
            v = values.get(col)
            if isinstance(v, int) and 0 <= v < len(ns):
                values[col] = ns[v]
        records.append(Record(i + 1, values))
    table = Table(
        f"{label}[{hf_split}]", columns, records, fingerprint=getattr(ds, "_fingerprint", None)
    )
    table.class_names = names  # type: ignore[attr-defined]
    return table


@contextlib.contextmanager
def _forced_offline(on: bool) -> Iterator[None]:
    """Flip the offline switches of datasets and huggingface_hub for one call."""
    if not on:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub

    switches = [
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
        (hub, "HF_HUB_OFFLINE"),
    ]
    saved = [(m, a, getattr(m, a)) for m, a in switches if hasattr(m, a)]
    try:
        for m, a, _ in saved:
            setattr(m, a, True)
        yield
    finally:
        for m, a, v in saved:
            setattr(m, a, v)


def _hf_offline() -> bool:
    on = ("1", "true", "yes", "on")
    return any(
        os.environ.get(v, "").lower() in on for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _text(value: Any) -> str | None:
    if value is None or _nan(value):
        return None
    return value if isinstance(value, str) else str(value)


def parse_examples(
    table: Table,
    spec: TaskSpec,
    split: str,
    labels: list[str] | tuple[str, ...] | None = None,
) -> ParseResult:
    """Check a table's records against the spec; bad rows go to ``problems``, never dropped
    silently. Raises :class:`DataError` for a missing column (not a per-row problem).

    ``labels`` are the class names in id order (classification); regression uses
    ``spec.label_range``. A split whose name starts with "test" may lack the label column.

    In steps: the table's columns (:func:`_columns`), how a label is read
    (:func:`_label_reader`), then each row's texts, label and id, each with what is wrong
    with it; a row with anything wrong, or an id seen before, is a problem.
    """
    src = table.source
    labelled, id_col = _columns(table, spec, split)
    read_label = _label_reader(spec, labels)
    examples: list[Example] = []
    problems: list[tuple[str, int, str]] = []
    seen: dict[str, int] = {}  # id -> the line it was first seen on
    for rec in table.records:
        if rec.values is None:
            problems.append((src, rec.line, rec.problem or "unreadable row"))
            continue
        texts, reasons = _row_texts(rec.values, spec)
        label, why = read_label(rec.values) if labelled else (None, None)
        ident, why_id = _row_id(rec, id_col)
        reasons += [r for r in (why, why_id) if r is not None]
        if not reasons and ident in seen:
            reasons.append(f"duplicate id {ident!r} (first at line {seen[ident]})")
        if reasons:
            problems.append((src, rec.line, "; ".join(reasons)))
            continue
        seen[ident] = rec.line
        second = texts[1] if spec.pair else None
        examples.append(Example(ident, texts[0], second, label, rec.line))
    if not examples:  # skipping would leave nothing: say so whatever on_error says
        raise DataError(
            f"{src}: none of the {len(problems)} row(s) of split {split!r} is usable:\n"
            f"{format_problems(problems)}",
            problems,
        )
    return ParseResult(examples, problems, labelled)


def _columns(table: Table, spec: TaskSpec, split: str) -> tuple[bool, str | None]:
    """(whether the table has labels, its id column or None), refusing a table without rows
    or without a column the spec needs."""
    src, cols = table.source, table.columns
    if not table.records:  # nothing to train, evaluate or predict on
        raise DataError(f"{src}: split {split!r} has no data rows")
    needed = list(spec.text)
    if spec.id is not None:
        needed.append(spec.id)
    for col in needed:
        if col not in cols:
            raise DataError(f"{src}: {_missing_col(col, spec, cols)}")
    labelled = spec.label is not None and spec.label in cols
    if spec.label is not None and not labelled and not split.startswith("test"):
        raise DataError(
            f"{src}: {_missing_col(spec.label, spec, cols)} (only test splits may be unlabelled)"
        )
    id_col = spec.id if spec.id is not None else ("id" if "id" in cols else None)
    return labelled, id_col


def _label_reader(
    spec: TaskSpec, labels: list[str] | tuple[str, ...] | None
) -> Callable[[dict[str, Any]], tuple[int | float | None, str | None]]:
    """How a row's label is read: ``(class id or number, None)``, or ``(None, what is
    wrong)``. Classification needs the label names; regression's numbers must be finite
    and within ``spec.label_range``."""
    col = spec.label
    if spec.kind == "classification":
        if labels is None:
            raise DataError(
                f"task {spec.name!r}: label names are unknown (no labels and no train split)"
            )
        label_ids = {name: i for i, name in enumerate(labels)}

        def value(raw: str) -> tuple[int | None, str | None]:
            c = canonical_label(raw)
            if c not in label_ids:
                return None, f"unknown label {raw!r} in {col!r} (labels: {', '.join(labels)})"
            return label_ids[c], None
    else:
        lo, hi = spec.label_range or (-math.inf, math.inf)

        def value(raw: str) -> tuple[float | None, str | None]:
            try:
                f = float(raw)
            except ValueError:
                return None, f"unparsable label {raw!r} in {col!r} (expected a number)"
            if not math.isfinite(f):
                return None, f"unparsable label {raw!r} in {col!r} (not finite)"
            if not lo <= f <= hi:
                return None, f"label {raw!r} in {col!r} out of range [{lo:g}, {hi:g}]"
            return f, None

    def read(values: dict[str, Any]) -> tuple[int | float | None, str | None]:
        if col not in values:
            return None, f"missing field {col!r}"
        raw = _text(values[col])
        if raw is None or not raw.strip():
            return None, f"missing label in {col!r}"
        return value(raw)

    return read


def _row_texts(values: dict[str, Any], spec: TaskSpec) -> tuple[list[str | None], list[str]]:
    """A row's texts in the spec's order, and what is wrong with them (missing, empty, or a
    JSONL value that is not text)."""
    texts, reasons = [], []
    for col in spec.text:
        if col not in values:
            reasons.append(f"missing field {col!r}")
            texts.append(None)
            continue
        if isinstance(values[col], (list, dict, bool, int, float)) and not _nan(values[col]):
            kind = {list: "a list", dict: "an object", bool: "true/false"}.get(
                type(values[col]), "a number"
            )
            reasons.append(f"{col!r} holds {kind}, not text")
            texts.append(None)
            continue
        t = _text(values[col])
        bad = text_problem(t)
        if bad:
            reasons.append(f"{bad} in {col!r}")
        texts.append(t)
    return texts, reasons


def _row_id(rec: Record, id_col: str | None) -> tuple[str, str | None]:
    """A row's id (its line number where the table has no id column), and what is wrong
    with it."""
    if id_col is None:
        return str(rec.line), None
    ident = _text(rec.values.get(id_col))
    if ident is None or not ident.strip():
        return "", f"empty id in {id_col!r}"
    return ident.strip(), None


def _missing_col(col: str, spec: TaskSpec, columns: list[str]) -> str:
    import difflib

    role = "text" if col in spec.text else ("label" if col == spec.label else "id")
    close = difflib.get_close_matches(col, [c for c in columns if c], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown column {col!r} (the task's {role} column); the file has columns [{_cols(columns)}]{hint}"


def infer_labels(tables: Iterable[Table], spec: TaskSpec) -> list[str]:
    """Label names for a classification task without declared labels: every distinct value
    of the label column, canonicalized and sorted (numerically when all are numbers)."""
    from palbert.tasks.spec import sort_labels

    values: set[str] = set()
    for table in tables:
        class_names = getattr(table, "class_names", {}).get(spec.label)
        if class_names:  # a Hugging Face ClassLabel: its declared order is the truth
            return [canonical_label(n) for n in class_names]
        for rec in table.records:
            if rec.values is None:
                continue
            raw = _text(rec.values.get(spec.label))
            if raw is not None and raw.strip():
                values.add(canonical_label(raw))
    if len(values) < 2:
        raise DataError(
            f"task {spec.name!r}: found {len(values)} distinct label(s) in column {spec.label!r}; "
            "a classification task needs at least two (or declare labels:)"
        )
    return sort_labels(values)
