"""Errors shared by several parts of palbert (kept here so no part imports another for them)."""

from __future__ import annotations


class BackboneError(RuntimeError):
    """A backbone could not be found or loaded; the message says what to do."""


__all__ = ["BackboneError"]
