"""The HTTP API of ``palbert serve``: a FastAPI app over one model and its batcher.

::

    from palbert.serve import ServeConfig, create_app
    app = create_app(model)                      # any PalBert with tasks (specs) loaded
    app = create_app(model, ServeConfig(max_inputs=64, admin_token="s3cret"))
    uvicorn.run(app, host="127.0.0.1", port=8000)   # or mount it in your own service

Routes (the contract of issue 20; docs/serving.md has the error table): ``GET /v1/tasks``,
``POST /v1/tasks/{task}/predict``, ``POST /v1/predict``, ``GET /health``, ``/ready``,
``/metrics``; ``PUT`` / ``DELETE /v1/tasks/{task}`` with an admin token. Every non-2xx answer
is ``{"error": {"code", "message"}}``. /docs and /redoc are off (their pages load scripts
from a CDN, blank offline); /openapi.json stays.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from palbert.inference import InputError, check_input, tokenize_inputs
from palbert.serve.batcher import Batcher, BatchLimits, Closed, QueueFull, Unit, assemble
from palbert.serve.batcher import Request as Job
from palbert.serve.metrics import MULTI, UNKNOWN, Metrics
from palbert.tasks.spec import no_such_task

log = logging.getLogger("palbert.serve")
TASK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class ServeConfig:
    """Limits and options of one app; the defaults are ``palbert serve``'s."""

    limits: BatchLimits = field(default_factory=BatchLimits)
    max_inputs: int = 256  # inputs per request (all tasks of a /v1/predict call together)
    max_chars: int = 10_000  # characters per text
    max_body_bytes: int = 1 << 20
    admin_token: str | None = None  # None: PUT / DELETE answer 403
    task_dir: str | Path | None = None  # where PUT takes files from
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0


class ServeError(Exception):
    """An answer other than 2xx: status, code, a message naming the fault."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass
class Served:
    """One served task: its public name, the model's name of its current version, its spec,
    and the requests in flight on that version (a replaced version leaves when they end)."""

    name: str
    internal: str
    spec: Any
    inflight: int = 0
    retired: bool = False


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[StrictStr | tuple[StrictStr, StrictStr]]


class TaskInputs(PredictBody):
    task: StrictStr


class MultiBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[TaskInputs]


class LoadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: StrictStr


async def _parse(request: Request, model: type[BaseModel], state: State) -> Any:
    """The JSON body as ``model``, whatever its Content-Type (curl -d sends a form type)."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise state.reject(
            "bad_request", ServeError(400, "malformed_json", f"the body is not valid JSON: {e}")
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        status, code, message = _validation_message(e.errors(), skip=0)
        raise state.reject("bad_request", ServeError(status, code, message)) from None


class State:
    """Everything an app holds: the model, its batcher, served tasks, metrics, flags."""

    def __init__(self, model: Any, config: ServeConfig) -> None:
        self.model = model
        self.config = config
        self.metrics = Metrics()
        self.batcher = Batcher(model, config.limits, observe=self.metrics.observe)
        self.tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="palbert-tokenize")
        self.tasks: dict[str, Served] = {n: Served(n, n, model.spec(n)) for n in model.tasks}
        self.versions = 0
        self.ready = False
        self.draining = False
        self.metrics.tasks_loaded.set(len(self.tasks))
        for n in self.tasks:
            self.metrics.task_loads.labels(task=n).inc()

    def label(self, task: str) -> str:
        return task if task in self.tasks else UNKNOWN

    def reject(self, reason: str, error: ServeError) -> ServeError:
        self.metrics.rejections.labels(reason=reason).inc()
        return error

    def retire(self, served: Served) -> None:
        served.retired = True
        if served.inflight == 0:
            self.batcher.call(lambda m, name=served.internal: m.remove_task(name))

    def task_dir(self) -> Path:
        if self.config.task_dir is None:
            raise self.reject(
                "bad_request",
                ServeError(403, "no_task_dir", "this server was given no folder to load from"),
            )
        return Path(self.config.task_dir)


def compile_encoder(model: Any) -> None:
    """``palbert serve --compile``: torch.compile the encoder's forward with dynamic shapes, so
    batches of any rows and width share compiled code; the tasks' routes trace inside it (the
    heads stay eager). Answers equal eager's to 1e-5 (tests/test_compile.py)."""
    import torch

    model.backbone.forward = torch.compile(model.backbone.forward, dynamic=True)


def warm_up(model: Any, names: Sequence[str]) -> None:
    """One mixed-task forward over a short input of every task (the first forward is the slow
    one: allocations, lazy initialisation, compilation)."""
    if not names:
        return
    units = []
    for name in names:
        spec = model.spec(name)
        data = tokenize_inputs(model, name, [("warm up", "warm up")] if spec.pair else ["warm up"])
        req = Job(name, spec, data, future=None)  # type: ignore[arg-type]
        units.append(Unit(req, 0, 0, 1, 0.0))
    tensors, _ = assemble(model, units, next(model.parameters()).device)
    import torch

    with torch.inference_mode():
        model(tensors)


# -- checks of a request -------------------------------------------------------------------


def _check_inputs(state: State, served: Served, inputs: list, where: str) -> None:
    cfg = state.config
    if not inputs:
        raise state.reject(
            "bad_request",
            ServeError(422, "empty_inputs", f"{where}: empty; give at least one input"),
        )
    for i, x in enumerate(inputs):
        texts = [x] if isinstance(x, str) else list(x)
        for t in texts:
            if len(t) > cfg.max_chars:
                raise state.reject(
                    "text_too_long",
                    ServeError(
                        413, "text_too_long",
                        f"{where}.{i}: a text of {len(t)} characters, over the limit of "
                        f"{cfg.max_chars} (--max-chars)",
                    ),
                )  # fmt: skip
        try:
            check_input(served.spec, x, i)
        except InputError as e:  # what tokenize_inputs refuses, answered as the client's fault
            raise state.reject(
                "bad_request", ServeError(422, e.code, f"{where}.{i}{e.part}: {e.reason}")
            ) from None


def _check_count(state: State, n: int, where: str) -> None:
    if n > state.config.max_inputs:
        raise state.reject(
            "too_many_inputs",
            ServeError(
                413, "too_many_inputs",
                f"{where}: {n} inputs, over the limit of {state.config.max_inputs} (--max-inputs)",
            ),
        )  # fmt: skip


def _served(state: State, task: str) -> Served:
    served = state.tasks.get(task)
    if served is None:
        raise state.reject(
            "unknown_task",
            ServeError(404, "unknown_task", no_such_task(task, sorted(state.tasks))),
        )
    return served


def _open(state: State) -> None:
    if state.draining:
        raise state.reject("draining", ServeError(503, "draining", "the server is shutting down"))
    if not state.ready:
        raise state.reject("not_ready", ServeError(503, "not_ready", "the models are loading"))


def _admit(state: State, rows: int) -> None:
    try:
        state.batcher.admit(rows)
    except QueueFull as e:
        raise state.reject(
            "queue_full",
            ServeError(
                429, "queue_full", str(e), headers={"Retry-After": str(state.config.retry_after_s)}
            ),
        ) from None
    except Closed as e:
        raise state.reject("draining", ServeError(503, "draining", str(e))) from None


async def _run(state: State, request: Request, parts: list[tuple[Served, list]]) -> list[list]:
    """Admitted parts (task, inputs): tokenized off the event loop, queued, answered; a client
    that leaves has its rows dropped before they are computed."""
    loop = asyncio.get_running_loop()
    total = sum(len(inputs) for _, inputs in parts)
    _admit(state, total)
    for served, _ in parts:
        served.inflight += 1
    futures: list[asyncio.Future] = []
    queued = 0
    try:
        for served, inputs in parts:
            data = await loop.run_in_executor(
                state.tokenize_pool, tokenize_inputs, state.model, served.internal, inputs
            )
            fut = loop.create_future()
            state.batcher.submit(Job(served.internal, served.spec, data, fut))
            futures.append(fut)
            queued += len(inputs)
        answers = asyncio.gather(*futures)
        gone = asyncio.ensure_future(_disconnected(request))
        await asyncio.wait([answers, gone], return_when=asyncio.FIRST_COMPLETED)
        if not answers.done():
            answers.cancel()  # cancels every future: the batcher drops their rows
            raise ServeError(499, "client_gone", "the client disconnected")
        gone.cancel()
        return answers.result()
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    finally:
        if queued < total:  # rows admitted but never queued (a tokenizer error)
            state.batcher.release(total - queued)
        for served, _ in parts:
            served.inflight -= 1
            if served.retired and served.inflight == 0:
                state.retire(served)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- the app ---------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: Sequence[Any], skip: int = 1) -> tuple[int, str, str]:
    """(status, code, message) of pydantic's first error, the message naming its field path
    (``skip`` drops FastAPI's leading "body")."""
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return 400, "malformed_json", f"the body is not valid JSON: {first.get('msg')}"
    loc = [
        str(p) for p in first["loc"][skip:] if not (isinstance(p, str) and ("[" in p or p == "str"))
    ]
    path = ".".join(loc) or "body"
    if "inputs" in loc and loc[-1] != "inputs" and first["type"] != "missing":
        return 422, "invalid_input", f"{path}: expected a sentence (a string) or a pair of strings"
    return 422, "invalid_body", f"{path}: {first['msg']}"


class BodyLimit:
    """Pure ASGI middleware: a body over ``limit`` bytes answers 413 before anything reads
    it (by Content-Length, or by counting a streamed body)."""

    def __init__(self, app: Any, limit: int, state: State) -> None:
        self.app, self.limit, self.state = app, limit, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        size = headers.get(b"content-length")
        too_big = size is not None and size.isdigit() and int(size) > self.limit
        chunks, total = [], 0
        if not too_big:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                total += len(chunks[-1])
                more = message.get("more_body", False)
                if total > self.limit:
                    too_big = True
                    break
        if too_big:
            self.state.metrics.rejections.labels(reason="body_too_large").inc()
            response = _error(
                413, "body_too_large",
                f"the body is over the limit of {self.limit} bytes (--max-body-bytes)",
            )  # fmt: skip
            return await response(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_app(model: Any, config: ServeConfig | None = None, warmup: bool = True) -> FastAPI:
    """The ASGI app serving ``model``'s tasks (each needs a spec: tasks loaded from files, or
    added with ``spec=``). Runs one warm-up forward here unless ``warmup=False``, starts the
    inference thread, and is ready then; its lifespan's shutdown drains the batcher."""
    config = config or ServeConfig()
    model.eval()
    state = State(model, config)
    if warmup:
        warm_up(model, model.tasks)
    state.batcher.start()
    state.ready = True

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.draining = True
        await asyncio.get_running_loop().run_in_executor(
            None, state.batcher.close, config.drain_timeout_s
        )
        state.tokenize_pool.shutdown(wait=False)

    app = FastAPI(
        title="palbert serve", docs_url=None, redoc_url=None, lifespan=lifespan,
        description="One encoder, many tasks: PAL task files behind one mixed-task batcher.",
    )  # fmt: skip
    app.state.palbert = state
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, state=state)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError):
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        status, code, message = _validation_message(exc.errors())
        state.metrics.rejections.labels(reason="bad_request").inc()
        return _error(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error answering %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal server error (logged by the server)")

    def counted(label: str, start: float, status: int) -> None:
        state.metrics.requests.labels(task=label, status=str(status)).inc()
        state.metrics.request_seconds.labels(task=label).observe(time.perf_counter() - start)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if state.draining:
            return _error(503, "draining", "the server is shutting down")
        if not state.ready:
            return _error(503, "not_ready", "the models are loading")
        return {"status": "ready", "tasks": len(state.tasks)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/tasks")
    async def tasks() -> dict:
        out = []
        for name, s in state.tasks.items():
            labels = list(s.spec.labels) if s.spec.kind == "classification" else None
            out.append(
                {"name": name, "kind": s.spec.kind, "pair": bool(s.spec.pair),
                 "labels": labels, "max_length": s.spec.max_length}
            )  # fmt: skip
        return {"tasks": out}

    @app.post("/v1/tasks/{task}/predict")
    async def predict_one(task: str, request: Request) -> dict:
        start, label, status = time.perf_counter(), state.label(task), 500
        try:
            _open(state)
            body = await _parse(request, PredictBody, state)
            served = _served(state, task)
            _check_count(state, len(body.inputs), "inputs")
            _check_inputs(state, served, body.inputs, "inputs")
            (preds,) = await _run(state, request, [(served, body.inputs)])
            status = 200
            return {"task": task, "predictions": preds}
        except ServeError as e:
            status = e.status
            raise
        finally:
            counted(label, start, status)

    @app.post("/v1/predict")
    async def predict_many(request: Request) -> dict:
        start, status, label = time.perf_counter(), 500, UNKNOWN
        try:
            _open(state)
            body = await _parse(request, MultiBody, state)
            names = {r.task for r in body.requests}
            label = MULTI if len(names) > 1 else state.label(next(iter(names), UNKNOWN))
            if not body.requests:
                raise state.reject(
                    "bad_request",
                    ServeError(422, "empty_requests", "requests: empty; give at least one"),
                )
            parts = []
            for k, r in enumerate(body.requests):
                served = _served(state, r.task)
                _check_inputs(state, served, r.inputs, f"requests.{k}.inputs")
                parts.append((served, r.inputs))
            _check_count(state, sum(len(r.inputs) for r in body.requests), "requests")
            preds = await _run(state, request, parts)
            status = 200
            return {
                "results": [
                    {"task": r.task, "predictions": p}
                    for r, p in zip(body.requests, preds, strict=True)
                ]
            }
        except ServeError as e:
            status = e.status
            raise
        finally:
            counted(label, start, status)

    def admin(request: Request) -> None:
        token = config.admin_token
        if not token:
            raise ServeError(
                403, "management_off",
                "task management is off: start the server with --admin-token-file FILE or "
                "PALBERT_ADMIN_TOKEN",
            )  # fmt: skip
        header = request.headers.get("authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ServeError(
                401, "unauthorized", "Authorization: Bearer TOKEN is missing or wrong",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    @app.put("/v1/tasks/{task}")
    async def load(task: str, request: Request) -> dict:
        admin(request)
        body = await _parse(request, LoadBody, state)
        if not TASK_NAME.fullmatch(task):
            raise ServeError(
                422, "bad_task_name", f"task name {task!r}: use 1-64 of A-Z a-z 0-9 _ -"
            )
        path = resolve_file(state.task_dir(), body.file)
        internal = task
        while internal in state.model.tasks:  # a new version beside the old (its own name)
            internal = f"{task}--v{state.versions}"
            state.versions += 1
        fut = asyncio.get_running_loop().create_future()
        start = time.perf_counter()
        state.batcher.call(lambda m: m.load_task(path, name=internal), fut)
        try:
            await fut
        except Exception as e:  # the file's fault: the old version keeps serving
            state.metrics.load_failures.inc()
            state.metrics.load_seconds.observe(time.perf_counter() - start)
            raise ServeError(
                422, "load_failed", f"file {body.file!r}: {e}; task {task!r} is unchanged"
            ) from None
        state.metrics.load_seconds.observe(time.perf_counter() - start)
        old = state.tasks.get(task)
        state.tasks[task] = Served(task, internal, state.model.spec(internal))
        if old is not None:
            state.retire(old)
        state.metrics.task_loads.labels(task=task).inc()
        state.metrics.tasks_loaded.set(len(state.tasks))
        return {"task": task, "file": body.file, "replaced": old is not None}

    @app.delete("/v1/tasks/{task}")
    async def unload(task: str, request: Request) -> dict:
        admin(request)
        served = _served(state, task)
        del state.tasks[task]
        state.retire(served)
        state.metrics.tasks_loaded.set(len(state.tasks))
        return {"task": task, "unloaded": True}

    return app


def resolve_file(root: Path, name: str) -> Path:
    """``name`` inside ``root``: no absolute path, no ``..``, no symlink that leads out."""

    def refuse(why: str) -> ServeError:
        return ServeError(400, "bad_file", f"file {name!r}: {why}; name a file inside {root}")

    pure = PurePosixPath(name.replace("\\", "/"))
    if not name or pure.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise refuse("an absolute path")
    if ".." in pure.parts:
        raise refuse("'..' is not allowed")
    base = root.resolve()
    path = (base / pure).resolve()
    if not path.is_relative_to(base):
        raise refuse("it leads out of the folder (a symlink)")
    return path


__all__ = [
    "ServeConfig",
    "ServeError",
    "compile_encoder",
    "create_app",
    "resolve_file",
    "warm_up",
]
