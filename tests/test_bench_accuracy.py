"""The accuracy-table harness (bench/accuracy): rows run on the real data, their JSON, the
table and the plot. Two rows for two steps on the first rows of each file (--quick)."""

from __future__ import annotations

import json

import pytest

from bench.accuracy import report, run
from bench.accuracy.rows import ROWS, get_row

# MiniLM (H=384, 6 layers): a PAL with d_pal=102 and shared V^E/V^D, and LoRA r=8 on query
# and value (A: 8x384, B: 384x8, no bias) in every layer
PAL_PARAMS = (384 * 102 + 102) + (102 * 384 + 384) + 6 * 3 * (102 * 102 + 102)
LORA_PARAMS = 6 * 2 * (8 * 384 + 384 * 8)


def test_split_keeps_the_total_and_the_proportions():
    assert run.split(600, {"sst": 252, "quora": 500, "sts": 174}) == {
        "sst": 163,
        "quora": 324,
        "sts": 113,
    }
    assert sum(run.split(7, {"a": 1, "b": 1, "c": 1}).values()) == 7
    assert run.split(2, {"a": 1, "b": 1, "c": 1}) == {"a": 1, "b": 1, "c": 1}  # each >= 1


def test_examples_seen_counts_the_partial_batch_of_each_pass():
    # 70 rows in batches of 32: 32, 32, 6 per pass
    assert run.examples_seen(2, 70, 32) == 64
    assert run.examples_seen(3, 70, 32) == 70
    assert run.examples_seen(4, 70, 32) == 102


def _ctx(tmp_path, budget=600):
    return run.Context(
        budget=budget,
        seed=0,
        tasks=["sst", "quora", "sts"],
        data_dir=tmp_path,
        results=tmp_path,
        runs=tmp_path,
        quick=False,
        progress=False,
    )


def test_rows_share_the_budget_per_task(tmp_path):
    sizes = {
        "sst": {"rows": 8044, "batch_size": 32, "batches": 252},
        "quora": {"rows": 15998, "batch_size": 32, "batches": 500},
        "sts": {"rows": 5540, "batch_size": 32, "batches": 174},
    }
    raw = run.palbert_raw(get_row("shared-pcgrad"), _ctx(tmp_path), sizes)
    assert raw["train"]["grad_accum"] == 3 and raw["train"]["pcgrad"] is True
    assert raw["train"]["max_steps"] == raw["eval"]["every"] == 200
    assert raw["sampler"] == {
        "kind": "round_robin",
        "epoch": "sum",
        "steps_per_epoch": None,
        "per": "micro_batch",
    }
    # every task's micro-batches come from the PAL rows' sampler plan (palbert's proportional
    # draws for seed 0); the shared rows' batch sizes (96 rows a step) follow those shares
    counts = run.plan_counts(_ctx(tmp_path), sizes)
    assert sum(counts.values()) == 600
    for t, n in counts.items():  # proportional: near 600 * batches / 926
        assert abs(n - 600 * sizes[t]["batches"] / 926) < 0.2 * n
    bs = [t["batch_size"] for t in raw["tasks"]]
    assert sum(bs) == 96 and bs == [run.split(96, counts)[t] for t in ("sst", "quora", "sts")]
    annealed = run.palbert_raw(get_row("pal-full-annealed"), _ctx(tmp_path), sizes)
    assert annealed["train"]["max_steps"] == 600 and annealed["sampler"]["steps_per_epoch"] == 200
    # every row starts from the same base: only what rows.py lists differs
    full = run.palbert_raw(get_row("pal-full"), _ctx(tmp_path), sizes)
    frozen = run.palbert_raw(get_row("pal-frozen"), _ctx(tmp_path), sizes)
    assert full["optimizer"] == frozen["optimizer"] and full["tasks"] == frozen["tasks"]
    assert {k for k in full if full[k] != frozen[k]} == {"name", "train"}


def test_all_skips_only_rows_done_with_the_same_budget_seed_and_tasks(tmp_path):
    ctx = _ctx(tmp_path)
    path = tmp_path / "pal-full.json"
    assert not run.done(path, ctx)
    result = {
        "status": "ok",
        "budget": {"micro_batches": 600, "batch_size": 32},
        "seed": 0,
        "tasks": ["sst", "quora", "sts"],
        "data_dir": str(tmp_path),
    }
    run.write_json(path, result)
    assert run.done(path, ctx)
    for key, value in (("seed", 1), ("status", "failed"), ("tasks", ["sst"])):
        run.write_json(path, {**result, key: value})
        assert not run.done(path, ctx), key
    assert not run.done(path, _ctx(tmp_path, budget=300))


@pytest.mark.data
def test_two_rows_two_steps_json_table_and_plot(data_dir, tmp_path, monkeypatch):
    results, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--quick", "--budget", "2", "--data", str(data_dir), "--no-progress"]
    common += ["--results", str(results), "--runs", str(runs)]
    assert run.main(["pal-frozen", *common]) == 0
    assert run.main(["peft-lora", *common]) == 0

    pal = json.loads((results / "pal-frozen.json").read_text())
    lora = json.loads((results / "peft-lora.json").read_text())
    for r in (pal, lora):
        assert r["status"] == "ok" and r["tasks"] == ["sst", "quora", "sts"]
        assert set(r["dev"]["sst"]) == {"accuracy"} and "pearson" in r["dev"]["sts"]
        assert r["dev_primary"] == {
            "sst": r["dev"]["sst"]["accuracy"],
            "quora": r["dev"]["quora"]["accuracy"],
            "sts": r["dev"]["sts"]["pearson"],
        }
        assert r["dev_mean"] == pytest.approx(sum(r["dev_primary"].values()) / 3)
        assert r["steps"] == 2 and sum(r["batches_per_task"].values()) == 2
        # quick data: 256 training rows a task, so every batch is full
        assert r["examples_per_task"] == {
            t: 32 * r["batches_per_task"].get(t, 0) for t in ("sst", "quora", "sts")
        }
        assert r["seed"] == 0 and r["torch"] and r["machine"]["cpus"] >= 1
        assert r["budget"] == {"micro_batches": 2, "batch_size": 32}
        assert r["wall_s"] > 0 and r["quick"] is True
        assert r["command"] == f"python -m bench.accuracy.run {r['row']} " + " ".join(common)
    # the LoRA row replays the task plan of the multi-task rows: the same batches per task
    assert lora["batches_per_task"] == {
        t: pal["batches_per_task"].get(t, 0) for t in ("sst", "quora", "sts")
    }

    enc = pal["params"]["encoder"]
    heads = pal["params"]["head_per_task"]
    assert pal["params"]["module_per_task"] == {t: PAL_PARAMS for t in heads}
    assert pal["params"]["trainable_per_task"] == {t: PAL_PARAMS + heads[t] for t in heads}
    assert pal["params"]["stored_multiple"] == pytest.approx((enc + 3 * PAL_PARAMS) / enc)
    assert lora["params"]["encoder"] == enc and lora["params"]["head_per_task"] == heads
    assert lora["params"]["module_per_task"] == {t: LORA_PARAMS for t in heads}
    assert lora["params"]["stored_multiple"] == pytest.approx((enc + 3 * LORA_PARAMS) / enc)
    assert pal["settings"]["recipe"]["train"]["max_steps"] == 2
    assert lora["settings"]["method"] == ROWS["peft-lora"].method
    assert "disjoint" in lora["note"]

    # a row that cannot run says why, in its JSON and in the table
    monkeypatch.setattr(run, "ensure_adapters_venv", lambda: (False, "pip: ResolutionImpossible"))
    assert run.main(["adapterhub", *common]) == 1
    hub = json.loads((results / "adapterhub.json").read_text())
    assert hub["status"] == "failed" and "ResolutionImpossible" in hub["error"]

    text = report.table(results)
    lines = text.splitlines()
    assert lines[0].startswith("| row | SST acc | Quora acc | STS Pearson | dev mean")
    pal_line = next(x for x in lines if x.startswith("| `pal-frozen`"))
    assert f"| {pal['dev_primary']['sts']:.3f} |" in pal_line
    best = max(pal["dev_mean"], lora["dev_mean"])  # the best dev mean alone is bold
    bold = [x for x in lines if x.startswith("| `") and "**" in x]
    assert len(bold) == 1 and f"**{best:.4f}**" in bold[0]
    columns = lines[0].count("|") - 1
    hub_line = next(x for x in lines if x.startswith("| `adapterhub`"))
    assert hub_line.count(" - |") == columns - 1  # no numbers for a row that did not run
    assert "`adapterhub` did not run" in text and "Quick smoke-test" in text
    # rows in the order of rows.py
    order = [x.split("`")[1] for x in lines if x.startswith("| `")]
    assert order == ["pal-frozen", "peft-lora", "adapterhub"]

    png = report.plot(results, tmp_path / "acc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_quickstart_is_the_annealed_pal_row(tmp_path):
    """recipes/quickstart.yaml trains exactly what the table's winning PAL row trains; only
    where the run goes, how often it logs and the data folder differ."""
    from palbert.recipe import load_recipe, recipe_from_dict

    row = recipe_from_dict(run.palbert_raw(get_row("pal-full-annealed"), _ctx(tmp_path), None))
    quick = load_recipe(run.BASE_RECIPE)
    differ = ("name", "output_dir", "data_dir")
    a, b = row.to_dict(), quick.to_dict()
    assert {k for k in a if a[k] != b[k]} <= set(differ) | {"train"}
    a["train"].pop("log_every"), b["train"].pop("log_every")
    assert a["train"] == b["train"]
    assert quick.sampler.kind == "annealed" and quick.train.mode == "full"
