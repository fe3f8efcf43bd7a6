"""Concurrent forwards through one model: the route belongs to each call, not to the model."""

from __future__ import annotations

import threading

import torch

from palbert import ModuleConfig, PalBert
from tests.tiny_run import CLSHead


def test_threads_with_different_tasks_and_lengths_get_their_own_rows(tokenizer):
    torch.manual_seed(0)
    model = PalBert.from_pretrained("minilm", module=ModuleConfig(kind="pal", init="normal"))
    for i, name in enumerate(("a", "b", "c")):
        model.add_task(name, CLSHead(384, 2 + i))
    model.eval()
    words = "the quick brown fox jumps over a lazy dog while it rains on the hills".split()
    jobs = []  # (batch, task or task_ids): lengths, batch sizes and routes all differ
    for j in range(8):
        texts = [" ".join(words[: 2 + (j * 3 + r) % 13]) for r in range(2 + j % 3)]
        batch = dict(tokenizer(texts, padding=True, return_tensors="pt"))
        n = len(texts)
        route = {"task": "abc"[j % 3]} if j % 4 else {"task_ids": torch.arange(n) % 3}
        jobs.append((batch, route))

    def encode(job):
        batch, route = job
        with torch.no_grad():
            return model.encode(**batch, **route).last_hidden_state

    want = [encode(job) for job in jobs]  # one thread
    # the routes differ in what they compute, so a crossed route would show
    assert not torch.allclose(encode((jobs[1][0], {"task": "c"})), want[1], atol=1e-4)

    n_threads, rounds = 4, 6
    start = threading.Barrier(n_threads)
    got: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                j = (t * 3 + r) % len(jobs)
                got[t, r] = encode(jobs[j])
        except BaseException as e:  # reported below, in the test's own thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(got) == n_threads * rounds
    for (t, r), out in got.items():
        torch.testing.assert_close(out, want[(t * 3 + r) % len(jobs)], rtol=0, atol=1e-5)
    assert model.router.current is None  # nothing left behind in this thread either
