"""Errors shared by several parts of palbert (kept here so no part imports another for them)."""

from __future__ import annotations

import sys


class BackboneError(RuntimeError):
    """A backbone could not be found or loaded; the message says what to do."""


def report(command: str, message: object) -> None:
    """The one line every command prints for an error it stops on, on stderr:
    ``palbert COMMAND: error: MESSAGE`` (the exit status is the caller's).

    >>> report("eval", "no such task 'stss'")  # doctest: +SKIP
    palbert eval: error: no such task 'stss'
    """
    print(f"palbert {command}: error: {message}", file=sys.stderr)


__all__ = ["BackboneError", "report"]
