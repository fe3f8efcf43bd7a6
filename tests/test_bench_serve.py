"""The serving bench (bench/serve) counts what it claims: requests planned as said, every
answered row counted under concurrent clients (a lost-update bug once read rows/s 5-10x
low), open-loop arrivals all sent and timed, and the docs' table made from the committed raw
results. No timing is asserted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.serve import run as bench
from tests.tiny_run import SENT, four_tasks

ROOT = Path(__file__).resolve().parents[1]


def test_plan_takes_turns_over_tasks_and_wraps_each_pool():
    rows = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}
    base = {"a": "a", "b": "b", "a_copy": "a"}
    assert bench.plan(["a", "b"], rows, base, 2, 4) == [
        ("a", ["a1", "a2"]), ("b", ["b1", "b2"]), ("a", ["a3", "a1"]), ("b", ["b1", "b2"]),
    ]  # fmt: skip
    # copies draw from their base task's rows, one cursor per base
    assert bench.plan(["a", "a_copy"], rows, base, 2, 2) == [
        ("a", ["a1", "a2"]), ("a_copy", ["a3", "a1"]),
    ]  # fmt: skip


def test_percentiles_of_nothing_and_of_a_hundred():
    assert bench.percentiles([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    got = bench.percentiles([i / 1000 for i in range(1, 101)])
    assert got == {"p50_ms": 51.0, "p95_ms": 96.0, "p99_ms": 100.0}


@pytest.fixture(scope="module")
def sst_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench-serve") / "sst.safetensors"
    four_tasks("transformers").save_task("sst", path)
    with bench.Server([path], None) as server:
        yield server


def test_closed_loop_counts_every_row_of_concurrent_clients(sst_server):
    requests = [("sst", [SENT[i % 3], SENT[(i + 1) % 3]]) for i in range(24)]
    out = bench.closed_loop(lambda _t: sst_server.url, requests, 6, 60.0, [sst_server.pid])
    assert out["status"] == {"200": 24}
    assert out["rows"] == 48 and out["rows_per_s"] == pytest.approx(48 / out["seconds"])
    assert out["server_cpu_s"] > 0 and out["p50_ms"] is not None


def test_open_loop_sends_every_arrival_and_counts_429s(sst_server):
    requests = [("sst", [SENT[0]])] * 200
    out = bench.open_loop(lambda _t: sst_server.url, requests, 40.0, 1.0, [sst_server.pid])
    assert out["sent"] == sum(out["status"].values()) > 10
    assert out["accepted_rows"] == out["status"].get("200", 0)
    assert out["rejected_429_share"] == out["status"].get("429", 0) / out["sent"]


def test_the_docs_serving_table_is_made_from_its_raw_results():
    """docs/benchmarks.md names the raw JSON under its serving table; `python -m bench.serve
    table` of that file prints the table as the page shows it."""
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    m = re.search(r"raw results: `(bench/results/serve-[^`]+\.json)`", text)
    assert m is not None, "docs/benchmarks.md names no raw results under its serving table"
    result = json.loads((ROOT / m.group(1)).read_text(encoding="utf-8"))
    assert bench.table(result) in text


def test_new_runs_record_bench_machine_dict_and_the_table_reads_old_and_new_keys():
    """bench/serve records bench.machine.machine_info (plus its own keys); the table of a
    new run heads with the same line as the committed file's, whose machine predates it."""
    from bench.machine import machine_info

    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    path = re.search(r"raw results: `(bench/results/serve-[^`]+\.json)`", text).group(1)
    old = json.loads((ROOT / path).read_text(encoding="utf-8"))
    new = bench.machine(old["machine"]["note"])
    assert set(machine_info()) < set(new) and new["device"] == "cpu"
    # the committed machine under machine_info's names: the same table
    renamed = {"cpus": "cpu_count", "threads": "torch_threads"}
    m = {k: v for k, v in old["machine"].items() if k not in renamed.values()}
    m.update({new_key: old["machine"][old_key] for new_key, old_key in renamed.items()})
    assert bench.table({**old, "machine": m}) == bench.table(old)
    header = bench.table({**old, "machine": new}).splitlines()[0]
    assert header.startswith(f"{new['cpus']} x {new['cpu_model']}, torch {new['torch']}, ")
