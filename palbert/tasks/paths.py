"""Where the data folder is when nobody says: one rule for ``palbert train``, ``eval`` and
``predict`` (no torch needed).

::

    default_data_dir()                                   # Path('/work/shared/data/cs224n')
    default_data_dir(["sts-dev.csv"])                    # the first folder that holds it

``$PALBERT_DATA_DIR`` when set, else ``../shared/data/cs224n`` from the current folder, else
from palbert's source checkout. A recipe's ``data_dir`` key comes before all of these (see
:func:`palbert.recipe.resolve_data_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DATA_ENV = "PALBERT_DATA_DIR"
SHARED_DATA = Path("..") / "shared" / "data" / "cs224n"


def data_dir_candidates() -> list[tuple[Path, str]]:
    """The folders looked at, in order, each with why (for messages)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return [(Path(env).expanduser(), f"${DATA_ENV}")]
    source = Path(__file__).resolve().parents[2]
    return [
        (Path.cwd() / SHARED_DATA, f"{SHARED_DATA.as_posix()} from the current folder"),
        (source / SHARED_DATA, f"{SHARED_DATA.as_posix()} from palbert's source folder"),
    ]


def default_data_dir(needed_files: Iterable[str] | None = None) -> Path | None:
    """The default data folder (resolved), or None where no candidate exists.

    With ``needed_files``, the first candidate holding all of them wins; when none holds
    them all, the first existing one (the caller reports what it lacks)."""
    found = [p for p, _ in data_dir_candidates() if p.is_dir()]
    needed = list(needed_files or ())
    for p in found:
        if all((p / f).is_file() for f in needed):
            return p.resolve()
    return found[0].resolve() if found else None


__all__ = ["DATA_ENV", "data_dir_candidates", "default_data_dir"]
