"""A mixed batch of all four built-in tasks (SST, CFIMDB, Quora cross-encoded, STS
bi-encoded) equals each task run alone, in eval mode, on both backbones; and training's
merged micro-batches carry bi-encoded tasks the same way."""

from __future__ import annotations

import pytest
import torch

from palbert import PalBert
from palbert.tasks.batching import merge_batches
from tests.tiny_run import PAIRS, SENT, four_tasks


def micro_batch(model: PalBert, name: str) -> dict:
    from palbert.inference import tokenize_inputs

    data = tokenize_inputs(model, name, SENT if name in ("sst", "cfimdb") else PAIRS)
    batch = data.collate(range(len(data)))
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("impl", ["transformers", "minbert"])
def test_mixed_batch_of_the_four_built_in_tasks_equals_each_alone(impl):
    model = four_tasks(impl)
    assert model.spec("sts").encoding == "bi" and model.spec("quora").encoding == "cross"
    parts = [(name, micro_batch(model, name)) for name in model.tasks]
    for _, b in parts:
        b["labels"] = torch.zeros(len(b["input_ids"]))
    batch, _ = merge_batches(parts, model.tasks)
    # interleave the rows round-robin over (task, side): tasks and sides mixed, each group's
    # rows in their order (the k-th first sentence of a bi task pairs with its k-th second)
    group = batch["task_ids"] * 2 + batch["side"]
    rank = torch.zeros_like(group)
    for g in torch.unique(group):
        rows = (group == g).nonzero(as_tuple=True)[0]
        rank[rows] = torch.arange(len(rows))
    order = torch.argsort(rank * 10 + group, stable=True)
    mixed = {k: v[order] for k, v in batch.items()}
    assert len(torch.unique(mixed["task_ids"][:8])) == 4  # the tasks really are mixed
    with torch.no_grad():
        outs = model(mixed)
        for name, b in parts:
            alone = model({k: v for k, v in b.items() if k != "labels"}, task=name)
            torch.testing.assert_close(outs[name], alone, rtol=1e-5, atol=1e-5)
    assert outs["sts"].shape[0] == len(PAIRS)


def test_a_bi_task_in_a_mixed_batch_needs_its_sides():
    model = four_tasks("transformers")
    b = micro_batch(model, "sts")
    batch, _ = merge_batches([("sts", {**b, "labels": torch.zeros(3)})], model.tasks)
    del batch["side"]
    with pytest.raises(ValueError, match="'sts' is bi-encoded.*'side'"):
        model(batch)
