"""The ``palbert`` command: a thin layer over the library.

palbert train recipes/quickstart.yaml [key.sub=value ...] [--resume]
palbert export [RUN_DIR] --task sts [--out DIR] [--dtype float16]
palbert eval / predict ...
palbert serve TASKS_DIR [--port 8000]
palbert plot RUN_DIR
palbert params --backbone minilm --module pal
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from palbert import __version__


def _params(args: argparse.Namespace) -> int:
    from palbert.layers import ModuleConfig
    from palbert.model import PalBert, format_report
    from palbert.tasks import build_task

    model = PalBert.from_pretrained(args.backbone, module=ModuleConfig(kind=args.module))
    for name in args.tasks:
        model.add_task(name, build_task(name).build_head(model.hidden_size))
    print(format_report(model.parameter_report()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palbert",
        description="Multi-task fine-tuning of BERT encoders with Projected Attention Layers.",
    )
    parser.add_argument("--version", action="version", version=f"palbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Each part of palbert registers its own subcommands.
    from palbert import export
    from palbert.backbones import EMBEDDED_BACKBONE
    from palbert.layers import MODULE_KINDS
    from palbert.serve import cli as serve_cli
    from palbert.tasks.spec import BUILTIN_SPECS
    from palbert.training import cli as training_cli

    training_cli.add_commands(sub)
    export.add_commands(sub)
    serve_cli.add_commands(sub)

    p = sub.add_parser("params", help="print the parameter report of a model")
    p.add_argument("--backbone", default=EMBEDDED_BACKBONE, help="name, folder or random:<shape>")
    p.add_argument("--module", default="pal", choices=MODULE_KINDS)
    p.add_argument("--tasks", nargs="+", default=list(BUILTIN_SPECS))
    p.set_defaults(func=_params)
    return parser


class _Output:
    """stdout that outlives its reader: once the pipe it feeds is closed (``palbert export
    ... | head -1``), the rest goes to /dev/null and the command finishes its work, instead
    of dying of a broken pipe between two files."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _closed(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # what is still buffered drains there too
        os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _known_errors() -> tuple[type[Exception], ...]:
    """palbert's errors about what a user gave it (files, recipes, options): each is one line
    at the prompt, whichever command raised it."""
    from palbert.devices import DeviceError
    from palbert.export import ExportError
    from palbert.inference import InputError
    from palbert.integrity import IntegrityError
    from palbert.taskfile import TaskFileError
    from palbert.training.runfolder import RunFolderError
    from palbert.validate import ConfigError

    return (ConfigError, DeviceError, ExportError, InputError, IntegrityError, TaskFileError,
            RunFolderError)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Known errors print one line (2); Ctrl-C prints one
    line (130); a closed stdout is not an error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from palbert.errors import BackboneError, report

    known = _known_errors()
    stdout = sys.stdout
    try:
        sys.stdout.fileno()
        sys.stdout = _Output(stdout)
    except (AttributeError, OSError, ValueError):  # not a real file (captured in tests)
        pass
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BackboneError as e:
        report(args.command, e)
        return 2
    except known as e:  # a command's own handler missed it: still one line, never a traceback
        report(args.command, e)
        return 2
    except KeyboardInterrupt:  # whatever was being written is whole or absent (palbert.files)
        print(f"\npalbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a read-only folder, a file that vanished
        where = f": {e.filename}" if e.filename else ""
        report(args.command, f"{e.strerror or e}{where}")
        return 2
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
