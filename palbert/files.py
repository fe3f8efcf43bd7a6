"""Writing files so that a crash, a kill or a power cut never leaves half of one.

Every file palbert writes (run folders, checkpoints, task files, exported encoders, token
caches, predictions, plots, ``eval --json``) goes through here: the bytes go to a temporary
file in the same folder, which is flushed and fsynced, then renamed over the target, and the
folder is fsynced so the rename itself survives a power cut. The rename replaces whatever is
at the target, a symlink included: a link planted there is replaced, never written through::

    atomic_write_text(run_dir / "summary.json", text)
    atomic_write_with(path, lambda tmp: write_to(tmp))  # a writer that wants a path
    write_dir_atomically(run_dir / "last", fill)        # a whole folder, swapped in at once
    write_files_into(folder, lambda tmp: obj.save_pretrained(tmp))  # file by file
    append_line(run_dir / "metrics.jsonl", line)        # a log: one write per line

Weights files go through :func:`palbert.integrity.write_sealed`, which writes this way too.
``tests/test_files.py`` walks palbert's source and fails on any write outside these
functions' callbacks. Temporaries (``.*.tmp`` files, ``.*.tmp-*`` folders) left by a killed
process are removed by :func:`remove_temporaries` when the next command writes there (a
resumed run, ``palbert export``, ``palbert predict``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode a new file gets under the current umask (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """Persist a folder's entries (a rename into it); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def child(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name``, refusing a name that would land anywhere else (a path separator,
    ``..``, a newline or another control character): file names built from task names or
    file headers must stay inside the folder the user gave."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )
    if bad:
        raise ValueError(f"refusing to write {name!r}: a file name may not leave {folder}")
    return Path(folder) / name


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it over
    ``path``. The new file gets the umask's mode (mkstemp's 0600 is for secrets, not
    results); on any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary folder with ``write(tmp)``, then swap it in for ``final``: a kill at
    any moment leaves the previous folder (``.<name>.old`` while the swap is under way) or
    the new one, never half of one."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{TMP_SUFFIX}-", dir=final.parent))
    old = final.parent / f".{final.name}.old"
    try:
        write(tmp)
        for f in tmp.iterdir():  # the contents reach the disk before the rename does
            _fsync_file(f)
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)  # a directory cannot be renamed over a non-empty one
            fsync_dir(final.parent)  # the renames reach the disk in the order they happen
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_files_into(folder: str | os.PathLike, write: Callable[[Path], None]) -> list[Path]:
    """Call ``write(tmp)`` to fill a temporary folder inside ``folder`` (a library's
    ``save_pretrained``), then move each file it wrote into ``folder`` by an atomic rename:
    each file lands whole or not at all, and a symlink at a destination is replaced, not
    followed. Returns the paths written, in name order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".files{TMP_SUFFIX}-", dir=folder))
    try:
        write(tmp)
        written = []
        for f in sorted(tmp.iterdir()):
            if not f.is_file() or f.is_symlink():
                raise ValueError(f"refusing to move {f.name}: not a plain file")
            _fsync_file(f)
            os.chmod(f, file_mode())
            os.replace(f, folder / f.name)
            written.append(folder / f.name)
        fsync_dir(folder)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log (``metrics.jsonl``) with a single ``write``: a kill leaves at
    most a partial last line, which readers skip. A symlink at ``path`` is refused, not
    followed (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, file_mode())
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary of this module (``.*.tmp`` or ``.*.tmp-*``)."""
    name = path.name
    return name.startswith(".") and (name.endswith(TMP_SUFFIX) or f"{TMP_SUFFIX}-" in name)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed process left directly in ``folder`` (call it only
    where this process is the one writing); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if not is_temporary(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


__all__ = [
    "TMP_SUFFIX",
    "append_line",
    "atomic_write_text",
    "atomic_write_with",
    "child",
    "file_mode",
    "fsync_dir",
    "is_temporary",
    "remove_temporaries",
    "write_dir_atomically",
    "write_files_into",
]
