"""``palbert serve PATH...``: task files (or the folder ``palbert export`` wrote) behind HTTP.

::

    palbert serve tasks/ [--backbone DIR] [--host 127.0.0.1] [--port 8000]
    palbert serve sst.safetensors sts.safetensors --port 0 --max-batch-tokens 8192

Every file is loaded onto the one encoder at start (shape and fingerprint checked by
:meth:`PalBert.load_task`); a misfit stops the server before it binds, naming the file.
When models are loaded and one warm-up forward has run it prints, on stdout and alone,
``serving N tasks (a, b) on http://HOST:PORT``. SIGTERM stops admitting (503), finishes the
admitted rows and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from palbert.choices import IMPLS
from palbert.errors import report
from palbert.serve.app import ServeConfig, compile_encoder, create_app
from palbert.serve.batcher import BatchLimits

DEFAULTS = ServeConfig()


def _token(args: argparse.Namespace) -> str | None:
    if args.admin_token_file:
        token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"--admin-token-file {args.admin_token_file} is empty")
        return token
    return os.environ.get("PALBERT_ADMIN_TOKEN") or None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from palbert.devices import parse_device
    from palbert.export import model_for_files, task_files

    device = parse_device(args.device, "--device")  # before any file is loaded
    files = task_files(args.paths)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(2, "no task file (nor a folder of them)", str(missing[0]))
    model = model_for_files(files, args.backbone, args.impl, say=_say)
    for f in files:
        model.load_task(f, force=args.force)  # a misfit is refused here, naming the file
    model.to(device)
    if args.compile:
        compile_encoder(model)  # compiled by the warm-up forward, before the ready line
    config = ServeConfig(
        limits=BatchLimits(
            args.max_batch_tokens, args.max_batch_rows, args.max_wait_ms, args.max_queue
        ),
        max_inputs=args.max_inputs,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        admin_token=_token(args),
        task_dir=args.task_dir or (files[0].parent if files else None),
    )
    app = create_app(model, config)
    server = Draining(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            workers=1,
            log_level=args.log_level,
            lifespan="on",
            timeout_graceful_shutdown=config.drain_timeout_s,
        )  # fmt: skip
    )
    server.state = app.state.palbert
    try:
        asyncio.run(_run(server, model.tasks, args.host))
    except SystemExit:
        if server.started:
            raise
        # uvicorn logs why it could not bind and exits; cli.main prints this line, exit 2
        where = f"{args.host}:{args.port}"
        raise OSError(f"could not listen on {where} (the reason is logged above)") from None
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)


async def _run(server: Any, names: list[str], host: str) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():  # it ended before it started
            await task
            raise SystemExit(1)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(names)} tasks ({', '.join(names)}) on http://{shown}:{port}", flush=True)
    await task


class Draining:
    """uvicorn's Server whose first SIGTERM / SIGINT drains: /ready and new requests answer
    503, the admitted rows finish, then uvicorn shuts down gracefully (exit 0)."""

    def __new__(cls, config: Any):
        import uvicorn

        class _Server(uvicorn.Server):
            state: Any = None

            def handle_exit(self, sig: int, frame: Any) -> None:
                if self.state is None or self.state.draining:
                    return super().handle_exit(sig, frame)  # a second signal: stop now
                self.state.draining = True
                self.state.batcher.draining()
                threading.Thread(target=self._drain, daemon=True).start()

            def _drain(self) -> None:
                deadline = time.monotonic() + self.state.config.drain_timeout_s
                while not self.state.batcher.idle() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.should_exit = True  # not via handle_exit: the signal is not re-raised

        return _Server(config)


def add_commands(sub: Any) -> None:
    """Register ``serve`` on the CLI's subparsers."""
    lim = DEFAULTS.limits
    p = sub.add_parser(
        "serve",
        help="serve task files over HTTP, rows of any tasks in one batch",
        description="Serve exported task files on one encoder over HTTP (docs/serving.md).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="task files, or a folder of them")
    p.add_argument("--backbone", help="encoder folder or name (default: as palbert eval finds it)")
    p.add_argument("--impl", choices=IMPLS, help="backbone implementation")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--force", action="store_true", help="load task files on other weights")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 takes a free port")
    p.add_argument("--max-batch-tokens", type=int, default=lim.max_batch_tokens,
                   help="padded tokens (rows x longest row) per forward")  # fmt: skip
    p.add_argument("--max-batch-rows", type=int, default=lim.max_batch_rows)
    p.add_argument("--max-wait-ms", type=float, default=lim.max_wait_ms,
                   help="how long a row may wait for company")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=lim.max_queue,
                   help="rows admitted and not yet computed; 429 beyond")  # fmt: skip
    p.add_argument("--max-inputs", type=int, default=DEFAULTS.max_inputs,
                   help="inputs per request")  # fmt: skip
    p.add_argument("--max-chars", type=int, default=DEFAULTS.max_chars, help="characters per text")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULTS.max_body_bytes)
    p.add_argument("--admin-token-file", help="enables PUT/DELETE /v1/tasks/{task}")
    p.add_argument("--task-dir", help="where PUT loads files from (default: the served folder)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder's forward")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_serve_cmd)


def _serve_cmd(args: argparse.Namespace) -> int:
    try:
        return _serve(args)
    # any ValueError (an empty token file, a bad limit), not only palbert's own classes
    except ValueError as e:
        report("serve", e)
        return 2


__all__ = ["add_commands"]
