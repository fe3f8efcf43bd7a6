"""Every file palbert writes goes through palbert/files.py: a walk of the source finds any
write outside it, and the writer itself replaces a symlink at its destination instead of
writing through it."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from palbert.files import (
    append_line,
    atomic_write_text,
    atomic_write_with,
    remove_temporaries,
    write_dir_atomically,
    write_files_into,
)

PACKAGE = Path(__file__).resolve().parents[1] / "palbert"
WRITER = "palbert/files.py"
# the calls of files.py that hand a temporary path to a callback that fills it
ATOMIC = {"atomic_write_with", "write_dir_atomically", "write_files_into"}
# calls that write a file (by any object: torch.save, np.save, fig.savefig, ...)
WRITES = {
    "write_text", "write_bytes", "save_file", "save_pretrained", "savefig", "save", "savez",
    "savez_compressed", "savetxt", "to_json_file", "touch", "copyfile", "copy", "copy2",
    "copytree", "move", "SummaryWriter",
}  # fmt: skip
# where a write in place is the point, with why
IN_PLACE = {
    ("palbert/training/runfolder.py", "hold"): "the run's lock file: held open, holds only a pid",
    ("palbert/training/runlog.py", "__init__"): "TensorBoard's event files (its own writer)",
    ("palbert/cli.py", "_closed"): "/dev/null put under a closed stdout, not a file",
}


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _write_mode(call: ast.Call) -> bool:
    args = call.args[1:2] if _name(call.func) == "open" and isinstance(call.func, ast.Name) else []
    if isinstance(call.func, ast.Attribute):  # Path.open(mode) / os.open(path, flags)
        if isinstance(call.func.value, ast.Name) and call.func.value.id == "os":
            return True
        args = call.args[:1]
    args += [k.value for k in call.keywords if k.arg == "mode"]
    return any(
        isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax+")
        for a in args
    )


def is_write(call: ast.Call) -> bool:
    name = _name(call.func)
    return name in WRITES or (name == "open" and _write_mode(call))


class Module:
    def __init__(self, path: Path) -> None:
        self.rel = str(path.relative_to(PACKAGE.parent))
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for c in ast.iter_child_nodes(node):
                self.parent[c] = node

    def enclosing(self, node: ast.AST) -> ast.AST | None:
        node = self.parent.get(node)
        while node is not None and not isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        ):
            node = self.parent.get(node)
        return node

    def calls(self) -> list[ast.Call]:
        return [n for n in ast.walk(self.tree) if isinstance(n, ast.Call)]


def _handed_to_writer(mod: Module, fn: ast.AST) -> bool:
    """A lambda passed to an ATOMIC call, or a def passed to one by name in its scope."""
    if isinstance(fn, ast.Lambda):
        call = mod.parent.get(fn)
        return isinstance(call, ast.Call) and _name(call.func) in ATOMIC and fn in call.args
    scope = mod.parent.get(fn)
    return any(
        _name(c.func) in ATOMIC and any(isinstance(a, ast.Name) and a.id == fn.name for a in c.args)
        for c in ast.walk(scope)
        if isinstance(c, ast.Call)
    )


def violations() -> list[str]:
    mods = [Module(p) for p in sorted(PACKAGE.rglob("*.py"))]
    # functions that write to a path their caller gives (integrity.save_sealed): allowed when
    # every caller is itself a writer's callback, found by a fixpoint over the call sites
    helpers: set[str] = set()

    def allowed(mod: Module, fn: ast.AST | None) -> bool:
        if fn is None:
            return False
        if _handed_to_writer(mod, fn):
            return True
        if isinstance(fn, ast.Lambda):
            return allowed(mod, mod.enclosing(fn))
        return fn.name in helpers or (mod.rel, fn.name) in IN_PLACE

    writers = {  # (module, function) of every write outside files.py
        (m.rel, fn.name)
        for m in mods
        if m.rel != WRITER
        for c in m.calls()
        if is_write(c)
        for fn in [m.enclosing(c)]
        if isinstance(fn, ast.FunctionDef)
    }
    changed = True
    while changed:
        changed = False
        for _, name in writers:
            if name in helpers:
                continue
            sites = [(m, c) for m in mods for c in m.calls() if _name(c.func) == name]
            if sites and all(allowed(m, m.enclosing(c)) for m, c in sites):
                helpers.add(name)
                changed = True
    return [
        f"{m.rel}:{c.lineno}: {ast.unparse(c.func)}(...) writes outside palbert/files.py"
        for m in mods
        if m.rel != WRITER
        for c in m.calls()
        if is_write(c) and not allowed(m, m.enclosing(c))
    ]


def test_no_file_is_written_outside_the_atomic_writer():
    found = violations()
    assert not found, "\n".join(found)


def test_the_walk_finds_direct_writes(tmp_path, monkeypatch):
    """The check itself: each kind of direct write is caught, a writer's callback is not."""
    src = tmp_path / "palbert"
    src.mkdir()
    (src / "files.py").write_text("def atomic_write_with(path, write): pass\n")
    (src / "bad.py").write_text(
        "from pathlib import Path\n"
        "def a(p): open(p, 'w').write('x')\n"
        "def b(p): Path(p).write_text('x')\n"
        "def c(model, p): model.save_pretrained(p)\n"
        "def d(t, p):\n    import torch\n    torch.save(t, p)\n"
        "def e(p): atomic_write_with(p, lambda tmp: open(tmp, 'wb').write(b'x'))\n"
        "def f(p):\n    def fill(tmp):\n        Path(tmp).write_text('x')\n"
        "    atomic_write_with(p, fill)\n"
        "def g(p): return open(p, 'rb').read()\n"
    )
    monkeypatch.setitem(globals(), "PACKAGE", src)
    found = violations()
    assert sorted(x.split(":")[1] for x in found) == ["2", "3", "4", "7"], found


# -- the writer ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_symlink_at_the_destination_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("a.json", "config.json"):
        (folder / name).symlink_to(outside)
    atomic_write_text(folder / "a.json", "new")
    write_files_into(folder, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert outside.read_text() == "keep me"
    for name, text in (("a.json", "new"), ("config.json", "{}")):
        assert not (folder / name).is_symlink() and (folder / name).read_text() == text
    (folder / "log").symlink_to(outside)
    with pytest.raises(OSError):
        append_line(folder / "log", "x")
    assert outside.read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "config.json", "log"]


def test_temporaries_of_every_writer_are_named_for_the_cleanup(tmp_path, monkeypatch):
    """A kill inside any writer leaves only names remove_temporaries knows, and it removes
    exactly those."""
    seen = []

    def die(tmp):
        seen.append(tmp.name)
        raise KeyboardInterrupt  # stands for the kill: what is left must be cleanable

    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: None)  # as if killed: nothing tidied
    monkeypatch.setattr(Path, "unlink", lambda *a, **k: None)
    for write in (
        lambda: atomic_write_with(tmp_path / "x.txt", die),
        lambda: write_dir_atomically(tmp_path / "last", die),
        lambda: write_files_into(tmp_path, die),
    ):
        with pytest.raises(KeyboardInterrupt):
            write()
    monkeypatch.undo()
    (tmp_path / "keep.txt").write_text("mine")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "keep.txt")
    assert left == sorted(seen) and len(left) == 3
    assert sorted(p.name for p in remove_temporaries(tmp_path)) == left
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
