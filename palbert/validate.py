"""One way to check configuration: a mapping becomes a dataclass, checked against the
dataclass's type hints and the rules declared on its fields. Every error names the key path
and, where known, where the value came from (a YAML line, a command-line override).

::

    @dataclass
    class Train:
        epochs: int = field(default=3, metadata=rules(at_least(1)))
        mode: Literal["full", "frozen"] = "full"

    build(Train, {"epochs": 0})      # ConfigError: epochs must be >= 1, not 0
    build(Train, {"mode": "froze"})  # mode must be one of full, frozen, not 'froze'
                                     #   (did you mean 'frozen'?)
    build(Train, {"epoch": 3})       # unknown key epoch; did you mean 'epochs'? (known here: ...)

Types understood: bool, int (a bool is not an int), float (ints and strings such as "1e-5"
too, finite only), str, ``Literal`` (choices, with the closest one suggested), ``X | None``
and other unions, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[K, V]`` and nested
dataclasses. Dataclasses call :func:`check` in ``__post_init__`` so that objects built in code
obey the same rules; checks across fields come after it, raised with :meth:`Where.fail`.

This module imports nothing from palbert: everything else may use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

RULES = "palbert.rules"  # the field-metadata key that holds a field's rules


class ConfigError(ValueError):
    """A configuration value is wrong. ``path`` is the key path (relative to the
    :class:`Where` it was raised under) and ``problem`` what is wrong with it; the message
    joins both with the value's origin."""

    path: tuple = ()
    problem: str | None = None


# -- where a value came from ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Where:
    """Names key paths in messages: ``train.lr (recipe.yaml line 12)``.

    prefix:    the path of the checked value inside its document (``("tasks", 1)``).
    title:     what the value is when it is not part of a document (``"task 'sts'"``);
               written before the key path.
    file:      the document's name; ``lines`` maps full key paths to 1-based lines in it.
    overrides: full key path -> the ``key=value`` text of the command-line override that set it.
    error:     the error class raised (a subclass of :class:`ConfigError`).
    """

    prefix: tuple = ()
    title: str | None = None
    file: str | None = None
    lines: Mapping[tuple, int] = dataclasses.field(default_factory=dict)
    overrides: Mapping[tuple, str] = dataclasses.field(default_factory=dict)
    error: type[ConfigError] = ConfigError

    def at(self, *parts: Any) -> Where:
        """The same origin, for a value further down the document."""
        return dataclasses.replace(self, prefix=self.prefix + parts)

    def key(self, path: tuple = ()) -> str:
        """The dotted key path, without the origin: ``tasks.1.head.pooling``."""
        return ".".join(str(p) for p in self.prefix + tuple(path))

    def __call__(self, path: tuple = ()) -> str:
        """The key path with its origin, for the start of a message."""
        full = self.prefix + tuple(path)
        dotted = self.key(path)
        name = f"{self.title}.{dotted}" if self.title and dotted else (self.title or dotted)
        name = name or "value"
        for o, text in self.overrides.items():
            if full[: len(o)] == tuple(o):
                return f"{name} (command-line override {text})"
        for n in range(len(full), 0, -1):
            if full[:n] in self.lines:
                return f"{name} ({self.file or 'recipe'} line {self.lines[full[:n]]})"
        return name

    def fail(self, path: tuple, problem: str) -> ConfigError:
        """The error for ``problem`` at ``path``: "``<key> (<origin>) <problem>``"; a problem
        that starts with punctuation (": ...") attaches to the key."""
        sep = "" if problem[:1] in ":;," else " "
        e = self.error(f"{self(path)}{sep}{problem}")
        e.path, e.problem = tuple(path), problem
        return e


# -- rules declared on fields -----------------------------------------------------------------

Check = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


def rules(*checks: Check, listify: bool = False) -> dict[str, Any]:
    """Field metadata: ``field(default=None, metadata=rules(at_least(1)))``.

    The checks run on the converted value unless it is None. ``listify``: a single value
    where a list is expected stands for a list of one (``text: review``)."""
    return {RULES: {"checks": checks, "listify": listify}}


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {lo}, not {v!r}"


def above(lo: float) -> Check:
    return lambda v: None if v > lo else f"must be > {lo}, not {v!r}"


def at_most(hi: float) -> Check:
    return lambda v: None if v <= hi else f"must be <= {hi}, not {v!r}"


def in_range(lo: float, hi: float) -> Check:
    """lo <= v < hi."""
    return lambda v: None if lo <= v < hi else f"must be in [{lo}, {hi}), not {v!r}"


def one_of(choices: tuple | list) -> Check:
    """A choice from a table kept elsewhere (a ``Literal`` type does this for fixed lists)."""

    def problem(v: Any) -> str | None:
        return None if v in choices and not isinstance(v, bool) else _choice_problem(v, choices)

    return problem


def matches(pattern: str, described: str) -> Check:
    """The whole value matches the regular expression ``pattern``; ``described`` says in
    words what is allowed (it follows "must be")."""
    rx = re.compile(pattern)
    return lambda v: None if rx.fullmatch(v) else f"must be {described}, not {v!r}"


def non_empty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


class each:  # noqa: N801 - reads as a rule: rules(each(at_least(1)))
    """Apply ``checks`` to every item of a list (the error names the item: ``hidden.0``)."""

    def __init__(self, *checks: Check) -> None:
        self.checks = checks


def _choice_problem(value: Any, choices: tuple | list) -> str:
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"must be one of {', '.join(names)}, not {value!r}{hint}"


def _run_checks(value: Any, meta: Mapping, path: tuple, where: Where) -> None:
    if value is None:
        return
    for c in meta.get("checks", ()):
        if isinstance(c, each):
            for i, item in enumerate(value):
                for ic in c.checks:
                    problem = ic(item)
                    if problem:
                        raise where.fail(path + (i,), problem)
            continue
        problem = c(value)
        if problem:
            raise where.fail(path, problem)


# -- types ------------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """How an annotation reads in a message ("int", "a list of [str]", "'epoch' or int")."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(
            ", ".join(repr(c) for c in typing.get_args(a))
            if typing.get_origin(a) is Literal
            else type_name(a)
            for a in typing.get_args(tp)
        )
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(tp) and args:
            return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
        return f"a list of [{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp) or tp is dict or origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(
    value: Any, tp: Any, path: tuple = (), where: Where | None = None, meta: Mapping | None = None
) -> Any:
    """``value`` checked against the annotation ``tp`` (and the field's ``rules``), converted
    where the type says so (lists to tuples, ints to floats, mappings to dataclasses)."""
    where = where or Where()
    meta = (meta or {}).get(RULES, {})
    out = _convert(value, tp, path, where, meta)
    _run_checks(out, meta, path, where)
    return out


def _convert(value: Any, tp: Any, path: tuple, where: Where, meta: Mapping) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(typing.get_args(tp)):
                return None
            raise where.fail(path, f"must be {type_name(tp)}, not None")
        errors = []
        for a in args:
            try:
                return _convert(value, a, path, where, meta)
            except ConfigError as e:
                errors.append(e)
        if len(args) == 1:  # `X | None`: X's own, more precise message
            raise errors[0]
        hint = ""
        choices = [c for a in args if typing.get_origin(a) is Literal for c in typing.get_args(a)]
        if isinstance(value, str) and choices:
            close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise where.fail(path, f"must be {type_name(tp)}, not {value!r}{hint}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise where.fail(path, _choice_problem(value, choices))
    if origin in (tuple, list):
        if meta.get("listify") and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise where.fail(path, f"must be {type_name(tp)}, not {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise where.fail(path, f"must be {type_name(tp)}, not {value!r}")
            return tuple(
                _convert(v, a, path + (i,), where, {})
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        out = [_convert(v, item, path + (i,), where, {}) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value  # it checked itself when it was made
        return build(tp, value, path, where)
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise where.fail(path, f"must be a mapping, not {value!r}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {
            _convert(k, k_tp, path, where, {}): _convert(v, v_tp, path + (k,), where, {})
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML reads 1e-5 as a string (it wants 1.0e-5): accept what float() accepts
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise where.fail(path, f"must be a finite number, not {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{where(path)}: cannot check values of type {tp!r}")
    raise where.fail(path, f"must be {type_name(tp)}, not {value!r}")


# -- dataclasses --------------------------------------------------------------------------------


def unknown_key(
    key: Any,
    known: list[str],
    path: tuple,
    where: Where,
    elsewhere: Mapping[str, list[str]] | None = None,
) -> ConfigError:
    """The error for a key that is not one of ``known``, with the closest known key; keys of
    other sections (``elsewhere``: section -> keys) are suggested when none here is close."""
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {where.key(path[:-1] + (close[0],))!r}?" if close else ""
    for section, names in (elsewhere or {}).items():
        if hint:
            break
        close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.8)
        if close:
            hint = f"; did you mean '{section}.{close[0]}'?"
    e = where.error(f"unknown key {where(path)}{hint} (known here: {', '.join(known)})")
    e.path, e.problem = tuple(path), "is not a known key"
    return e


def fields_of(
    cls: type,
    raw: Any,
    path: tuple = (),
    where: Where | None = None,
    elsewhere: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The keys present in the mapping ``raw``, each converted for its field of ``cls``;
    unknown keys and missing required fields are errors. (``None`` counts as ``{}``.)"""
    where = where or Where()
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise where.fail(path, f"must be a mapping of keys, not {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    out = {}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key(key, list(fields), path + (key,), where, elsewhere)
        out[key] = convert(value, hints[key], path + (key,), where, fields[key].metadata)
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in out:
            raise where.fail(path + (name,), "is required")
    return out


def build(
    cls: type,
    raw: Any,
    path: tuple = (),
    where: Where | None = None,
    elsewhere: Mapping[str, list[str]] | None = None,
) -> Any:
    """An instance of the dataclass ``cls`` from the mapping ``raw`` (see the module doc).
    Errors raised while the instance checks itself are named under ``where`` too."""
    where = where or Where()
    kw = fields_of(cls, raw, path, where, elsewhere)
    try:
        return cls(**kw)
    except ConfigError as e:
        if e.problem is None:
            raise
        raise where.fail(path + e.path, e.problem) from None


def check(obj: Any, where: Where | None = None) -> None:
    """Check every field of the dataclass instance ``obj`` against its type and rules,
    converting in place (lists to tuples, mappings to dataclasses); call from
    ``__post_init__``. Works on frozen dataclasses."""
    where = where or Where()
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out = convert(value, hints[f.name], (f.name,), where, f.metadata)
        if out is not value:
            object.__setattr__(obj, f.name, out)


__all__ = [
    "ConfigError",
    "Where",
    "above",
    "at_least",
    "at_most",
    "build",
    "check",
    "convert",
    "each",
    "fields_of",
    "in_range",
    "matches",
    "non_empty",
    "one_of",
    "rules",
    "type_name",
    "unknown_key",
]
