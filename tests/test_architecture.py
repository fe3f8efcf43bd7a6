"""The import rule of docs/ARCHITECTURE.md, checked by walking every import in palbert/.

Imports go one way: cli -> training / export -> model -> inference -> taskfile, tasks, layers,
backbones -> the shared bottom modules. No module imports a higher level, even lazily inside a
function, and there is no import cycle. And no function takes more than 8 parameters: a longer
list is a configuration that wants a name (a recipe section, an Order, a Shard). And no list
of allowed values is written twice: each is one ``Literal`` (or one tuple), the rest derive.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "palbert"

# Higher numbers may import lower ones (and their own level's package siblings), never higher.
LEVELS: dict[str, int] = {
    "palbert.errors": 0,
    "palbert.choices": 0,
    "palbert.files": 0,
    "palbert.integrity": 0,
    "palbert.hub": 0,
    "palbert.encoded": 0,
    "palbert.validate": 0,
    "palbert.activations": 0,
    "palbert.masks": 0,
    "palbert.devices": 0,
    "palbert.tasks": 1,
    "palbert.layers": 1,
    "palbert.minbert": 1,
    "palbert.backbones": 2,
    "palbert.taskfile": 2,
    "palbert.recipe": 2,
    "palbert.inference": 3,
    "palbert.model": 4,
    "palbert.training": 5,
    "palbert.export": 6,
    "palbert.serve": 6,
    "palbert.cli": 7,
    "palbert.__main__": 8,
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def level(name: str) -> int | None:
    best = None
    for prefix, lvl in LEVELS.items():
        if name == prefix or name.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, lvl)
    return None if best is None else best[1]


def imports(path: Path) -> set[str]:
    """Every palbert module ``path`` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("palbert")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("palbert"):
            if node.module == "palbert" and [a.name for a in node.names] == ["__version__"]:
                continue  # the version string is the one thing taken from the package root
            # `from palbert.tasks import spec` imports a submodule (and runs the package's
            # __init__, which counts only when something else is taken from it)
            subs = {f"{node.module}.{a.name}" for a in node.names}
            subs = {
                m
                for m in subs
                if (PACKAGE.parent / m.replace(".", "/")).with_suffix(".py").is_file()
            }
            out |= subs
            if len(subs) < len(node.names):
                out.add(node.module)
    return out


def graph() -> dict[str, set[str]]:
    return {
        module_name(p): imports(p)
        for p in PACKAGE.rglob("*.py")
        if module_name(p) != "palbert"  # the package's __init__ re-exports the public API
    }


def test_every_module_has_a_level():
    missing = sorted(m for m in graph() if level(m) is None)
    assert not missing, f"add these modules to LEVELS (and to docs/ARCHITECTURE.md): {missing}"


def test_imports_go_one_way():
    wrong = []
    for mod, deps in graph().items():
        for dep in deps:
            if dep == "palbert":
                wrong.append(f"{mod} imports the package root (import the module it needs)")
            elif level(dep) is not None and level(dep) > level(mod):
                wrong.append(f"{mod} (level {level(mod)}) imports {dep} (level {level(dep)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if seen.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d) :], d]))
            elif d not in seen:
                visit(d, [*path, d])
        seen[m] = 2

    for m in sorted(g):
        if m not in seen:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_function_takes_more_than_eight_parameters():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                n += bool(a.vararg) + bool(a.kwarg)
                if n > 8:
                    long.append(f"{module_name(path)}:{node.lineno} {node.name} takes {n}")
    assert not long, "\n".join(long)


# Literal data, not lists of allowed values: the built-in tasks' mappings
DATA = {"BUILTIN_SPECS"}


def string_lists(tree: ast.AST) -> list[tuple[frozenset[str], int]]:
    """Every tuple, list or set of two or more strings written in the code (a ``Literal[...]``,
    a ``choices=[...]``, an ``in (...)`` test), with its line; ``__all__`` and :data:`DATA`
    left out."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in {"__all__", *DATA} for t in targets):
                skip |= {id(n) for n in ast.walk(node.value)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and id(node) not in skip:
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(values) == len(node.elts) >= 2 and all(isinstance(v, str) for v in values):
                out.append((frozenset(values), node.lineno))
    return out


def test_no_list_of_allowed_values_is_written_twice():
    where: dict[frozenset[str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for values, line in string_lists(ast.parse(path.read_text(encoding="utf-8"))):
            where[values].append(f"{module_name(path)}:{line}")
    twice = [f"{sorted(v)} at {', '.join(w)}" for v, w in where.items() if len(w) > 1]
    assert not twice, (
        "write each list once (a Literal in palbert/choices.py or its owner's module, the tuple "
        "from typing.get_args) and take it from there:\n" + "\n".join(twice)
    )
