"""The one error type of palbert.tasks (no torch needed)."""

from __future__ import annotations

from palbert.validate import ConfigError

MAX_LISTED = 20  # how many bad rows an error message lists before saying "... and N more"


class DataError(ConfigError):
    """A task's spec or data is wrong; the message names the file, line or key and the reason.

    ``problems`` holds ``(file, line, reason)`` for every bad row found (all of them, even when
    the message lists only the first ``MAX_LISTED``); it is empty for spec errors.

    >>> try:
    ...     raise DataError("bad", [("a.csv", 3, "empty text")])
    ... except DataError as e:
    ...     e.problems
    [('a.csv', 3, 'empty text')]
    """

    def __init__(self, message: str, problems: list[tuple[str, int, str]] | None = None):
        super().__init__(message)
        self.problems: list[tuple[str, int, str]] = list(problems or [])


def format_problems(problems: list[tuple[str, int, str]], limit: int = MAX_LISTED) -> str:
    """``file:line reason`` lines, capped at ``limit`` with a count of the rest."""
    lines = [f"  {f}:{line} {reason}" for f, line, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)
