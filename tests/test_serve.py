"""`palbert serve` as a real server: a subprocess on a free port of 127.0.0.1, driven over
HTTP. Task files come from the embedded MiniLM with random PAL weights (tests/tiny_run.four_tasks):
SST, CFIMDB, Quora (cross-encoded) and STS (bi-encoded)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from palbert.serve.batcher import pack
from tests.tiny_run import PAIRS, SENT, four_tasks, snapshot

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
INPUTS = {"sst": SENT, "cfimdb": SENT, "quora": PAIRS, "sts": [list(p) for p in PAIRS]}


class Server:
    """``python -m palbert serve ARGS --port 0`` until stopped; ``url`` from its ready line."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "palbert", "serve", *args, "--port", "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )  # fmt: skip
        self.line = self.proc.stdout.readline()  # blocks until ready (or the process ends)
        m = re.fullmatch(r"serving (\d+) tasks \((.*)\) on (http://127\.0\.0\.1:\d+)\n", self.line)
        if m is None:
            self.stop()
            raise AssertionError(f"no ready line: {self.line!r}\n{self.proc.stderr.read()[-3000:]}")
        self.url = m.group(3)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """served/: the four tasks; other/: sst with other weights (and other files for PUT)."""
    root = tmp_path_factory.mktemp("serve")
    served, other = root / "served", root / "other"
    served.mkdir()
    other.mkdir()
    model = four_tasks("transformers")
    for name in model.tasks:
        model.save_task(name, served / f"{name}.safetensors")
    new = four_tasks("transformers", seed=1)
    new.save_task("sst", other / "sst_new.safetensors")
    (other / "broken.safetensors").write_bytes(b"not a task file")
    (other / "escape.safetensors").symlink_to(served / "sst.safetensors")  # leads out
    (root / "token").write_text(TOKEN + "\n")
    want = {n: model.predict(n, INPUTS[n]) for n in model.tasks}
    want_new = new.predict("sst", SENT)
    return {"root": root, "served": served, "other": other, "want": want, "new": want_new}


@pytest.fixture(scope="module")
def server(files):
    s = Server(
        str(files["served"]), "--admin-token-file", str(files["root"] / "token"),
        "--task-dir", str(files["other"]), "--max-inputs", "16", "--max-chars", "300",
        "--max-body-bytes", "4096",
    )  # fmt: skip
    yield s
    assert s.stop() == 0


def close(got, want, where=""):
    """Predictions equal to 1e-5 (labels exactly)."""
    assert len(got) == len(want), where
    for g, w in zip(got, want, strict=True):
        if isinstance(w, float):
            assert abs(g - w) < 1e-5, where
        else:
            assert g["label"] == w["label"] and g["label_id"] == w["label_id"], where
            for k in w["probs"]:
                assert abs(g["probs"][k] - w["probs"][k]) < 1e-5, where


def test_every_endpoint_answers_its_shape(server):
    c = server.client
    assert server.line.startswith("serving 4 tasks (cfimdb, quora, sst, sts) on ")
    assert c.get("/health").json() == {"status": "ok"}
    assert c.get("/ready").status_code == 200
    tasks = {t["name"]: t for t in c.get("/v1/tasks").json()["tasks"]}
    assert tasks["sts"] == {
        "name": "sts", "kind": "regression", "pair": True, "labels": None, "max_length": 128
    }  # fmt: skip
    assert tasks["sst"]["labels"] == ["0", "1", "2", "3", "4"] and not tasks["sst"]["pair"]
    assert tasks["quora"]["pair"] and tasks["quora"]["kind"] == "classification"
    c.post("/v1/tasks/sst/predict", json={"inputs": ["ok"]})
    metrics = c.get("/metrics").text
    for name in (
        "palbert_requests_total", "palbert_request_duration_seconds_bucket",
        "palbert_queue_duration_seconds_bucket", "palbert_inference_duration_seconds_bucket",
        "palbert_queue_depth", "palbert_batch_rows_bucket", "palbert_batch_padded_tokens_bucket",
        "palbert_batch_tasks_bucket", "palbert_batch_padding_ratio_bucket",
        "palbert_tasks_loaded", "palbert_task_loads_total", "palbert_task_load_failures_total",
        "palbert_rejections_total",
    ):  # fmt: skip
        assert name in metrics, name
    assert 'palbert_requests_total{status="200",task="sst"}' in metrics
    # pages that load scripts from a CDN are off; the schema stays
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert "/v1/predict" in c.get("/openapi.json").json()["paths"]


def test_predictions_equal_palbert_predict_single_and_mixed(server, files):
    c, want = server.client, files["want"]
    for name, inputs in INPUTS.items():
        r = c.post(f"/v1/tasks/{name}/predict", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        assert r.json()["task"] == name
        close(r.json()["predictions"], want[name], name)
    # all four tasks in one call (and so in shared batches), the order kept
    reqs = [{"task": n, "inputs": INPUTS[n]} for n in ("sts", "sst", "quora", "cfimdb", "sts")]
    r = c.post("/v1/predict", json={"requests": reqs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["task"] for x in results] == ["sts", "sst", "quora", "cfimdb", "sts"]
    for x in results:
        close(x["predictions"], want[x["task"]], x["task"])
    # concurrent one-row requests of every task share batches; each answer is its own
    out: dict = {}

    def one(name, i):
        r = httpx.post(
            f"{server.url}/v1/tasks/{name}/predict", json={"inputs": [INPUTS[name][i]]}, timeout=60
        )
        out[(name, i)] = r.json()["predictions"][0]

    threads = [threading.Thread(target=one, args=(n, i)) for n in INPUTS for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (name, i), got in out.items():
        close([got], [want[name][i]], f"{name} {i}")
    assert len(out) == 12


BAD = [
    # (method, path, body or raw bytes, status, words the message must hold)
    ("/v1/tasks/sst/predict", b'{"inputs": [', 400, "not valid JSON"),
    ("/v1/tasks/sst/predict", {"inputs": "one string"}, 422, "inputs"),
    ("/v1/tasks/sst/predict", {"inputs": [3]}, 422, "inputs.0"),
    ("/v1/tasks/sst/predict", {"input": ["x"]}, 422, "input"),
    ("/v1/tasks/sst/predict", {"inputs": []}, 422, "inputs: empty"),
    ("/v1/tasks/sst/predict", {"inputs": ["ok", ["a", "b"]]}, 422, "inputs.1: task 'sst' takes single"),
    ("/v1/tasks/quora/predict", {"inputs": ["one"]}, 422, "inputs.0: task 'quora' takes sentence pairs"),
    ("/v1/tasks/sts/predict", {"inputs": [["a", "b", "c"]]}, 422, "inputs.0"),
    ("/v1/tasks/sts/predict", {"inputs": [["a cat", " "]]}, 422, "inputs.0 (its second text): empty or whitespace-only"),
    ("/v1/tasks/sst/predict", b'{"inputs": ["ok", "a \\ud800 b"]}', 422, "inputs.1: not valid Unicode (a lone surrogate U+D800"),
    ("/v1/tasks/nope/predict", {"inputs": ["x"]}, 404, "no task 'nope'"),
    ("/v1/predict", {"requests": [{"task": "sst", "inputs": ["x"]}, {"task": "nope", "inputs": ["x"]}]}, 404, "no task 'nope'"),
    ("/v1/predict", {"requests": []}, 422, "requests: empty"),
    ("/v1/predict", {"requests": [{"task": "sst", "inputs": [["a", "b"]]}]}, 422, "requests.0.inputs.0"),
    ("/v1/tasks/sst/predict", {"inputs": ["x"] * 17}, 413, "--max-inputs"),
    ("/v1/predict", {"requests": [{"task": "sst", "inputs": ["x"] * 9}] * 2}, 413, "--max-inputs"),
    ("/v1/tasks/sst/predict", {"inputs": ["x" * 301]}, 413, "inputs.0: a text of 301 characters"),
    ("/v1/tasks/sst/predict", {"inputs": ["x" * 290] * 15}, 413, "--max-body-bytes"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD)
def test_a_bad_request_gets_its_status_and_says_why_then_a_good_one_is_answered(
    server, files, path, body, status, words
):
    c = server.client
    if isinstance(body, bytes):
        r = c.post(path, content=body)
    else:
        r = c.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message"} and words in err["message"], err
    good = c.post("/v1/tasks/sst/predict", json={"inputs": SENT[:1]})
    assert good.status_code == 200
    close(good.json()["predictions"], files["want"]["sst"][:1])


def test_unknown_task_names_never_become_metric_labels(server):
    server.client.post("/v1/tasks/made-up-name/predict", json={"inputs": ["x"]})
    metrics = server.client.get("/metrics").text
    assert "made-up-name" not in metrics and 'task="_unknown"' in metrics


def test_management_needs_the_token_and_a_file_inside_the_folder(server, files):
    c = server.client
    put = lambda task, file, token=TOKEN: c.put(  # noqa: E731
        f"/v1/tasks/{task}", json={"file": file}, headers={"Authorization": f"Bearer {token}"}
    )
    r = c.put("/v1/tasks/x", json={"file": "sst_new.safetensors"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert put("x", "sst_new.safetensors", token="wrong").status_code == 401
    assert c.delete("/v1/tasks/sst", headers={"Authorization": "Bearer nope"}).status_code == 401
    for file, words in (
        (str(files["other"] / "sst_new.safetensors"), "absolute"),
        ("../served/sst.safetensors", "'..'"),
        ("escape.safetensors", "leads out"),
    ):
        r = put("x", file)
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    r = put("sst", "broken.safetensors")
    assert r.status_code == 422, r.text
    assert "broken.safetensors" in r.json()["error"]["message"]
    # the failed load left the old version serving
    got = c.post("/v1/tasks/sst/predict", json={"inputs": SENT}).json()["predictions"]
    close(got, files["want"]["sst"])
    # load under a new name, use it, unload it
    assert put("sst_b", "sst_new.safetensors").json() == {
        "task": "sst_b", "file": "sst_new.safetensors", "replaced": False
    }  # fmt: skip
    got = c.post("/v1/tasks/sst_b/predict", json={"inputs": SENT}).json()["predictions"]
    close(got, files["new"])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert c.delete("/v1/tasks/sst_b", headers=auth).json() == {"task": "sst_b", "unloaded": True}
    assert c.post("/v1/tasks/sst_b/predict", json={"inputs": SENT}).status_code == 404


def test_management_is_off_without_a_token(files):
    s = Server(str(files["served"] / "sst.safetensors"), env={"PALBERT_ADMIN_TOKEN": ""})
    try:
        r = s.client.put("/v1/tasks/sst", json={"file": "sst.safetensors"})
        assert r.status_code == 403 and "--admin-token-file" in r.json()["error"]["message"]
        assert s.client.delete("/v1/tasks/sst").status_code == 403
    finally:
        assert s.stop() == 0


def test_atomic_replace_under_concurrent_traffic(server, files):
    old, new = files["want"]["sst"], files["new"]
    answers, failures = [], []

    def traffic():
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for _ in range(12):
                r = c.post("/v1/tasks/sst/predict", json={"inputs": SENT})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    answers.append(r.json()["predictions"])

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = server.client.put("/v1/tasks/sst", json={"file": "sst_new.safetensors"}, headers=auth)
    assert r.status_code == 200 and r.json()["replaced"] is True, r.text
    for t in threads:
        t.join(120)
    assert not failures and len(answers) == 36

    def same(got, want):
        try:
            close(got, want)
            return True
        except AssertionError:
            return False

    kinds = ["old" if same(a, old) else "new" if same(a, new) else "mixed" for a in answers]
    assert "mixed" not in kinds
    after = server.client.post("/v1/tasks/sst/predict", json={"inputs": SENT}).json()
    close(after["predictions"], new)
    # and back, for the tests after this one
    r = server.client.put("/v1/tasks/sst", json={"file": "../served/sst.safetensors"}, headers=auth)
    assert r.status_code == 400


def test_full_queue_answers_429_and_sigterm_drains_and_exits_0(files):
    s = Server(str(files["served"]), "--max-queue", "2", "--max-wait-ms", "3000")
    try:
        first: dict = {}

        def slow():  # two rows wait up to 3 s for company: the queue is full meanwhile
            first["r"] = httpx.post(
                f"{s.url}/v1/tasks/sst/predict", json={"inputs": SENT[:2]}, timeout=60
            )

        t = threading.Thread(target=slow)
        t.start()
        for _ in range(200):  # until both rows are admitted (bounded: 10 s)
            if "palbert_queue_depth 2.0" in s.client.get("/metrics").text:
                break
            time.sleep(0.05)
        r = s.client.post("/v1/tasks/sst/predict", json={"inputs": ["x"]})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert "--max-queue" in r.json()["error"]["message"]
        s.proc.send_signal(signal.SIGTERM)  # the admitted rows are computed, then exit 0
        t.join(60)
        assert first["r"].status_code == 200  # admitted before SIGTERM: answered
        close(first["r"].json()["predictions"], files["want"]["sst"][:2])
        assert s.proc.wait(60) == 0
    finally:
        s.stop()


def test_a_task_file_for_another_encoder_is_refused_at_start(files, tmp_path):
    from palbert import PalBert
    from palbert.tasks import build_task

    model = PalBert.from_pretrained("random:minilm")
    task = build_task("sst")
    model.add_task("other", task.build_head(model.hidden_size), spec=task)
    model.save_task("other", tmp_path / "other.safetensors")
    out = subprocess.run(
        [sys.executable, "-m", "palbert", "serve", str(files["served"] / "sst.safetensors"),
         str(tmp_path / "other.safetensors"), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode != 0 and out.stdout == ""
    assert "other.safetensors" in out.stderr, out.stderr


def test_bad_arguments_are_one_line_and_exit_2_before_serving(tmp_path, capsys):
    from palbert import PalBert
    from palbert.cli import main
    from palbert.tasks import build_task

    model = PalBert.from_pretrained("random:tiny")
    task = build_task("sst")
    model.add_task("sst", task.build_head(model.hidden_size), spec=task)
    good = str(model.save_task("sst", tmp_path / "sst.safetensors"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.safetensors").write_bytes(b"not a task file")
    (tmp_path / "token").write_text(" \n")
    for args, words in (
        ([good, "--device", "tpu"], "--device"),
        ([str(tmp_path / "junk.safetensors")], f"task file {tmp_path / 'junk.safetensors'} is"),
        ([str(tmp_path / "empty")], f"no task file (nor a folder of them): {tmp_path / 'empty'}"),
        ([good, "--max-batch-rows", "0"], "max_batch_rows must be >= 1"),
        ([good, "--admin-token-file", str(tmp_path / "token")], "token is empty"),
    ):
        assert main(["serve", *args, "--port", "0", "--force"]) == 2, args
        err = capsys.readouterr().err  # after the line naming the backbone, where one loaded
        assert "Traceback" not in err and err.endswith("\n"), err
        last = err.splitlines()[-1]
        assert last.startswith("palbert serve: error: ") and words in last, err


def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path, capsys):
    """uvicorn logs why it could not bind; palbert's last line says what failed."""
    from palbert import PalBert
    from palbert.cli import main
    from palbert.tasks import build_task

    model = PalBert.from_pretrained("minilm")
    task = build_task("sst")
    model.add_task("sst", task.build_head(model.hidden_size), spec=task)
    good = str(model.save_task("sst", tmp_path / "sst.safetensors"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["serve", good, "--host", "127.0.0.1", "--port", str(port)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (
        f"palbert serve: error: could not listen on 127.0.0.1:{port} (the reason is logged above)"
    )


def test_pack_starts_with_the_oldest_and_fills_by_length_under_the_budget():
    widths = [10, 50, 11, 9, 12, 48]
    rows = [1, 1, 2, 1, 1, 1]
    idx, full = pack(widths, rows, max_tokens=60, max_rows=64)
    assert idx[0] == 0 and 1 not in idx and 5 not in idx  # the long rows wait
    assert sum(rows[i] for i in idx) * max(widths[i] for i in idx) <= 60 and full
    assert pack(widths, rows, max_tokens=10_000, max_rows=3) == ([0, 2], True)
    assert pack([5, 5], [1, 1], 100, 64) == ([0, 1], False)
    # the oldest goes first even when it is the longest
    assert pack([100, 5, 5], [1, 1, 1], 100, 64)[0][0] == 0


def in_process(model):
    """An app on uvicorn in a thread of this process (its state reachable, so a test can
    pause the batcher): (state, server, url, thread)."""
    import asyncio

    import uvicorn

    from palbert.serve import create_app
    from palbert.serve.cli import Draining

    app = create_app(model)
    state = app.state.palbert
    server = Draining(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    server.state = state
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    for _ in range(200):  # bounded: 10 s
        if server.started:
            break
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    return state, server, url, thread


def test_draining_answers_503_and_finishes_what_was_admitted(files):
    """In process, the batcher paused, so the drain is caught in the middle."""
    model = four_tasks("transformers")
    state, server, url, thread = in_process(model)
    state.batcher.hold.clear()
    first: dict = {}
    t = threading.Thread(
        target=lambda: first.setdefault(
            "r", httpx.post(f"{url}/v1/tasks/sst/predict", json={"inputs": SENT}, timeout=60)
        )
    )
    t.start()
    for _ in range(200):
        if state.batcher.depth == 3:
            break
        time.sleep(0.05)
    server.handle_exit(signal.SIGTERM, None)
    r = httpx.post(f"{url}/v1/tasks/sst/predict", json={"inputs": ["x"]}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
    assert httpx.get(f"{url}/ready").status_code == 503
    state.batcher.hold.set()
    t.join(60)
    assert first["r"].status_code == 200
    close(first["r"].json()["predictions"], model.predict("sst", SENT))
    thread.join(60)
    assert not thread.is_alive()


def test_a_restart_after_sigkill_serves_the_same_answers(files):
    """Nothing is stateful but the files the server was given: killed mid-traffic, a new
    server on the same folder answers as the first did (to 1e-5: batches may be composed
    otherwise) and the folder is unchanged."""
    before = snapshot(files["served"])
    reqs = [{"task": n, "inputs": INPUTS[n]} for n in INPUTS]

    def in_flight(url):  # traffic when the kill lands; its connection is reset
        try:
            httpx.post(f"{url}/v1/predict", json={"requests": reqs}, timeout=60)
        except httpx.HTTPError:
            pass

    answers = []
    for kill in (True, False):
        s = Server(str(files["served"]))
        try:
            answers.append(s.client.post("/v1/predict", json={"requests": reqs}).json())
            if kill:
                t = threading.Thread(target=in_flight, args=(s.url,))
                t.start()
                s.proc.kill()
                assert s.proc.wait(30) == -signal.SIGKILL
                t.join(60)
        finally:
            s.stop()
    first, again = (a["results"] for a in answers)
    assert [x["task"] for x in again] == [x["task"] for x in first] == list(INPUTS)
    for x, y in zip(first, again, strict=True):
        close(y["predictions"], x["predictions"], x["task"])
        close(x["predictions"], files["want"][x["task"]], x["task"])
    assert snapshot(files["served"]) == before


def test_a_client_that_leaves_has_its_rows_dropped_before_they_are_computed():
    """The batcher paused, a client gives up on its three rows: they leave the queue
    uncomputed (counted as dropped, the queue empty), and the next request is answered."""
    state, server, url, thread = in_process(four_tasks("transformers"))
    try:
        state.batcher.hold.clear()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/tasks/sst/predict", json={"inputs": SENT}, timeout=1.0)
        for _ in range(200):  # bounded: 10 s, until the server has seen the disconnect
            if "palbert_dropped_rows_total 3.0" in httpx.get(f"{url}/metrics").text:
                break
            time.sleep(0.05)
        metrics = httpx.get(f"{url}/metrics").text
        assert "palbert_dropped_rows_total 3.0" in metrics and state.batcher.depth == 0
        assert "palbert_batch_rows_count 0.0" in metrics  # nothing was computed
        state.batcher.hold.set()
        r = httpx.post(f"{url}/v1/tasks/sst/predict", json={"inputs": SENT[:1]}, timeout=60)
        assert r.status_code == 200
        assert "palbert_batch_rows_sum 1.0" in httpx.get(f"{url}/metrics").text
    finally:
        state.batcher.hold.set()
        server.handle_exit(signal.SIGTERM, None)
        thread.join(60)
