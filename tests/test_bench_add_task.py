"""The added-task measurement (bench/accuracy/add_task.py): what each of its four variants
trains, that they train the added task on equal micro-batches, the reuse of finished runs and
the table. The export beside the originals itself is tested on real runs in test_add_task.py."""

from __future__ import annotations

import json
from pathlib import Path

from bench.accuracy import add_task, run
from bench.accuracy.rows import ROWS, today_lr
from palbert.recipe import recipe_from_dict


def _ctx(tmp_path: Path) -> run.Context:
    return run.Context(
        budget=600,
        seed=1,
        tasks=[],
        data_dir=tmp_path / "data",
        results=tmp_path / "res",
        runs=tmp_path / "runs",
        quick=False,
        progress=False,
    )


def test_the_added_task_trains_frozen_on_the_encoder_or_fine_tuned_alone(tmp_path):
    ctx, root = _ctx(tmp_path), tmp_path / "res"
    quick = run.base_raw(run.Context(**{**ctx.__dict__, "tasks": ["sst", "quora", "sts"]}))
    added = add_task.single_raw("sst", "added", "tasks/backbone", 175, ctx, root)
    assert added["backbone"]["name"] == "tasks/backbone"
    assert added["train"]["mode"] == "frozen" and added["module"]["kind"] == "pal"
    assert added["train"]["max_steps"] == added["eval"]["every"] == 175
    assert added["train"]["seed"] == 1
    assert added["tasks"] == [quick["tasks"][0]]  # the quickstart's SST head
    stock = add_task.single_raw("sst", "frozen-stock", "minilm", 175, ctx, root)
    assert {k for k in added if added[k] != stock[k]} == {"name", "backbone", "output_dir"}
    alone = add_task.single_raw("sst", "separate", "minilm", 175, ctx, root)
    assert alone["train"]["mode"] == "full" and alone["module"] == {"kind": "none"}
    # the settings the table's rows use: their optimizer (today's rates, none swept here)
    # and the quickstart's batch
    rows_ctx = run.Context(**{**ctx.__dict__, "tasks": ["sst"]})
    for raw in (added, stock, alone):
        assert raw["optimizer"] == run.row_raw(ROWS["separate"], rows_ctx)["optimizer"]
        assert raw["train"]["batch_size"] == quick["train"]["batch_size"]
        assert raw["train"]["max_length"] == quick["train"]["max_length"]
        recipe_from_dict(raw)  # a valid recipe


def test_each_variant_follows_its_rows_swept_learning_rate(tmp_path):
    ctx, root = _ctx(tmp_path), tmp_path / "res"
    choice = {
        "rows": {
            "pal-frozen": {"param": "optimizer.task_lr", "chosen": 2e-3},
            "separate": {"param": "optimizer.lr", "chosen": 1e-4},
            "pal-full-annealed": {"param": "optimizer.lr", "chosen": 2.5e-5},
        }
    }
    run.write_json(run.choice_path(root), choice)
    assert add_task.single_raw("cfimdb", "added", "b", 9, ctx, root)["optimizer"]["task_lr"] == 2e-3
    alone = add_task.single_raw("cfimdb", "separate", "minilm", 9, ctx, root)["optimizer"]
    assert alone["lr"] == 1e-4 and alone["task_lr"] == 2e-4
    multi = add_task.multi_task_raw(("cfimdb", "sst", "quora", "sts"), ctx, root)
    assert multi["optimizer"]["lr"] == 2.5e-5


def test_the_multi_task_run_is_the_quickstart_row_on_the_tasks_in_its_order(tmp_path):
    ctx, root = _ctx(tmp_path), tmp_path / "res"
    multi = add_task.multi_task_raw(("cfimdb", "sst", "quora", "sts"), ctx, root)
    row = run.palbert_raw(
        ROWS["pal-full-annealed"],
        run.Context(**{**ctx.__dict__, "tasks": ["sst", "quora", "sts", "cfimdb"]}),
        {},
    )
    assert [t["name"] for t in multi["tasks"]] == ["sst", "quora", "sts", "cfimdb"]
    differ = {k for k in multi if multi[k] != row[k]}
    assert differ == {"name", "output_dir"}


def test_a_finished_run_is_reused_only_with_every_setting_asked_for():
    resolved = {
        "train": {"max_steps": 9, "seed": 0, "log_every": 1},
        "tasks": [{"name": "sst", "labels": ["0", "1"], "head": {"type": "mlp", "dropout": 0.1}}],
    }
    assert add_task.covers(resolved, {"train": {"max_steps": 9}, "tasks": [{"name": "sst"}]})
    assert not add_task.covers(resolved, {"train": {"max_steps": 10}})
    assert not add_task.covers(resolved, {"tasks": [{"name": "sst"}, {"name": "sts"}]})
    assert not add_task.covers(resolved, {"tasks": [{"head": {"type": "cosine"}}]})
    assert not add_task.covers(resolved, {"train": {"grad_accum": 2}})


def _run(task: str, dev: float, batches: int, mode: str, kind: str) -> dict:
    return {
        "run_dir": f"/runs/{task}-{mode}-{kind}",
        "dev": {task: {"accuracy": dev}},
        "primary": {task: "accuracy"},
        "report": {"backbone": 1000, "tasks": {task: {"module": 10, "head": 2}}},
        "batches": {task: batches},
        "wall_s": 1.0,
        "recipe": {"train": {"mode": mode}, "module": {"kind": kind}},
    }


def test_every_variant_trains_the_task_on_the_multi_task_runs_micro_batches(tmp_path, monkeypatch):
    ctx, root = _ctx(tmp_path), tmp_path / "res"
    trained = []

    def fake_run(raw, ctx):
        trained.append(raw)
        names = [t["name"] for t in raw["tasks"]]
        if len(names) > 1:  # a multi-task run: cfimdb got 71 of its micro-batches
            return _run("cfimdb", 0.75, 71, "full", "pal")
        mode, kind = raw["train"]["mode"], raw["module"]["kind"]
        return _run("cfimdb", 0.7, raw["train"]["max_steps"], mode, kind)

    monkeypatch.setattr(add_task, "run_or_reuse", fake_run)
    monkeypatch.setattr(add_task, "grow", lambda *a: {"originals_unchanged": True})
    monkeypatch.setattr("palbert.cli.main", lambda argv: 0)  # the export of the base run
    case = add_task.run_case("cfimdb", ctx, root)
    single = [r for r in trained if len(r["tasks"]) == 1]
    assert {r["train"]["max_steps"] for r in single} == {71} and case["micro_batches"] == 71
    folder = ctx.runs / "tasks-sst-quora-sts"
    assert single[0]["backbone"]["name"] == str(folder / "backbone")  # the base run's export
    v = case["variants"]
    assert v["added"]["new_stored"] == 12 and v["separate"]["new_stored"] == 1012
    assert v["separate"]["trainable"] == 1012 and v["added"]["trainable"] == 12
    assert v["multi-task"]["micro_batches"] == 71


def test_the_table_shows_every_variant_of_every_case(tmp_path):
    variant = {"score": 0.5, "new_stored": 270_000}
    case = {
        "base_tasks": ["sst", "quora", "sts"],
        "metric": "accuracy",
        "micro_batches": 71,
        "variants": {
            **{v: variant for v in add_task.VARIANTS},
            "separate": {"score": 0.81234, "new_stored": 22_700_000},
        },
    }
    run.write_json(add_task.results_path(tmp_path, 0), {"seed": 0, "cases": {"cfimdb": case}})
    table = add_task.table(tmp_path).splitlines()
    assert len(table) == 3 and all(add_task.NAMES[v] in table[0] for v in add_task.VARIANTS)
    assert table[2].startswith("| cfimdb accuracy (sst+quora+sts) | 0 | 71 | 0.500 |")
    assert "0.812" in table[2] and "0.27M / 22.7M" in table[2]


def test_the_docs_added_task_table_is_what_add_task_table_prints():
    """docs/benchmarks.md holds `run.py add-task-table` of the committed results."""
    files = sorted((run.RESULTS / "add-task").glob("seed-*.json"))
    assert files, "no committed add-task result (python -m bench.accuracy.run add-task)"
    docs = (run.ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert add_task.table(run.RESULTS) in docs
    for f in files:  # the checks of item 3 held on the real run
        for task, case in json.loads(f.read_text())["cases"].items():
            checks = case["checks"]
            assert checks["originals_unchanged"] and checks["one_fingerprint"], (f, task)
            assert checks["added_scores_as_in_its_run"], (f, task)
            assert checks["new_files"] == [f"{task}.safetensors"], (f, task)


def test_the_add_task_recipe_is_the_setting_its_committed_measurement_ran():
    """recipes/add_task.yaml trains at the task-module lr of the committed add-task
    measurement's added variant (the figures users read are for the recipe they run); a
    rerun after the `pal-frozen` sweep's choice moves both together."""
    import yaml

    measured = json.loads((run.RESULTS / "add-task" / "seed-0.json").read_text())
    lrs = {
        c["variants"]["added"]["recipe"]["optimizer"]["task_lr"] for c in measured["cases"].values()
    }
    recipe = yaml.safe_load((run.ROOT / "recipes" / "add_task.yaml").read_text())
    assert lrs == {recipe["optimizer"]["task_lr"]}


def test_skip_done_keeps_a_measurement_only_while_every_variants_rate_stands(tmp_path):
    ctx, root = _ctx(tmp_path), tmp_path / "res"

    def recipe(variant: str) -> dict:
        row = ROWS[add_task.RATE_ROW[variant]]
        key = row.sweep.param.split(".")[1]
        return {"optimizer": {key: today_lr(row)}}

    measured = {
        "budget": 600,
        "data_dir": str(ctx.data_dir),
        "quick": False,
        "cases": {
            c: {"variants": {v: {"recipe": recipe(v)} for v in add_task.VARIANTS}}
            for c in add_task.CASES
        },
    }
    run.write_json(add_task.results_path(root, ctx.seed), measured)
    assert add_task.done(ctx, root)
    assert not add_task.done(run.Context(**{**ctx.__dict__, "budget": 300}), root)
    # pal-frozen's sweep chose another rate: the added and frozen-stock variants are stale
    choice = {"param": "optimizer.task_lr", "chosen": 2e-3, "changed": True}
    run.write_json(root / "sweep" / "choice.json", {"rows": {"pal-frozen": choice}})
    assert not add_task.done(ctx, root)


def test_the_queue_runs_the_added_task_after_the_rows_whose_rates_it_reads():
    """queue.sh chooses and seeds pal-frozen, pal-full-annealed and separate before add-task
    (it trains at their chosen rates), then the issue's other rows: each row once."""
    script = (run.ROOT / "bench" / "accuracy" / "queue.sh").read_text()
    lists = {
        name: script.split(f'{name}="', 1)[1].split('"', 1)[0].split()
        for name in ("SIX_FIRST", "SIX_THEN", "OTHERS")
    }
    assert set(add_task.RATE_ROW.values()) <= set(lists["SIX_FIRST"])
    assert sorted(sum(lists.values(), [])) == sorted(ROWS)
    first, add, then = (script.index(s) for s in ("$SIX_FIRST;", "run add-task", "$SIX_THEN;"))
    assert first < add < then
