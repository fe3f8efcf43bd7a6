"""The serving bench of issue 20: ``palbert serve`` under load, against what users run instead.

::

    python -m bench.serve --tasks /work/qs/tasks          # full run (~8-12 min on 2 cores)
    python -m bench.serve --quick                          # smoke test, ~1-2 min
    python -m bench.serve table bench/results/serve-STAMP.json   # the README table

``--tasks DIR`` is a folder ``palbert export --task all --out DIR`` wrote (its ``backbone/``
is used, as ``palbert serve`` does); without it the bench writes untrained SST, Quora (bi)
and STS (bi) task files on MiniLM into a temp folder (numbers of speed only). Rows are drawn,
seeded, from the tasks' dev sets (palbert's own readers). Servers are ``python -m palbert
serve ... --port 0`` subprocesses on 127.0.0.1, always stopped. The load generator is httpx
(async) in this process: on 2 cores it competes with the server, so its CPU time is recorded
beside the server's. Ratios come from turns taken side by side (A, B, A, B...), each pair of
turns a ratio; the median of those and a 95% bootstrap interval are reported.

Measurements (keys of the JSON's ``results``):
  offline_vs_serve   saturated mixed three-task rows/s / PalBert.predict on the same rows
  mixed_vs_single    mixed traffic / each task alone (harmonic mean, same request size)
  many_tasks         1, 3, 16, 64 loaded tasks (copies of SST with other random PAL weights),
                     traffic over all: rows/s against one task; RSS per task added by PUT to
                     one server / the task file's size
  batcher            16 clients of one-row requests: default batcher / --max-batch-rows 1
  per_process        3 servers of one task each (each its own encoder) / one server of 3
  peft               palbert's mixed-task forward / PEFT LoRA adapter_names= (offline)
  compile            (with --compile) the compiled encoder / eager, offline, same batch
  latency            open-loop Poisson at 50% and 90% of saturation; 3x: 429 share, p99
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
BASES = ("sst", "quora", "sts")
# untrained stand-ins for the quickstart's files, with its heads (recipes/quickstart.yaml)
DEV_SPECS = {
    "sst": {"name": "sst", "head": {"type": "mlp", "hidden": [256], "pooling": "mean"}},
    "quora": {
        "name": "quora",
        "encoding": "bi",
        "head": {"type": "mlp", "hidden": [256], "pooling": "mean"},
    },
    "sts": {"name": "sts", "head": {"type": "cosine", "pooling": "mean", "cosine_scale": "relu"}},
}
GOALS = {  # figure -> (comparison, bound), from issue 20
    "serve / offline": (">=", 0.8),
    "mixed / single": (">=", 0.9),
    "N tasks / 1 task": (">=", 0.8),
    "RSS per task / file": ("<=", 1.2),
    "batcher / max-batch-rows 1": (">=", 3.0),
}


# -- sizes ----------------------------------------------------------------------------------


def sizes(quick: bool) -> SimpleNamespace:
    """Every bound of a run: turns, seconds, requests."""
    if quick:
        return SimpleNamespace(
            rounds=2, turn_s=1.0, clients=8, request_rows=8, counts=[1, 3, 16],
            open_s=2.0, peft_turns=4, max_requests=2000, rows_per_task=64,
        )  # fmt: skip
    return SimpleNamespace(
        rounds=3, turn_s=6.0, clients=16, request_rows=8, counts=[1, 3, 16, 64],
        open_s=12.0, peft_turns=20, max_requests=20000, rows_per_task=400,
    )  # fmt: skip


# -- task files and rows --------------------------------------------------------------------


def make_dev_tasks(out: Path, backbone: str = "minilm", max_length: int = 64) -> Path:
    """Untrained SST, Quora and STS task files (random PAL weights) on ``backbone``."""
    import torch

    from palbert import ModuleConfig, PalBert
    from palbert.tasks import build_task

    torch.manual_seed(0)
    model = PalBert.from_pretrained(backbone, module=ModuleConfig(kind="pal", init="normal"))
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in DEV_SPECS.items():
        task = build_task(spec)
        model.add_task(
            name, task.build_head(model.hidden_size), spec=task.resolved_spec(max_length)
        )
        model.save_task(name, out / f"{name}.safetensors")
    return out


def backbone_of(task_dir: Path) -> str | None:
    """The encoder ``palbert serve`` would use for a folder: its backbone/ when there is one."""
    beside = task_dir / "backbone"
    return str(beside) if (beside / "config.json").is_file() else None


def load_model(files: list[Path], backbone: str | None):
    from palbert.export import model_for_files

    model = model_for_files(files, backbone, say=lambda _m: None)
    for f in files:
        model.load_task(f)
    return model


def write_copies(model, base: str, n: int, out: Path, seed: int = 0) -> list[Path]:
    """``n`` copies of task ``base`` with other random PAL weights (and heads), written by
    save_task so they pass load_task's fingerprint check."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    src = out / f"_{base}.safetensors"
    model.save_task(base, src)
    paths = []
    for k in range(n):
        name = f"{base}_copy{k}"
        model.load_task(src, name=name)
        gen = torch.Generator().manual_seed(seed + k)
        with torch.no_grad():
            for p in model.task(name).module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)
        paths.append(model.save_task(name, out / f"{name}.safetensors"))
        model.remove_task(name)
    src.unlink()
    return paths


def draw_rows(task_names: list[str], data_dir: Path, n: int, seed: int) -> dict[str, list]:
    """``n`` dev inputs of each base task (sentences, or [a, b] pairs), seeded."""
    from palbert.tasks import build_task

    rows = {}
    for i, name in enumerate(task_names):
        examples = build_task(name, data_dir=data_dir).read("dev", on_error="skip")
        picked = random.Random(seed + i).sample(examples, min(n, len(examples)))
        rows[name] = [e.text_a if e.text_b is None else [e.text_a, e.text_b] for e in picked]
    return rows


def plan(tasks: list[str], rows: dict[str, list], base: dict[str, str], size: int, n: int):
    """``n`` requests of ``size`` inputs, tasks taking turns; each request's inputs are the
    next slice of its base task's rows (wrapping)."""
    out, at = [], dict.fromkeys(rows, 0)
    for i in range(n):
        task = tasks[i % len(tasks)]
        pool, k = rows[base[task]], at[base[task]]
        out.append((task, [pool[(k + j) % len(pool)] for j in range(size)]))
        at[base[task]] = (k + size) % len(pool)
    return out


# -- servers --------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Server:
    """``python -m palbert serve PATHS --port 0``: started, its URL read from the line it
    prints when ready, and always stopped (SIGTERM, then SIGKILL after ``stop_s``)."""

    def __init__(self, paths: list[Path], backbone: str | None, extra=(), start_s=300.0):
        cmd = [sys.executable, "-m", "palbert", "serve", *map(str, paths), "--port", "0"]
        cmd += ["--host", "127.0.0.1", "--device", "cpu"] + (
            ["--backbone", backbone] if backbone else []
        )
        self.cmd = cmd + list(extra)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True
        ).start()
        deadline = time.monotonic() + start_s
        self.url = None
        while self.url is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line.startswith("serving ") and " on http://" in line:
                self.url = line.rsplit(" on ", 1)[1].strip()
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                self.log.seek(0)
                raise RuntimeError(
                    f"{' '.join(self.cmd)} did not start:\n{self.log.read()[-3000:]}"
                )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, stop_s: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- load -----------------------------------------------------------------------------------


def percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] * 1e3

    return {"p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99)}


async def _post(client, url: str, task: str, inputs: list, lat: list, status: dict) -> int:
    """One predict request; its rows when answered in full, else 0."""
    t0 = time.perf_counter()
    try:
        r = await client.post(f"{url}/v1/tasks/{task}/predict", json={"inputs": inputs})
        code = r.status_code
    except Exception as e:  # noqa: BLE001 - counted by kind, the run goes on
        code = type(e).__name__
    status[str(code)] = status.get(str(code), 0) + 1
    if code != 200:
        return 0
    preds = r.json()["predictions"]
    if len(preds) != len(inputs):
        raise RuntimeError(f"{url}: {len(inputs)} inputs of {task} got {len(preds)} predictions")
    lat.append(time.perf_counter() - t0)
    return len(inputs)


def _client(clients: int):
    import httpx

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    return httpx.AsyncClient(limits=limits, timeout=60.0, trust_env=False)


def closed_loop(route, requests: list, clients: int, seconds: float, pids: list[int]) -> dict:
    """``clients`` concurrent clients, each sending the next request when its last is
    answered, for ``seconds`` or until ``requests`` run out. ``route(task)`` -> server URL."""

    async def go() -> dict:
        lat, status, done, nxt = [], {}, [0], [0]
        t_end = time.perf_counter() + seconds

        async def one(client) -> None:
            while time.perf_counter() < t_end and nxt[0] < len(requests):
                task, inputs = requests[nxt[0]]
                nxt[0] += 1
                # awaited first: `done[0] += await ...` reads done[0] before the await and
                # loses the other clients' rows
                got = await _post(client, route(task), task, inputs, lat, status)
                done[0] += got

        async with _client(clients) as client:
            t0 = time.perf_counter()
            await asyncio.gather(*(one(client) for _ in range(clients)))
            elapsed = time.perf_counter() - t0
        return {"rows": done[0], "seconds": elapsed, "status": status, **percentiles(lat)}

    return _metered(go, pids)


def open_loop(route, requests: list, rate: float, seconds: float, pids: list[int], seed=0) -> dict:
    """Poisson arrivals at ``rate`` requests/s for ``seconds`` (at most len(requests)), each
    request's latency counted from its scheduled arrival (no coordinated omission)."""

    async def go() -> dict:
        lat, status = [], {}
        rng = random.Random(seed)
        async with _client(256) as client:
            t0 = time.perf_counter()
            at, tasks, i = 0.0, [], 0
            while i < len(requests):
                at += rng.expovariate(rate)
                if at > seconds:
                    break
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                task, inputs = requests[i]
                tasks.append(
                    asyncio.create_task(_timed(client, route(task), task, inputs, t0 + at))
                )
                i += 1
            results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 120)
            elapsed = time.perf_counter() - t0
        for code, latency in results:
            status[str(code)] = status.get(str(code), 0) + 1
            if code == 200:
                lat.append(latency)
        sent = len(results)
        return {
            "rate_rps": rate,
            "sent": sent,
            "seconds": elapsed,
            "status": status,
            "rejected_429_share": status.get("429", 0) / sent if sent else None,
            "accepted_rows": sum(
                len(requests[j][1]) for j, (c, _) in enumerate(results) if c == 200
            ),
            **percentiles(lat),
        }

    return _metered(go, pids)


async def _timed(client, url, task, inputs, scheduled) -> tuple[Any, float]:
    try:
        r = await client.post(f"{url}/v1/tasks/{task}/predict", json={"inputs": inputs})
        code = r.status_code
    except Exception as e:  # noqa: BLE001
        code = type(e).__name__
    return code, time.perf_counter() - scheduled


def _metered(go, pids: list[int]) -> dict:
    """Run a load coroutine, with this process's CPU time and each server's beside it."""
    c0, s0 = time.process_time(), [cpu_seconds(p) for p in pids]
    out = asyncio.run(go())
    out["client_cpu_s"] = time.process_time() - c0
    out["server_cpu_s"] = sum(cpu_seconds(p) - s for p, s in zip(pids, s0, strict=True))
    if "rows" in out:
        out["rows_per_s"] = out["rows"] / out["seconds"] if out["seconds"] else 0.0
    return out


def paired(a: list[float], b: list[float]) -> dict:
    """Median of per-turn ratios a/b and its 95% bootstrap interval (bench_pal's)."""
    from bench.bench_pal import bootstrap_ci

    ratios = [x / y for x, y in zip(a, b, strict=True) if y]
    if not ratios:
        return {"ratio": None, "ci95": [None, None], "turns": []}
    return {"ratio": statistics.median(ratios), "ci95": list(bootstrap_ci(ratios)), "turns": ratios}


def harmonic(xs: list[float]) -> float:
    return len(xs) / sum(1 / x for x in xs) if all(xs) else 0.0


# -- measurements ---------------------------------------------------------------------------


def offline_turn(model, requests: list, seconds: float) -> dict:
    """PalBert.predict over the rows of ``requests`` (grouped by task), repeated for about
    ``seconds``: rows/s."""
    by_task: dict[str, list] = {}
    for task, inputs in requests:
        by_task.setdefault(task, []).extend(inputs)
    rows, t0 = 0, time.perf_counter()
    c0 = time.process_time()
    while True:
        for task, inputs in by_task.items():
            preds = model.predict(task, inputs)
            assert len(preds) == len(inputs)
            rows += len(inputs)
        if time.perf_counter() - t0 >= seconds:
            break
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed,
            "cpu_s": time.process_time() - c0}  # fmt: skip


def measure_main(S, model, server: Server, rows, base) -> dict:
    """offline_vs_serve and mixed_vs_single: rounds of offline, mixed, sst, quora, sts."""
    tasks = list(BASES)
    n = S.max_requests
    mixed = plan(tasks, rows, base, S.request_rows, n)
    single = {t: plan([t], rows, base, S.request_rows, n) for t in tasks}
    closed_loop(lambda _t: server.url, mixed, S.clients, S.turn_s / 2, [server.pid])  # warm-up
    turns: dict[str, list] = {"offline": [], "mixed": [], **{t: [] for t in tasks}}
    for _ in range(S.rounds):
        turns["offline"].append(offline_turn(model, mixed[: 3 * S.clients], S.turn_s))
        turns["mixed"].append(
            closed_loop(lambda _t: server.url, mixed, S.clients, S.turn_s, [server.pid])
        )
        for t in tasks:
            turns[t].append(
                closed_loop(lambda _t: server.url, single[t], S.clients, S.turn_s / 3, [server.pid])
            )
    rate = {k: [x["rows_per_s"] for x in v] for k, v in turns.items()}
    single_mix = [harmonic([rate[t][r] for t in tasks]) for r in range(S.rounds)]
    return {
        "offline_vs_serve": {
            "goal": "serve / offline", "serve_rows_per_s": rate["mixed"],
            "offline_rows_per_s": rate["offline"], **paired(rate["mixed"], rate["offline"]),
            "offline_batch_size": 32, "turns": turns,
        },
        "mixed_vs_single": {
            "goal": "mixed / single", "mixed_rows_per_s": rate["mixed"],
            "single_rows_per_s": {t: rate[t] for t in tasks}, "single_harmonic": single_mix,
            **paired(rate["mixed"], single_mix),
        },
    }  # fmt: skip


def measure_many(S, model, files_by_task, backbone, rows, tmp: Path) -> dict:
    """Servers of 1..N tasks (SST and copies of it) up side by side, turns taken in rounds;
    then memory: a fresh 1-task server (no traffic yet, whose freed memory new tasks would
    reuse) loads the N-1 copies through PUT /v1/tasks: one process, one history, so its RSS
    before and after differ by the tasks alone."""
    biggest = max(S.counts)
    copies = write_copies(model, "sst", biggest - 1, tmp / "copies")
    sst_file = files_by_task["sst"]
    token = tmp / "admin-token"
    token.write_text("bench\n")
    admin = ["--admin-token-file", str(token), "--task-dir", str(tmp / "copies")]
    names = ["sst"] + [p.stem for p in copies]
    base = {n: "sst" for n in names}
    out: dict[str, Any] = {
        "task_file_bytes": sst_file.stat().st_size,
        "counts": S.counts,
        "by_count": {},
    }
    with ExitStack() as stack:
        servers = {
            n: stack.enter_context(Server([sst_file, *copies[: n - 1]], backbone)) for n in S.counts
        }
        reqs = {n: plan(names[:n], rows, base, S.request_rows, S.max_requests) for n in S.counts}
        for n, s in servers.items():  # warm-up: every task once
            closed_loop(
                lambda _t, s=s: s.url, reqs[n][: max(n, 2 * S.clients)], S.clients, 60, [s.pid]
            )
        turns = {n: [] for n in S.counts}
        for _ in range(S.rounds):
            for n, s in servers.items():
                turns[n].append(
                    closed_loop(lambda _t, s=s: s.url, reqs[n], S.clients, S.turn_s / 2, [s.pid])
                )
    with Server([sst_file], backbone, admin) as fresh:
        out["memory"] = memory_per_task(fresh, copies, out["task_file_bytes"])
    one = [x["rows_per_s"] for x in turns[1]]
    for n in S.counts:
        rate = [x["rows_per_s"] for x in turns[n]]
        entry = {"rows_per_s": rate, "turns": turns[n]}
        if n > 1:
            entry["vs_one_task"] = paired(rate, one)
        out["by_count"][str(n)] = entry
    return out


def memory_per_task(server: Server, copies: list[Path], file_bytes: int) -> dict:
    """RSS of a serving process before and after it loads ``copies`` (PUT), per task, and
    that per task over the task file's size; then once more after traffic on all of them."""
    import httpx

    auth = {"Authorization": "Bearer bench"}
    before = rss_bytes(server.pid)
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        for p in copies:
            r = c.put(f"/v1/tasks/{p.stem}", json={"file": p.name}, headers=auth)
            if r.status_code != 200:
                raise RuntimeError(f"PUT {p.name}: {r.status_code} {r.text}")
        after = rss_bytes(server.pid)
        for p in copies:  # one request each: every task's PAL and head run once
            r = c.post(f"/v1/tasks/{p.stem}/predict", json={"inputs": ["warm"]})
            r.raise_for_status()
    after_traffic = rss_bytes(server.pid)
    per_task = (after - before) / len(copies)
    return {
        "tasks_added": len(copies), "rss_before_bytes": before, "rss_after_bytes": after,
        "rss_after_traffic_bytes": after_traffic, "rss_per_added_task_bytes": per_task,
        "rss_per_task_over_file": per_task / file_bytes,
        "rss_per_task_over_file_after_traffic": (after_traffic - before) / len(copies) / file_bytes,
    }  # fmt: skip


def measure_batcher(S, paths, backbone, rows, base) -> dict:
    """16 clients of one-row requests, the default batcher against --max-batch-rows 1."""
    reqs = plan(list(BASES), rows, base, 1, S.max_requests)
    with (
        Server(paths, backbone) as batched,
        Server(paths, backbone, ["--max-batch-rows", "1"]) as one,
    ):
        turns: dict[str, list] = {"batcher": [], "rows1": []}
        for s in (batched, one):
            closed_loop(lambda _t, s=s: s.url, reqs, 16, S.turn_s / 4, [s.pid])
        for _ in range(S.rounds):
            for key, s in (("batcher", batched), ("rows1", one)):
                turns[key].append(
                    closed_loop(lambda _t, s=s: s.url, reqs, 16, S.turn_s / 2, [s.pid])
                )
    a = [x["rows_per_s"] for x in turns["batcher"]]
    b = [x["rows_per_s"] for x in turns["rows1"]]
    return {"goal": "batcher / max-batch-rows 1", "clients": 16, "batcher_rows_per_s": a,
            "rows1_rows_per_s": b, **paired(a, b), "turns": turns}  # fmt: skip


def measure_per_process(S, server: Server, files_by_task, backbone, rows, base) -> dict:
    """One server of three tasks against three servers of one task each (own encoders)."""
    reqs = plan(list(BASES), rows, base, S.request_rows, S.max_requests)
    with ExitStack() as stack:
        own = {t: stack.enter_context(Server([files_by_task[t]], backbone)) for t in BASES}
        pids = [s.pid for s in own.values()]
        closed_loop(lambda t: own[t].url, reqs, S.clients, S.turn_s / 4, pids)
        rss_own = sum(rss_bytes(p) for p in pids)
        turns: dict[str, list] = {"palbert": [], "per_process": []}
        for _ in range(S.rounds):
            turns["palbert"].append(
                closed_loop(lambda _t: server.url, reqs, S.clients, S.turn_s / 2, [server.pid])
            )
            turns["per_process"].append(
                closed_loop(lambda t: own[t].url, reqs, S.clients, S.turn_s / 2, pids)
            )
    a = [x["rows_per_s"] for x in turns["palbert"]]
    b = [x["rows_per_s"] for x in turns["per_process"]]
    rss_one = rss_bytes(server.pid)
    return {"palbert_rows_per_s": a, "per_process_rows_per_s": b, **paired(a, b),
            "palbert_rss_bytes": rss_one, "per_process_rss_bytes": rss_own,
            "rss_ratio": rss_own / rss_one, "turns": turns}  # fmt: skip


def measure_peft(S, model, backbone_name: str, rows, base) -> dict:
    """Offline, the same padded rows: palbert's mixed forward (task_ids, side) against a
    PeftModel's forward with three LoRA adapters (r=8, query/value) picked by adapter_names=."""
    import torch
    from peft import LoraConfig, get_peft_model

    from palbert import load_backbone

    batch = mixed_batch(model, rows, base, S.request_rows)
    torch.manual_seed(0)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False
    )
    peft = get_peft_model(load_backbone(backbone_name).model, config, adapter_name="a0")
    for i in (1, 2):
        peft.add_adapter(f"a{i}", config)
    peft.eval()
    names = [f"a{model.tasks.index(t) if t in model.tasks else 0}" for t in model.tasks]
    adapter_names = [names[i] for i in batch["task_ids"].tolist()]
    enc = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

    def run_pal() -> None:
        model(batch)

    def run_peft() -> None:
        peft(**enc, adapter_names=adapter_names)

    times: dict[str, list] = {"palbert": [], "peft": []}
    with torch.no_grad():
        run_pal(), run_peft()
        for _ in range(S.peft_turns):
            for key, fn in (("palbert", run_pal), ("peft", run_peft)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    shape = list(batch["input_ids"].shape)
    return {"batch_shape": shape, "palbert_s": times["palbert"], "peft_s": times["peft"],
            "note": "palbert time includes its heads; PEFT's encoder has none",
            **paired(times["peft"], times["palbert"])}  # fmt: skip


def mixed_batch(model, rows, base, request_rows: int) -> dict:
    """One padded batch of three requests, one of each base task (as the batcher packs it)."""
    import torch

    from palbert.inference import tokenize_inputs
    from palbert.serve.batcher import assemble

    units = []
    for task, inputs in plan(list(BASES), rows, base, request_rows, 3):
        req = SimpleNamespace(task=task, data=tokenize_inputs(model, task, inputs))
        units += [SimpleNamespace(request=req, index=i) for i in range(len(inputs))]
    return assemble(model, units, torch.device("cpu"))[0]


def measure_compile(S, model, paths, backbone, rows, base) -> dict:
    """Offline, one mixed batch: ``palbert serve --compile``'s encoder against eager, turns
    interleaved; the compile's own seconds and the largest difference of outputs beside."""
    import torch

    from palbert.serve.app import compile_encoder

    batch = mixed_batch(model, rows, base, S.request_rows)
    compiled = load_model(paths, backbone).eval()  # a second copy (a model holds thread-locals)
    compile_encoder(compiled)
    with torch.inference_mode():
        t0 = time.perf_counter()
        got = compiled(batch)
        compile_s = time.perf_counter() - t0
        want = model(batch)
        diff = max(float((got[k] - want[k]).abs().max()) for k in want)
        times: dict[str, list] = {"eager": [], "compiled": []}
        for _ in range(S.peft_turns):
            for key, m in (("eager", model), ("compiled", compiled)):
                t0 = time.perf_counter()
                m(batch)
                times[key].append(time.perf_counter() - t0)
    return {"batch_shape": list(batch["input_ids"].shape), "compile_s": compile_s,
            "max_abs_diff": diff, "eager_s": times["eager"], "compiled_s": times["compiled"],
            **paired(times["eager"], times["compiled"])}  # fmt: skip


def measure_latency(S, server: Server, saturated_rows_per_s: float, rows, base) -> dict:
    reqs = plan(list(BASES), rows, base, S.request_rows, S.max_requests)
    sat_rps = saturated_rows_per_s / S.request_rows
    out = {"saturated_requests_per_s": sat_rps, "request_rows": S.request_rows}
    for key, share, secs in (
        ("at_50", 0.5, S.open_s),
        ("at_90", 0.9, S.open_s),
        ("at_300", 3.0, S.open_s),
    ):
        out[key] = open_loop(lambda _t: server.url, reqs, share * sat_rps, secs, [server.pid])
    return out


# -- the run --------------------------------------------------------------------------------


def machine(note: str) -> dict:
    """bench.machine's dict (the servers run on the CPU), with what this bench adds."""
    import torch
    import transformers

    from bench.machine import machine_info

    return machine_info(
        torch.device("cpu"),
        transformers=transformers.__version__,
        env={
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
        },
        command=" ".join(["python -m bench.serve", *sys.argv[1:]]),
        note=note,
        load_generator="httpx.AsyncClient in the bench process (competes with the servers "
        "for the CPUs; client_cpu_s beside server_cpu_s in every turn)",
    )


def run_bench(args) -> dict:
    from palbert.export import task_files
    from palbert.tasks.paths import default_data_dir

    S = sizes(args.quick)
    if args.counts:
        S.counts = sorted(set([1, *args.counts]))
    data_dir = Path(args.data) if args.data else default_data_dir()
    if data_dir is None:
        raise SystemExit("no data folder: pass --data DIR (the cs224n csv files)")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        if args.tasks:
            task_dir, source = Path(args.tasks), str(args.tasks)
        else:
            task_dir, source = (
                make_dev_tasks(tmp / "tasks"),
                "untrained (random PAL weights) on minilm",
            )
        files = task_files([str(task_dir)])
        files_by_task = {f.stem: f for f in files}
        missing = [t for t in BASES if t not in files_by_task]
        if missing:
            raise SystemExit(f"{task_dir}: no task file for {missing} (needs sst, quora, sts)")
        paths = [files_by_task[t] for t in BASES]
        backbone = backbone_of(task_dir)
        model = load_model(paths, backbone)
        backbone_name = backbone or model.backbone_info.name
        rows = draw_rows(list(BASES), data_dir, S.rows_per_task, args.seed)
        base = {t: t for t in BASES}
        result: dict[str, Any] = {
            "machine": machine(args.note), "tasks": source, "data": str(data_dir),
            "sizes": vars(S), "seed": args.seed, "started": datetime.now(timezone.utc).isoformat(),
            "results": {},
        }  # fmt: skip
        res = result["results"]
        t0 = time.perf_counter()

        def say(name: str) -> None:
            print(f"[{time.perf_counter() - t0:6.1f}s] {name}", flush=True)

        with Server(paths, backbone) as server:
            result["server_command"] = server.cmd
            say("offline / mixed / single")
            res.update(measure_main(S, model, server, rows, base))
            say("per-process servers")
            res["per_process"] = measure_per_process(S, server, files_by_task, backbone, rows, base)
            say("latency")
            sat = statistics.median(res["offline_vs_serve"]["serve_rows_per_s"])
            res["latency"] = measure_latency(S, server, sat, rows, base)
            result["server_exit"] = server.stop()
        say("batcher")
        res["batcher"] = measure_batcher(S, paths, backbone, rows, base)
        say("many tasks")
        res["many_tasks"] = measure_many(S, model, files_by_task, backbone, rows, tmp)
        say("peft")
        res["peft"] = measure_peft(S, model, backbone_name, rows, base)
        if args.compile:
            say("compile")
            res["compile"] = measure_compile(S, model, paths, backbone, rows, base)
        result["seconds"] = time.perf_counter() - t0
        say("done")
    return result


def goal_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured with 95% interval, goal, met) for the summary and the README."""
    r = result["results"]

    def fmt(p: dict) -> str:
        lo, hi = p["ci95"]
        return "n/a" if p["ratio"] is None else f"{p['ratio']:.2f} ({lo:.2f}-{hi:.2f})"

    def met(name: str, value: float | None) -> str:
        op, bound = GOALS[name]
        if value is None:
            return "n/a"
        return "yes" if (value >= bound if op == ">=" else value <= bound) else "no"

    out = []
    for key, name in (
        ("offline_vs_serve", "serve / offline"),
        ("mixed_vs_single", "mixed / single"),
    ):
        p = r[key]
        out.append((name, fmt(p), f"{GOALS[name][0]} {GOALS[name][1]}", met(name, p["ratio"])))
    for n, e in r["many_tasks"]["by_count"].items():
        if n == "1":
            continue
        g = "N tasks / 1 task"
        out.append((f"{n} tasks / 1 task", fmt(e["vs_one_task"]), ">= 0.8",
                    met(g, e["vs_one_task"]["ratio"])))  # fmt: skip
    mem = r["many_tasks"]["memory"]
    m = mem["rss_per_task_over_file"]
    out.append((f"RSS per added task / file ({mem['tasks_added']} added)", f"{m:.2f}", "<= 1.2",
                met("RSS per task / file", m)))  # fmt: skip
    b = r["batcher"]
    out.append(
        (
            "batcher / max-batch-rows 1",
            fmt(b),
            ">= 3",
            met("batcher / max-batch-rows 1", b["ratio"]),
        )
    )
    p = r["per_process"]
    out.append(("one server / 3 processes (rows/s)", fmt(p), "-", "-"))
    out.append(("3 processes / one server (RSS)", f"{p['rss_ratio']:.2f}", "-", "-"))
    out.append(("palbert mixed / PEFT adapter_names (speed)", fmt(r["peft"]), "-", "-"))
    if "compile" in r:
        c = r["compile"]
        out.append((f"--compile / eager (speed; compile {c['compile_s']:.0f} s, max diff "
                    f"{c['max_abs_diff']:.0e})", fmt(c), "-", "-"))  # fmt: skip
    lat = r["latency"]
    for key, label in (("at_50", "50%"), ("at_90", "90%")):
        x = lat[key]
        out.append((f"latency at {label} of saturation p50/p95/p99 ms", _ms(x), "-", "-"))
    x = lat["at_300"]
    share = x["rejected_429_share"]
    out.append(("3x saturation: 429 share, accepted p99 ms",
                f"{share:.2f}, {_ms1(x['p99_ms'])}" if share is not None else "n/a", "-", "-"))  # fmt: skip
    return out


def _ms1(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _ms(x: dict) -> str:
    return "/".join(_ms1(x[k]) for k in ("p50_ms", "p95_ms", "p99_ms"))


def table(result: dict) -> str:
    """The markdown table of a result file."""
    m = result["machine"]
    # runs from bench.machine.machine_info, or the keys serve-20261204T230249.json has
    cpus, threads = m.get("cpus", m.get("cpu_count")), m.get("threads", m.get("torch_threads"))
    r = result["results"]
    lines = [
        f"{cpus} x {m['cpu_model']}, torch {m['torch']}, {threads} threads; "
        f"{m['note']}; tasks: {result['tasks']}; `{m['command']}`",
        "",
        f"mixed three-task serving: {statistics.median(r['offline_vs_serve']['serve_rows_per_s']):.0f} "
        f"rows/s (offline PalBert.predict {statistics.median(r['offline_vs_serve']['offline_rows_per_s']):.0f})",
        "",
        "| figure | measured (95% interval) | goal | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in goal_rows(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:
        if len(argv) != 2:
            raise SystemExit("usage: python -m bench.serve table RESULT.json")
        print(table(json.loads(Path(argv[1]).read_text())))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tasks", help="a folder of exported task files, e.g. /work/qs/tasks")
    parser.add_argument("--data", help="the cs224n csv folder (default: palbert's)")
    parser.add_argument("--quick", action="store_true", help="every measurement tiny (~1-2 min)")
    parser.add_argument("--counts", type=int, nargs="+", help="loaded-task counts (1 is added)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="also time palbert serve --compile's encoder against eager (offline)")  # fmt: skip
    parser.add_argument("--note", default="NOT run alone on the machine",
                        help='say "run alone on the machine" when it was')  # fmt: skip
    parser.add_argument("--out", type=Path, help="default bench/results/serve-<UTC stamp>.json")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / f"serve-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    result = run_bench(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print()
    print(table(result))
    print(f"\nraw results: {out}")
    return 0


__all__ = ["main", "run_bench", "table"]
