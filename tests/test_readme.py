"""README.md and docs/*.md run as written (sybil reads their fenced blocks).

Every fenced block is a test, run in document order in one working folder (a temporary
copy of ``recipes/``), so what one block writes (a run, exported files) is there for the
next, as for a user who runs them one after the other:

- ``python`` blocks run in one namespace per document;
- ``bash`` blocks: every line is a ``palbert ...`` command (``# ...`` comments dropped), run
  in this process through :func:`palbert.cli.main`; each must exit 0. Any other command fails
  its block unless sybil's ``<!-- skip: next "why" -->`` stands before it;
- a ``bash`` block that starts with ``palbert serve`` starts that server (a subprocess, its
  ``--port`` made 0 so it takes a free port), checks its ready line against the block's
  ``# prints:`` comment, then runs the block's ``curl`` lines against it (each must answer
  2xx with JSON), then stops it with SIGTERM (it must exit 0);
- ``console`` blocks: ``$ palbert ...`` lines and the output palbert prints (stdout and
  stderr); ``...`` stands for any text (doctest's ELLIPSIS). The output must match, so the
  messages quoted in the README cannot drift;
- ``<!-- given: NAME -->`` before a block prepares a situation a user reaches by hand
  (:data:`GIVENS`: an interrupted run, a run another process is training).

The shrink: what differs from a user's run, none of it something a block shows.

- The data folder (``$PALBERT_DATA_DIR``) is the first 24 rows of each CS224N file, and
  quora-train.csv whole: its two broken rows are what the README's bad-rows example shows.
- Every ``palbert train`` gets ``train.max_steps=2 eval.every=2`` appended.
- The hub is offline with an empty cache: a ``palbert train`` whose backbone needs the hub
  (``bert-base-uncased``) must stop with palbert's offline message, which it prints only
  after the recipe and every override were checked.
- ``RUN_DIR`` is the newest run folder under ``checkpoints/``.
- A served block's port is a free one: ``localhost:PORT`` in its curl lines is rewritten.

About a minute on 2 idle CPU cores: one tiny quickstart run serves the blocks after it.
"""

from __future__ import annotations

import doctest
import io
import os
import re
import shlex
import shutil
import sys
import warnings
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
from sybil import Document, Example, Region
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

from tests.conftest import DATA_DIR, ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHRINK = ["train.max_steps=2", "eval.every=2"]
TINY_ROWS = 24
WHOLE = {"quora-train.csv"}  # its bad rows are the README's example
OFFLINE = "is not in the Hugging Face cache and the hub cannot be reached"
LANGUAGES = {"python", "bash", "console"}

pytestmark = pytest.mark.data


# -- running palbert as a user would -----------------------------------------------------


def _show_warning(message, category, filename, lineno, file=None, line=None):
    # Python's own display, written to the sys.stderr of the moment (the captured one)
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_palbert(argv: list[str]) -> tuple[int, str]:
    """``palbert ARGV`` in this process: (exit status, stdout and stderr as printed)."""
    from palbert.cli import main

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out), warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest, which records warnings instead
        warnings.showwarning = _show_warning
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors, `palbert train: unknown option`
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = 1 if isinstance(e.code, str) else int(e.code or 0)
    return code, out.getvalue()


class Workspace:
    """The working folder, data and environment every block of the documents runs in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"
        self.data = root / "data"
        self.data.mkdir(parents=True)
        for f in sorted(DATA_DIR.glob("*.csv")):
            if f.name in WHOLE:
                shutil.copy(f, self.data / f.name)
            else:
                with open(f, encoding="utf-8", newline="") as src:
                    head = [line for _, line in zip(range(TINY_ROWS + 1), src, strict=False)]
                (self.data / f.name).write_text("".join(head), encoding="utf-8", newline="")
        self.work.mkdir()
        shutil.copytree(ROOT / "recipes", self.work / "recipes")
        (root / "hub").mkdir()

    @contextmanager
    def active(self):
        """cwd, data folder, token cache and an offline hub with an empty cache."""
        import huggingface_hub.constants as hub

        env = {
            "PALBERT_DATA_DIR": str(self.data),
            "PALBERT_CACHE_DIR": str(self.root / "cache"),
            "HF_HUB_OFFLINE": "1",
        }
        with ExitStack() as stack:
            stack.enter_context(mock.patch.dict(os.environ, env))
            stack.enter_context(mock.patch.object(hub, "HF_HUB_CACHE", str(self.root / "hub")))
            stack.enter_context(mock.patch.object(hub, "HF_HUB_OFFLINE", True))
            old = Path.cwd()
            os.chdir(self.work)
            stack.callback(os.chdir, old)
            yield

    def runs(self) -> list[Path]:
        root = self.work / "checkpoints"
        return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name)

    def argv(self, line: str) -> list[str]:
        """A documented command line as palbert receives it here (see the module docstring)."""
        argv = shlex.split(line, comments=True)
        if not argv or argv[0] != "palbert":
            raise ValueError(
                f"`{line}` is not a palbert command: the tests run only those; mark the "
                'block with <!-- skip: next "why it cannot run" --> if it must stay'
            )
        argv = argv[1:]
        if "RUN_DIR" in argv:
            newest = str(self.runs()[-1].relative_to(self.work)) if self.runs() else "RUN_DIR"
            argv = [newest if a == "RUN_DIR" else a for a in argv]
        if argv[:1] == ["train"]:
            argv += SHRINK
        return argv

    def needs_hub(self, argv: list[str]) -> bool:
        """Whether a train command's backbone is a hub name (after its overrides)."""
        from palbert.backbones import EMBEDDED_ALIASES, RANDOM_PREFIX
        from palbert.recipe import load_recipe

        if argv[:1] != ["train"]:
            return False
        name = load_recipe(argv[1], [a for a in argv[2:] if "=" in a]).backbone.name
        local = name.lower() in EMBEDDED_ALIASES or name.startswith(RANDOM_PREFIX)
        return not (local or Path(name).is_dir())


# -- situations a user reaches by hand -------------------------------------------------------


def _interrupted(ws: Workspace) -> Path:
    """An unfinished quickstart run with a checkpoint after step 1 (as if killed then)."""
    for run in reversed(ws.runs() if (ws.work / "checkpoints").is_dir() else []):
        if run.name.startswith("quickstart-") and not (run / "COMPLETE").exists():
            return run
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    recipe = load_recipe("recipes/quickstart.yaml", [*SHRINK, "train.save_every=1"])
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingInterrupted):
            train(recipe, stop_at_step=1, progress=False)
    return ws.runs()[-1]


@contextmanager
def _interrupted_run(ws: Workspace):
    _interrupted(ws)
    yield


@contextmanager
def _run_being_trained(ws: Workspace):
    """An interrupted run, locked as a training process locks it (held here, with our pid)."""
    import fcntl

    run = _interrupted(ws)
    with open(run / "lock", "w", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


GIVENS = {"an interrupted run": _interrupted_run, "a run being trained": _run_being_trained}


# -- the evaluators ------------------------------------------------------------------------


class Blocks:
    """Evaluators for one workspace; ``given`` applies to the next block only."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.given: str | None = None

    def parsers(self) -> list:
        return [
            PythonCodeBlockParser(),
            CodeBlockParser("bash", self.bash),
            CodeBlockParser("console", self.console),
            SkipParser(),
            self.given_parser,
        ]

    def given_parser(self, document: Document):
        lexer = DirectiveInHTMLCommentLexer("given", arguments=".+?")
        for region in lexer(document):
            name = region.lexemes["arguments"].strip()
            if name not in GIVENS:
                raise ValueError(f"<!-- given: {name} -->: known are {sorted(GIVENS)}")
            yield Region(region.start, region.end, name, self.remember)

    def remember(self, example: Example) -> None:
        self.given = example.parsed

    @contextmanager
    def situation(self):
        name, self.given = self.given, None
        if name is None:
            yield
        else:
            with GIVENS[name](self.ws):
                yield

    def bash(self, example: Example) -> str | None:
        lines = [ln for ln in example.parsed.splitlines() if ln.strip()]
        if lines and lines[0].startswith("palbert serve "):
            return serve_block(self.ws, lines)
        with self.situation():
            for line in example.parsed.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                argv = self.ws.argv(line)
                code, out = run_palbert(argv)
                if code == 0:
                    continue
                if self.ws.needs_hub(argv) and code == 2 and OFFLINE in out:
                    continue  # refused offline after every check of the command line
                return f"`{line}` exited with {code}:\n{out}"
        return None

    def console(self, example: Example) -> str | None:
        checker = doctest.OutputChecker()
        with self.situation():
            for line, want in _sessions(example.parsed):
                code, got = run_palbert(self.ws.argv(line))
                if not checker.check_output(want, got, doctest.ELLIPSIS):
                    return f"`$ {line}` (exit {code}) printed:\n{got}\nthe document says:\n{want}"
        return None


def serve_block(ws: Workspace, lines: list[str]) -> str | None:
    """A ``palbert serve`` line, then ``curl`` lines against that server (module docstring)."""
    import json
    import signal
    import subprocess

    import httpx

    line, *calls = lines
    command, _, comment = line.partition("#")
    argv = ws.argv(command)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = "0"
    else:
        argv += ["--port", "0"]
    with ws.active():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "palbert", *argv], cwd=ws.work, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        ready = proc.stdout.readline()  # blocks until ready, or the process ends
        m = re.search(r"http://127\.0\.0\.1:(\d+)", ready)
        if m is None:
            proc.kill()
            return f"`{line}` printed no ready line:\n{ready}{proc.communicate()[1][-3000:]}"
        port = m.group(1)
        shown = comment.strip().removeprefix("prints:").strip()
        if shown and ready.strip() != shown.replace(":8000", f":{port}"):
            return f"`{line}` printed:\n{ready}the document says:\n{shown}"
        for call in calls:
            args = shlex.split(call.replace("localhost:8000", f"127.0.0.1:{port}"))
            if args[:1] != ["curl"]:
                return f"`{call}`: a served block holds curl lines only"
            data = args[args.index("-d") + 1] if "-d" in args else None
            url = next(a for a in args if a.startswith("127.0.0.1:"))
            r = httpx.request("POST" if data else "GET", f"http://{url}", content=data, timeout=60)
            if not 200 <= r.status_code < 300:
                return f"`{call}` answered {r.status_code}: {r.text}"
            json.loads(r.text)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
    return None if code == 0 else f"`{line}` exited with {code} after SIGTERM"


def _sessions(source: str) -> list[tuple[str, str]]:
    """``$ command`` lines of a console block, each with the output shown under it."""
    sessions: list[tuple[str, list[str]]] = []
    for line in source.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:], []))
        elif sessions:
            sessions[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"console block: output before any `$ command`: {line!r}")
    return [(cmd, "\n".join(out).strip("\n") + "\n") for cmd, out in sessions]


# -- the tests -------------------------------------------------------------------------------


class Runner:
    """Runs the documents' blocks in order (README.md first, then docs/*.md, which go on from
    what the README's blocks made); a test asking for block k first runs those before it that
    have not run, in its document and in the documents before it (so ``-k`` selects a single
    block and still works)."""

    def __init__(self, root: Path) -> None:
        self.ws = Workspace(root)
        self.blocks = Blocks(self.ws)
        self.docs = {p: Document.parse(str(p), *self.blocks.parsers()) for p in DOCS}
        self.done: dict[Path, int] = {p: 0 for p in DOCS}

    def run(self, path: Path, index: int) -> None:
        for before in DOCS[: DOCS.index(path)]:
            self._catch_up(before, len(list(self.docs[before].examples())))
        self._catch_up(path, index)
        examples = list(self.docs[path].examples())
        with self.ws.active():
            self.done[path] = index + 1
            examples[index].evaluate()

    def _catch_up(self, path: Path, index: int) -> None:
        """Run the blocks of ``path`` before ``index`` that have not run."""
        examples = list(self.docs[path].examples())
        with self.ws.active():
            while self.done[path] < index:
                with _quiet():
                    examples[self.done[path]].evaluate()
                self.done[path] += 1


@contextmanager
def _quiet():
    try:
        yield
    except Exception:  # reported by that block's own test
        pass


def _blocks() -> list:
    params = []
    for path in DOCS:
        doc = Document.parse(str(path), *Blocks(None).parsers())  # type: ignore[arg-type]
        for i, example in enumerate(doc.examples()):
            kind = example.region.lexemes.get("arguments") or "marker"
            params.append(pytest.param(path, i, id=f"{path.name}:{example.line}-{kind}"))
    return params


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("readme"))


@pytest.mark.parametrize(("path", "index"), _blocks())
def test_block(runner: Runner, path: Path, index: int) -> None:
    runner.run(path, index)


def _fences(text: str) -> list[tuple[int, str, str]]:
    """(line, language, source) of each fenced block."""
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in re.finditer(r"^```(\S*)\n(.*?)^```$", text, re.M | re.S)
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_block_is_run_or_says_why_not(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for line, language, _ in _fences(text):
        assert language in LANGUAGES, f"{path.name}:{line}: ```{language} blocks are not run"
    for m in re.finditer(r"^[ \t]*<!--\s*skip:(.*?)-->", text, re.S | re.M):  # as sybil reads
        line = text.count("\n", 0, m.start()) + 1
        assert re.fullmatch(r'\s*next\s+"[^"]{8,}"\s*', m.group(1)), (
            f'{path.name}:{line}: a skipped block says why: <!-- skip: next "reason" -->'
        )


def test_a_command_with_an_option_that_does_not_exist_fails(runner: Runner, tmp_path) -> None:
    """Each block of a copy of a document (README.md, docs/*.md) whose first palbert command
    gains ``--no-such-option`` fails through the same collector, before running anything."""
    checked = 0
    fences = [(doc, *f) for doc in DOCS for f in _fences(doc.read_text(encoding="utf-8"))]
    for path, _, language, source in fences:
        text = path.read_text(encoding="utf-8")
        lines = [ln for ln in source.splitlines() if re.match(r"(\$ )?palbert \w", ln)]
        if language not in ("bash", "console") or not lines:
            continue
        if re.search(r'skip: next "[^"]*" -->\n```\w+\n' + re.escape(source), text):
            continue
        first = lines[0]
        bad = first.split(" #")[0].rstrip() + " --no-such-option"
        copy = tmp_path / f"{path.stem}-{checked}.md"
        copy.write_text(text.replace(source, source.replace(first, bad, 1), 1), encoding="utf-8")
        doc = Document.parse(str(copy), *runner.blocks.parsers())
        (example,) = [e for e in doc.examples() if bad in e.parsed]
        refused = "(unrecognized arguments: |unknown option )--no-such-option"
        with runner.ws.active(), pytest.raises(Exception, match=refused):
            example.evaluate()
        checked += 1
    assert checked >= 5
