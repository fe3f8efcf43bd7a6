"""Writing files so that a crash, a kill or a power cut never leaves half of one.

Every file palbert writes for later use (run folders, checkpoints, task files, token
caches) goes through here: the bytes go to a temporary file in the same folder, which is
flushed and fsynced, then renamed over the target, and the folder is fsynced so the rename
itself survives a power cut::

    atomic_write_text(run_dir / "summary.json", text)
    atomic_write_with(path, lambda tmp: write_to(tmp))  # a writer that wants a path

Weights files go through :func:`palbert.integrity.write_sealed`, which writes this way too.
A run folder's temporaries (``.*.tmp``) left by a killed process are removed when the run
resumes (``palbert.training.runfolder.clean_leftovers``).
"""

from __future__ import annotations

import os
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


__all__ = [
    "atomic_write_text",
    "atomic_write_with",
    "child",
    "file_mode",
    "fsync_dir",
]
