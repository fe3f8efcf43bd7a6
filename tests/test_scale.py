"""bench/scale.py: the saved-for-backward byte counter and the run's step arithmetic."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bench import scale
from palbert.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pal_rr.yaml"


def test_saved_bytes_counts_each_storage_once_and_leaves_parameters_out():
    torch.manual_seed(0)
    lin = nn.Linear(8, 3)
    x = torch.randn(4, 8, requires_grad=True)
    with scale.SavedBytes(exclude=lin.parameters()) as counter:
        h = lin(x)  # saves x (4x8 fp32 = 128 bytes) and a view of the weight (left out)
        y = h * h  # saves h twice: one storage, 4x3 fp32 = 48 bytes
        y.view(-1)[:6].sum()  # a view saves nothing new
    assert counter.total == 128 + 48
    with scale.SavedBytes() as everything:
        lin(x).sum()
    assert everything.total == 128 + 3 * 8 * 4  # the weight's storage, when not excluded


def test_steps_follow_palberts_sampler_on_one_and_on_eight_processes():
    recipe = load_recipe(RECIPE)  # batch 32, round robin, epoch: sum, 3 epochs
    rows = {"sst": 100, "cfimdb": 33, "quora": 1000, "sts": 64}
    one = scale.plan(recipe, rows, world=1)
    # ceil(rows / 32) batches per pass; an epoch is their sum, tasks taken in turn
    assert one["batches_per_pass"] == {"sst": 4, "cfimdb": 2, "quora": 32, "sts": 2}
    assert one["steps_per_epoch"] == 40 and one["total_steps"] == 120
    assert one["draws_per_epoch"] == {"sst": 10, "cfimdb": 10, "quora": 10, "sts": 10}
    eight = scale.plan(recipe, rows, world=8)
    # 32 rows per process: global batches of 256, the partial one dropped, at least one
    assert eight["batches_per_pass"] == {"sst": 1, "cfimdb": 1, "quora": 3, "sts": 1}
    assert eight["steps_per_epoch"] == 6 and eight["total_steps"] == 18
    assert eight["draws_per_epoch"] == {"sst": 2, "cfimdb": 2, "quora": 1, "sts": 1}
    assert eight["rows_per_step"] == 256


def test_checkpointing_keeps_less_and_recomputes_the_layers():
    recipe = load_recipe(RECIPE)
    model, tasks = scale.build(recipe, "random:tiny", with_module=True)
    batch = scale.batch_of(model, tasks["quora"], 4, 16)
    plain = scale.measure_step(
        model, "quora", tasks["quora"], batch, checkpointing=False, bf16=False
    )
    ckpt = scale.measure_step(model, "quora", tasks["quora"], batch, checkpointing=True, bf16=False)
    layers = [k for k in plain["saved_bytes_by_layer"] if k.startswith("layer")]
    assert len(layers) == model.num_layers
    # the checkpoints keep at least each layer's input (4x16x64 fp32), far less than all
    assert model.num_layers * 4 * 16 * 64 * 4 <= ckpt["saved_bytes"] < plain["saved_bytes"] / 2
    assert ckpt["forward_flops"] == plain["forward_flops"]
    assert ckpt["backward_flops"] > plain["backward_flops"]  # the recomputed forwards


def test_cpu_attention_flops_are_counted():
    q = k = v = torch.randn(1, 1, 4, 8)
    with scale.flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 2 * (2 * 4 * 4 * 8)  # scores and context, 2 per MAC


def test_autocast_weight_copies_are_told_apart():
    lin = nn.Linear(8, 3)
    x = torch.randn(4, 8, requires_grad=True)
    with scale.SavedBytes(exclude=lin.parameters()) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.relu(lin(x)).float().sum()  # relu keeps its bf16 output, 4x3
    assert counter.total == 4 * 8 * 2 + 3 * 8 * 2 + 4 * 3 * 2  # copies of x and the weight
    assert counter.weight_casts == 3 * 8 * 2
