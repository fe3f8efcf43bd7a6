"""Two CPU processes (gloo) train to the same weights as one process with the doubled batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from tests.tiny_run import write_recipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, recipe_path: str) -> None:
    # what torchrun sets for each process
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from palbert.recipe import load_recipe
    from palbert.training.run import train

    try:
        train(load_recipe(recipe_path), progress=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _weights(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (run,) = root.iterdir()
    assert (run / "COMPLETE").exists()
    return load_file(str(run / "last" / "weights.safetensors"))


def test_two_processes_equal_one_process_with_double_batch(tiny_setup, tmp_path, monkeypatch):
    backbone, data = tiny_setup  # 40 rows per task: 5 global batches of 8 either way
    monkeypatch.setenv("PALBERT_CACHE_DIR", str(tmp_path / "tokens"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    no_dropout = [
        {"name": "sst", "head": {"dropout": 0.0}},
        {"name": "sts", "head": {"dropout": 0.0}},
    ]
    common = dict(
        tasks=no_dropout,
        sampler={"kind": "sqrt"},
        eval={"every": 100},
    )
    one = write_recipe(
        tmp_path / "one", backbone, data, train={"batch_size": 8, "max_steps": 6}, **common
    )
    two = write_recipe(
        tmp_path / "two", backbone, data, train={"batch_size": 4, "max_steps": 6}, **common
    )
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_recipe(one), progress=False)
    finally:
        torch.set_num_threads(n)
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(two)), nprocs=2, join=True)

    a, b = _weights(tmp_path / "one" / "runs"), _weights(tmp_path / "two" / "runs")
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    from safetensors.torch import load_file

    # the logged losses are the whole batch's too, not one process's share of them
    def losses(root: Path) -> list[dict[str, float]]:
        (run,) = root.iterdir()
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]

    la, lb = losses(tmp_path / "one" / "runs"), losses(tmp_path / "two" / "runs")
    assert len(la) == len(lb) == 6
    for x, y in zip(la, lb, strict=True):
        assert x.keys() == y.keys() and all(y[t] == pytest.approx(x[t], rel=1e-4) for t in x)

    start = load_file(str(backbone / "model.safetensors"))
    for k, v in start.items():
        moved += not torch.equal(a["backbone." + k], v) if "backbone." + k in a else 0
    assert moved > 0  # the backbone trained (mode full), so the comparison means something
