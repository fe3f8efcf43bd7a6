"""Weights files that tell when they are damaged: a sha256 in the safetensors header.

Every safetensors file palbert writes (task files, ``best.safetensors``, the checkpoint's
``last/*.safetensors``, an exported backbone's ``model.safetensors``) is *sealed*: its header
metadata carries ``palbert.sha256``, the hash of the header itself (as canonical JSON,
without that one key: tensor names, dtypes, shapes, offsets and every metadata value) and of
the data section after it. A changed byte anywhere that changes what the file means fails
the check; a missing ``palbert.sha256`` in a file palbert wrote is damage, not "unchecked"::

    write_sealed(path, tensors, {"palbert.format_version": "2"})  # atomic, fsynced
    tensors, meta = read_sealed(path)       # IntegrityError naming the file when damaged
    meta = check_sealed(path)               # the same check, without loading the tensors

Files are hashed by streaming them, so a checkpoint of a large encoder is never held twice
in memory. Nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from palbert.files import atomic_write_with

PREFIX = "palbert."
HASH_KEY = PREFIX + "sha256"
_PLACEHOLDER = "0" * 64  # the digest's length, so filling it in moves no byte of the file
# Bounds checked before a header is parsed: a task file's header is a few KB, a bert-large
# checkpoint's optimizer state about 1,500 tensors and 300 KB; far more means damage or a
# hostile file, refused before it costs time or memory.
MAX_HEADER = 16 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_JSON_DEPTH = 32  # of a JSON value in the header's metadata (specs nest 3 or 4 deep)
_CHUNK = 1 << 24


class IntegrityError(ValueError):
    """A weights file is missing, not safetensors, or damaged; the message names the file."""


# -- the header ---------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):  # readers could disagree on which one counts
        raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)!r}")
    return dict(pairs)


def read_header(path: str | os.PathLike, where: str | None = None) -> tuple[int, dict[str, Any]]:
    """(header length, header JSON) of a safetensors file; :class:`IntegrityError` for a
    missing, unreadable, truncated or non-safetensors file. ``where`` names the file in
    messages (default: its path)."""
    path = Path(path)
    where = where or str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = os.fstat(fh.fileno()).st_size
            if len(head) < 8:
                raise IntegrityError(
                    f"{where} is damaged or not a safetensors file (only {size} bytes)"
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise IntegrityError(
                    f"{where} is damaged or not palbert's: its header would be {n:,} bytes "
                    f"(at most {MAX_HEADER:,} are read)"
                )
            if 8 + n > size:
                raise IntegrityError(
                    f"{where} is damaged or not a safetensors file (header of {n} bytes, "
                    f"file of {size} bytes)"
                )
            raw = fh.read(n)
    except FileNotFoundError:
        raise IntegrityError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise IntegrityError(f"{where} is a folder, not a safetensors file") from None
    except OSError as e:
        raise IntegrityError(f"{where} cannot be read: {e}") from e
    count = raw.count(b'"data_offsets"')  # an upper bound of the tensors, before parsing
    if count > MAX_TENSORS:
        raise IntegrityError(
            f"{where} is damaged or not palbert's: its header lists {count:,} tensors "
            f"(at most {MAX_TENSORS:,} are read)"
        )
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        _check_depth(header, 3 + MAX_JSON_DEPTH)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise IntegrityError(
            f"{where} is damaged: its header is not valid JSON ({reason})"
        ) from None
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise IntegrityError(f"{where} is damaged: its metadata is not a map of strings")
    return n, header


def _check_depth(value: Any, limit: int) -> None:
    """ValueError when ``value`` (parsed JSON) nests deeper than ``limit`` (walked without
    recursion, so no depth can overflow the stack here)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > limit:
                raise ValueError(f"nested deeper than {limit} levels")
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def load_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON value from a file's header (bounded in size by :data:`MAX_HEADER`) with a
    nesting bound; every failure is an :class:`IntegrityError` naming ``where``."""
    try:
        value = json.loads(text)
        _check_depth(value, max_depth)
    except RecursionError:
        raise IntegrityError(f"{where} is not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise IntegrityError(f"{where} is not valid JSON ({e})") from None
    return value


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or inf, whatever the file's seal: a model built on them
    predicts NaN scores or one label for every row without any other sign."""
    for key, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise IntegrityError(
                f"{where} holds non-finite values (NaN or inf) in tensor {key}; these weights "
                "cannot be used (train again, or export from an earlier checkpoint)"
            )


def metadata(path: str | os.PathLike, where: str | None = None) -> dict[str, str]:
    """The string metadata of a safetensors file's header (not checked against the hash)."""
    return dict(read_header(path, where)[1].get("__metadata__", {}))


def is_palbert_file(meta: dict[str, str]) -> bool:
    """Whether a header says palbert wrote the file (any ``palbert.*`` metadata key)."""
    return any(k.startswith(PREFIX) for k in meta)


def _canonical(header: dict[str, Any]) -> bytes:
    """The header as the hash sees it: without the hash, keys sorted, no spaces."""
    header = dict(header)
    if "__metadata__" in header:
        header["__metadata__"] = {k: v for k, v in header["__metadata__"].items() if k != HASH_KEY}
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(fh: Any, n: int, header: dict[str, Any] | None) -> str:
    """sha256 of the canonical header (None: leave it out) and the data section."""
    h = hashlib.sha256(_canonical(header) if header is not None else b"")
    fh.seek(8 + n)
    while chunk := fh.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


# -- writing ------------------------------------------------------------------------------


def save_sealed(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict[str, str]
) -> Path:
    """Write a sealed safetensors file at ``path`` in place (use :func:`write_sealed` for an
    atomic write): written with a placeholder hash, hashed back from the file, filled in."""
    from safetensors.torch import save_file

    path = Path(path)
    if HASH_KEY in meta:
        raise ValueError(f"{HASH_KEY} is set by save_sealed, not by its caller")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={**meta, HASH_KEY: _PLACEHOLDER})
    n, header = read_header(path)
    with open(path, "rb+") as fh:
        digest = _digest(fh, n, header)
        fh.seek(8)
        raw = fh.read(n)
        slot = raw.find(f'"{HASH_KEY}":"{_PLACEHOLDER}"'.encode())
        if slot < 0:  # safetensors writes compact JSON; anything else is a bug here
            raise RuntimeError(f"cannot find the {HASH_KEY} placeholder in {path}'s header")
        fh.seek(8 + slot + len(HASH_KEY) + 4)  # past `"palbert.sha256":"`
        fh.write(digest.encode())
    return path


def write_sealed(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, str]
) -> Path:
    """Write a sealed safetensors file atomically (see :mod:`palbert.files`)."""
    return atomic_write_with(path, lambda tmp: save_sealed(tensors, tmp, meta))


# -- reading ------------------------------------------------------------------------------


def check_sealed(
    path: str | os.PathLike,
    where: str | None = None,
    *,
    required: bool = True,
    data_only: bool = False,
    header: tuple[int, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Verify a sealed file; return its metadata.

    ``required``: the caller knows palbert wrote the file (a run's weights), so a missing
    hash is damage; otherwise a file without any ``palbert.*`` key (a Hugging Face model) is
    returned unchecked, and one with them must carry a valid hash. ``data_only``: the hash
    covers only the data section (task files of format 1). ``header``: what
    :func:`read_header` returned for this file, so that it is not read twice.
    """
    path = Path(path)
    where = where or str(path)
    n, header = header or read_header(path, where)
    meta = header.get("__metadata__", {})
    expected = meta.get(HASH_KEY)
    if expected is None:
        if required or is_palbert_file(meta):
            raise IntegrityError(f"{where} is damaged: its header lacks {HASH_KEY}")
        return dict(meta)
    try:
        with open(path, "rb") as fh:
            actual = _digest(fh, n, None if data_only else header)
    except OSError as e:
        raise IntegrityError(f"{where} cannot be read: {e}") from e
    if actual != expected:
        raise IntegrityError(
            f"{where} is damaged: its contents do not match the {HASH_KEY} in its header"
        )
    return dict(meta)


def read_sealed(
    path: str | os.PathLike,
    where: str | None = None,
    *,
    required: bool = True,
    data_only: bool = False,
    header: tuple[int, dict[str, Any]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file checked by :func:`check_sealed` (same arguments); weights
    holding NaN or inf are refused (:func:`check_finite`)."""
    from safetensors.torch import load_file

    where = where or str(path)
    meta = check_sealed(path, where, required=required, data_only=data_only, header=header)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a damaged layout
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise IntegrityError(f"{where} is damaged: {reason}") from None
    check_finite(tensors, where)
    return tensors, meta


__all__ = [
    "HASH_KEY",
    "MAX_HEADER",
    "MAX_JSON_DEPTH",
    "MAX_TENSORS",
    "IntegrityError",
    "check_finite",
    "check_sealed",
    "is_palbert_file",
    "load_json",
    "metadata",
    "read_header",
    "read_sealed",
    "save_sealed",
    "write_sealed",
]
