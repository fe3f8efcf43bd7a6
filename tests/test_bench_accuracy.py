"""The accuracy-table harness (bench/accuracy): rows run on the real data, their JSON, the
table and the plot. Two rows for two steps on the first rows of each file (--quick)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.accuracy import report, run
from bench.accuracy.rows import ROWS, get_row, result_lr, today_lr

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
    # with a learning rate to match (the sweep's choice): a result at another one is not done
    run.write_json(path, {**result, "tuning": {"value": 5e-5}})
    assert run.done(path, ctx, 5e-5) and not run.done(path, ctx, 1e-4)


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
    # a rerun that fails never replaces a finished result: its JSON goes to failed/
    finished = (results / "pal-frozen.json").read_bytes()
    monkeypatch.setitem(run.RUNNERS, "palbert", lambda *a: (_ for _ in ()).throw(OSError("x")))
    assert run.main(["pal-frozen", *common]) == 1
    assert (results / "pal-frozen.json").read_bytes() == finished
    assert json.loads((results / "failed" / "pal-frozen.json").read_text())["status"] == "failed"
    with pytest.raises(SystemExit, match="--dry-run goes with sweep"):
        run.main(["all", "--dry-run", *common])

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
    """recipes/quickstart.yaml trains exactly what the table's winning PAL row trains at the
    rate its sweep chose (issue 22: the quickstart follows the choice); only where the run
    goes, how often it logs and the data folder differ."""
    from palbert.recipe import load_recipe, recipe_from_dict

    annealed = get_row("pal-full-annealed")
    ctx = dataclasses.replace(_ctx(tmp_path), lr=run.row_lr(annealed, run.RESULTS))
    row = recipe_from_dict(run.palbert_raw(annealed, ctx, None))
    quick = load_recipe(run.BASE_RECIPE)
    differ = ("name", "output_dir", "data_dir")
    a, b = row.to_dict(), quick.to_dict()
    assert {k for k in a if a[k] != b[k]} <= set(differ) | {"train"}
    a["train"].pop("log_every"), b["train"].pop("log_every")
    assert a["train"] == b["train"]
    assert quick.sampler.kind == "annealed" and quick.train.mode == "full"


def test_other_seeds_go_to_their_own_folder_and_all_runs_each_seed(tmp_path, monkeypatch):
    assert run.seed_results(tmp_path, 0) == tmp_path  # the committed seed-0 JSONs stay put
    assert run.seed_results(tmp_path, 2) == tmp_path / "seed-2"
    calls = []
    real = run.main

    def fake(argv):
        if "--seeds" in argv:
            return real(argv)
        calls.append(argv)
        return 0

    monkeypatch.setattr(run, "main", fake)
    assert real(["all", "--seeds", "1,2", "--skip-done", "--results", str(tmp_path)]) == 0
    assert calls == [
        ["all", "--skip-done", "--results", str(tmp_path), "--seed", "1"],
        ["all", "--skip-done", "--results", str(tmp_path), "--seed", "2"],
    ]


# -- seeds: mean, sample standard deviation and number over results/ and results/seed-S/ --


def _result(row, seed, primary, lr=None, status="ok", examples=(100, 200, 80)):
    tasks = ["sst", "quora", "sts"]
    r = {
        "row": row,
        "status": status,
        "seed": seed,
        "tasks": tasks,
        "budget": {"micro_batches": 600, "batch_size": 32},
        "torch": "2.13.0+cpu",
        "machine": {"cpus": 2, "platform": "Linux"},
        "tuning": {
            "param": ROWS[row].sweep.param,
            "value": lr or today_lr(ROWS[row]),
        },
    }
    if status != "ok":
        return {**r, "error": "Traceback ...\nRuntimeError: out of memory"}
    return {
        **r,
        "dev_primary": dict(zip(tasks, primary, strict=True)),
        "dev_mean": sum(primary) / 3,
        "examples_per_task": dict(zip(tasks, examples, strict=True)),
        "cpu_s": 600.0 * (seed + 1),
        "wall_s": 300.0,
        "params": {
            "encoder": 100,
            "trainable_per_task": {t: 150 for t in tasks},
            "stored_multiple": 1.5,
        },
    }


def test_table_shows_mean_sample_sd_and_seeds_over_the_seed_folders(tmp_path):
    import numpy as np

    pal = {0: (0.44, 0.81, 0.87), 1: (0.46, 0.80, 0.88), 2: (0.45, 0.83, 0.86)}
    for seed, primary in pal.items():
        folder = run.seed_results(tmp_path, seed)
        run.write_json(folder / "pal-full.json", _result("pal-full", seed, primary))
    run.write_json(tmp_path / "separate.json", _result("separate", 0, (0.40, 0.70, 0.80)))
    run.write_json(tmp_path / "peft-lora.json", _result("peft-lora", 0, (0.42, 0.79, 0.85)))
    run.write_json(tmp_path / "seed-1" / "peft-lora.json", _result("peft-lora", 1, (), status="x"))

    groups = {g["row"]: g for g in report.summary(tmp_path)}
    g = groups["pal-full"]
    assert g["n"] == 3 and g["seeds"] == [0, 1, 2]
    means = [sum(p) / 3 for p in pal.values()]
    assert g["per_seed"]["dev_mean"] == dict(zip([0, 1, 2], means, strict=True))
    assert g["mean"]["dev_mean"] == pytest.approx(np.mean(means))
    assert g["sd"]["dev_mean"] == pytest.approx(np.std(means, ddof=1))  # sample sd
    sst = [p[0] for p in pal.values()]
    assert g["sd"]["sst"] == pytest.approx(np.std(sst, ddof=1))
    assert groups["separate"]["n"] == 1 and groups["separate"]["sd"]["dev_mean"] is None
    assert groups["peft-lora"]["n"] == 1 and list(groups["peft-lora"]["failed"]) == [1]

    text = report.table(tmp_path)
    lines = text.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {x.split("`")[1]: [c.strip() for c in x.strip("|").split("|")] for x in lines[2:5]}
    pal_cells = dict(zip(head, cells["pal-full"], strict=True))
    assert pal_cells["SST acc"] == f"{np.mean(sst):.3f} ± {np.std(sst, ddof=1):.3f}"
    dev = f"{np.mean(means):.4f} ± {np.std(means, ddof=1):.4f}"
    assert pal_cells["dev mean"] == f"**{dev}**"  # the best mean, in bold
    assert pal_cells["seeds"] == "3" and pal_cells["CPU min (wall)"] == "20.0 (5.0)"
    one = dict(zip(head, cells["separate"], strict=True))  # one seed: its value, no spread
    assert one["seeds"] == "1" and one["SST acc"] == "0.400" and "±" not in "".join(one.values())
    assert "seeds 0, 1, 2" in text
    assert "`peft-lora` seed 1 did not run: RuntimeError: out of memory" in text

    # seeds that ran at another learning rate are not averaged with the others
    run.write_json(
        tmp_path / "seed-2" / "separate.json", _result("separate", 2, (0.5,) * 3, lr=1e-4)
    )
    labels = [x.split("|")[1].strip() for x in report.table(tmp_path).splitlines()[2:6]]
    assert labels[1:3] == ["`separate` (optimizer.lr 5e-05)", "`separate` (optimizer.lr 0.0001)"]

    # a JSON in the wrong seed's folder is refused, naming it
    run.write_json(tmp_path / "seed-1" / "separate.json", _result("separate", 2, (0.5,) * 3))
    with pytest.raises(SystemExit, match=r"seed-1/separate.json: seed 2"):
        report.table(tmp_path)


def test_the_docs_accuracy_table_is_what_table_prints_from_the_committed_results():
    """docs/benchmarks.md's accuracy table is `run.py table` over the committed JSONs (seed 0
    in results/, other seeds in results/seed-S/): regenerate it when a seed is added."""
    docs = (run.ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert report.table(run.RESULTS) in docs
    # every committed result says (or its saved recipe says) the learning rate it ran with,
    # one of its row's sweep values, so --skip-done and the table can tell rates apart
    for path in sorted(run.RESULTS.rglob("*.json")):
        r = json.loads(path.read_text())
        if r.get("row") in ROWS and r.get("status") == "ok" and r.get("split", "dev") == "dev":
            assert result_lr(r) in ROWS[r["row"]].sweep.values, path


# -- the learning-rate sweep on a validation split carved from the training files ----------


def _data(folder, rows=200):
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for task, (train, dev) in {
        "sst": ("ids-sst-train.csv", "ids-sst-dev.csv"),
        "quora": ("quora-train.csv", "quora-dev.csv"),
        "sts": ("sts-train.csv", "sts-dev.csv"),
    }.items():
        lines = [f"{i}\tid{task}{i}\ttext {i}\t{i % 5}" for i in range(rows)]
        # the last row without a line break still becomes a row of its own
        (folder / train).write_text("\tid\tsentence\tsentiment\n" + "\n".join(lines))
        files[task] = (train, dev)
    return files


def test_the_validation_carve_is_fixed_disjoint_and_covers_the_training_file(tmp_path):
    files = _data(tmp_path / "src")  # no dev file there: the carve must not need one
    info = run.carve(tmp_path / "src", tmp_path / "a", files)
    run.carve(tmp_path / "src", tmp_path / "b", files)
    for task, (train, dev) in files.items():
        src = (tmp_path / "src" / train).read_text().splitlines()
        kept = (tmp_path / "a" / train).read_text().splitlines()
        held = (tmp_path / "a" / dev).read_text().splitlines()
        assert kept[0] == held[0] == src[0]  # the header on both
        assert sorted(kept[1:] + held[1:]) == sorted(src[1:])  # disjoint, covers the file
        assert len(held) - 1 == 20 == info[task]["validation_rows"]  # 10% of 200
        for name in (train, dev):  # a fixed seed: the same carve every time
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # each file is carved with its own draw (not the same row numbers in every task)
    held_ids = {
        t: [x.split("\t")[0] for x in (tmp_path / "a" / d).read_text().splitlines()[1:]]
        for t, (_, d) in files.items()
    }
    assert held_ids["sst"] != held_ids["quora"]


def test_every_row_sweeps_three_values_of_its_main_learning_rate_including_todays(tmp_path):
    plan = run.sweep_plan(list(ROWS))
    assert len(plan) == 3 * len(ROWS)
    for name, row in ROWS.items():
        values = [v for n, v in plan if n == name]
        assert len(set(values)) == 3
        raw = run.row_raw(row, _ctx(tmp_path))
        frozen = raw["train"]["mode"] == "frozen"
        # frozen rows tune the task-module lr, rows that fine-tune the encoder its lr
        assert row.sweep.param == ("optimizer.task_lr" if frozen else "optimizer.lr"), name
        assert today_lr(row) in values, name  # today's value is a trial


def _trial(row, lr, mean, split="validation"):
    r = {"row": row, "status": "ok", "split": split, "tuning": {"value": lr}, "seed": 0}
    r["budget"] = {"micro_batches": 600}
    return {**r, f"{split}_mean": mean}


def test_the_choice_is_the_best_validation_mean_and_never_a_dev_score():
    row = ROWS["peft-lora"]
    lo, today, hi = 2e-4, 6e-4, 2e-3
    assert row.sweep.values == (lo, today, hi)
    trials = {lo: _trial(row.name, lo, 0.70), today: _trial(row.name, today, 0.72)}
    trials[hi] = _trial(row.name, hi, 0.71)
    choice = run.choose(row, trials, default=lo)
    assert choice["chosen"] == today and choice["changed"] is True
    assert choice["validation_mean"] == {"0.0002": 0.70, "0.0006": 0.72, "0.002": 0.71}
    tie = {**trials, lo: _trial(row.name, lo, 0.72)}
    assert run.choose(row, tie, default=lo)["chosen"] == lo  # a tie keeps today's value
    with pytest.raises(SystemExit, match="not scored on the validation split"):
        run.choose(row, {**trials, hi: _trial(row.name, hi, 0.9, split="dev")}, default=lo)
    with pytest.raises(SystemExit, match="no trial at optimizer.task_lr = 0.002"):
        run.choose(row, {lo: trials[lo], today: trials[today]}, default=lo)


def test_sweep_runs_every_trial_on_the_carve_and_later_runs_use_the_choice(tmp_path, monkeypatch):
    _data(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--results", str(tmp_path / "res")]
    common += ["--runs", str(tmp_path / "runs"), "--no-progress"]
    calls = []
    score = {
        "pal-full": {2.5e-5: 0.60, 5e-5: 0.62, 1e-4: 0.65},
        "pal-frozen": {2e-4: 0.6, 6e-4: 0.5, 2e-3: 0.4},
    }

    def fake_child(argv):  # what a trial's process would write
        calls.append(argv)
        name, lr = argv[0], float(argv[argv.index("--lr") + 1])
        assert "--tune" in argv and "sweep" not in argv
        r = {
            **_trial(name, lr, score[name][lr]),
            "budget": {"micro_batches": 600},
            "seed": 0,
            "tasks": ["sst", "quora", "sts"],
            "data_dir": str((tmp_path / "runs" / "validation-data").resolve()),
            "validation_split": {"fraction": 0.1, "seed": 0},
        }
        run.write_json(tmp_path / "res" / "sweep" / f"{name}-lr{lr:g}.json", r)
        return 0

    monkeypatch.setattr(run, "child", fake_child)
    assert run.main(["sweep", "--only", "pal-full,pal-frozen", *common]) == 0
    assert [(c[0], float(c[3])) for c in calls] == run.sweep_plan(["pal-full", "pal-frozen"])
    choice = json.loads((tmp_path / "res" / "sweep" / "choice.json").read_text())
    assert choice["rows"]["pal-full"]["chosen"] == 1e-4 and choice["rows"]["pal-full"]["changed"]
    assert choice["rows"]["pal-frozen"]["chosen"] == 2e-4
    assert not choice["rows"]["pal-frozen"]["changed"]
    # the trials' dev file is carved from the training file (the data folder has no dev file)
    held = (tmp_path / "runs" / "validation-data" / "sts-dev.csv").read_text().splitlines()
    train = (tmp_path / "data" / "sts-train.csv").read_text().splitlines()
    assert len(held) == 21 and set(held) <= set(train)
    # trials of another budget do not make a choice
    stale = json.loads((tmp_path / "res" / "sweep" / "choice.json").read_text())
    monkeypatch.setattr(run, "child", lambda argv: 1)  # every trial of budget 300 fails
    assert run.main(["sweep", "--only", "pal-full", "--budget", "300", *common]) == 1
    assert json.loads((tmp_path / "res" / "sweep" / "choice.json").read_text()) == stale
    monkeypatch.setattr(run, "child", fake_child)
    # --skip-done runs no trial twice
    calls.clear()
    assert run.main(["sweep", "--only", "pal-full,pal-frozen", "--skip-done", *common]) == 0
    assert calls == []
    # so does one trial run alone, as queue.sh runs them; one not yet run is run
    ran = []
    monkeypatch.setattr(run, "run_row", lambda name, ctx: ran.append(ctx.lr) or {"status": "ok"})
    assert run.main(["pal-full", "--tune", "--lr", "1e-4", "--skip-done", *common]) == 0
    assert ran == []
    # a trial run in another checkout (its carve under that checkout's runs/) is done too;
    # one carved otherwise is not
    path = tmp_path / "res" / "sweep" / "pal-full-lr0.0001.json"
    r = json.loads(path.read_text())
    run.write_json(path, {**r, "data_dir": "/elsewhere/bench/accuracy/runs/validation-data"})
    assert run.main(["pal-full", "--tune", "--lr", "1e-4", "--skip-done", *common]) == 0
    assert ran == []
    run.write_json(path, {**r, "validation_split": {"fraction": 0.2, "seed": 0}})
    assert run.main(["pal-full", "--tune", "--lr", "1e-4", "--skip-done", *common]) == 0
    assert ran == [1e-4]
    run.write_json(path, r)
    ran.clear()
    assert run.main(["pal-full", "--tune", "--lr", "7e-5", "--skip-done", *common]) == 0
    assert ran == [7e-5]

    # a later run of the row (any seed) trains at the chosen value and says where it came from
    seen = {}
    monkeypatch.setattr(run, "run_row", lambda name, ctx: seen.update(ctx=ctx) or {"status": "ok"})
    assert run.main(["pal-full", "--seed", "2", *common]) == 0
    assert seen["ctx"].lr == 1e-4 and seen["ctx"].lr_source.endswith("sweep/choice.json")
    assert not seen["ctx"].tune and seen["ctx"].results == tmp_path / "res" / "seed-2"
    assert run.row_raw(ROWS["pal-full"], seen["ctx"])["optimizer"]["lr"] == 1e-4
    assert run.main(["pal-full-annealed", *common]) == 0  # not swept: today's value
    assert seen["ctx"].lr is None and seen["ctx"].lr_source.startswith("not swept")
    with pytest.raises(SystemExit, match="--lr goes with --tune"):
        run.main(["pal-full", "--lr", "1e-3", *common])


def test_sweep_dry_run_lists_three_trials_per_row(capsys):
    assert run.main(["sweep", "--dry-run", "--budget", "600"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{3 * len(ROWS)} trials, 3 per row")
    assert out[1] == "python -m bench.accuracy.run pal-full --tune --lr 2.5e-05 --budget 600"
    assert len(out) == 1 + 3 * len(ROWS)


@pytest.mark.data
def test_a_tune_trial_trains_on_the_carve_and_scores_validation_not_dev(data_dir, tmp_path):
    common = ["--quick", "--budget", "2", "--data", str(data_dir), "--no-progress"]
    common += ["--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs")]
    assert run.main(["pal-frozen", "--tune", "--lr", "0.0006", *common]) == 0
    r = json.loads((tmp_path / "res" / "sweep" / "pal-frozen-lr0.0006.json").read_text())
    assert r["status"] == "ok" and r["split"] == "validation"
    assert "dev" not in r and "dev_mean" not in r  # nothing in it reads as a dev score
    assert r["validation_mean"] == pytest.approx(sum(r["validation_primary"].values()) / 3)
    assert (
        r["tuning"]["value"] == 0.0006 and r["settings"]["recipe"]["optimizer"]["task_lr"] == 0.0006
    )
    assert r["data_dir"] == str((tmp_path / "runs" / "quick" / "validation-data").resolve())
    # quick data: 256 training rows a task, 230 train on, 26 score
    assert {t: s["rows"] for t, s in r["task_sizes"].items()} == {
        "sst": 230,
        "quora": 230,
        "sts": 230,
    }


def test_the_sweep_table_shows_every_trial_and_a_choice_only_when_all_three_ran(tmp_path):
    sweep = tmp_path / "sweep"
    frozen = ROWS["pal-frozen"]
    trials = {
        v: _trial("pal-frozen", v, m)
        for v, m in zip(frozen.sweep.values, (0.70, 0.72, 0.71), strict=True)
    }
    for v, r in trials.items():
        run.write_json(sweep / f"pal-frozen-lr{v:g}.json", r)
    run.write_json(sweep / "peft-lora-lr0.0006.json", _trial("peft-lora", 6e-4, 0.69))
    # a dev-scored file under a trial's name is not shown as a validation score, a failed
    # trial is not shown as pending, one of another budget is not shown as this sweep's
    run.write_json(sweep / "peft-lora-lr0.002.json", _trial("peft-lora", 2e-3, 0.9, "dev"))
    run.write_json(
        sweep / "pal-full-lr5e-05.json", {**_trial("pal-full", 5e-5, 0.7), "status": "failed"}
    )
    other = {**_trial("shared", 5e-5, 0.7), "budget": {"micro_batches": 6}}
    run.write_json(sweep / "shared-lr5e-05.json", other)
    choice = run.choose(frozen, trials, today_lr(frozen))
    run.write_json(sweep / "choice.json", {"rows": {"pal-frozen": choice}})
    lines = report.sweep_table(tmp_path).splitlines()
    row = next(x for x in lines if x.startswith("| pal-frozen |"))
    assert "0.0002*: 0.7000 · 0.0006: 0.7200 · 0.002: 0.7100" in row
    assert row.endswith("| 0.0006 (changed) |")
    row = next(x for x in lines if x.startswith("| peft-lora |"))
    assert "0.0002*: not run · 0.0006: 0.6900 · 0.002: not scored on validation" in row
    assert "5e-05*: failed" in next(x for x in lines if x.startswith("| pal-full |"))
    assert "5e-05*: other settings" in next(x for x in lines if x.startswith("| shared |"))
    assert row.endswith("| not chosen yet |")
    assert lines[-1].startswith(f"4 of {3 * len(ROWS)} trials run")
    assert len([x for x in lines if x.startswith("| ")]) == len(ROWS) + 1
    # `run.py rows` says the same: each row's sweep and its choice, where there is one
    rows = report.describe_rows(tmp_path)
    assert (
        "  sweep: optimizer.task_lr over 0.0002*, 0.0006, 0.002 (* today's); chosen 0.0006" in rows
    )
    assert rows.count("not chosen yet") == len(ROWS) - 1


def test_the_docs_sweep_table_is_what_sweep_table_prints():
    """docs/benchmarks.md holds `run.py sweep-table` of the committed sweep results."""
    docs = (run.ROOT / "docs" / "benchmarks.md").read_text()
    assert report.sweep_table(run.RESULTS) in docs


def test_the_table_says_whether_a_rows_rate_was_chosen_by_its_sweep(tmp_path):
    """A row's figure is at its chosen rate when its seeds ran at the value choice.json holds
    for it, including a choice that kept today's value (seeds from before the sweep count)."""
    for seed in (0, 1):
        folder = tmp_path / (f"seed-{seed}" if seed else "")
        run.write_json(folder / "pal-frozen.json", _result("pal-frozen", seed, (0.4,) * 3))
        run.write_json(folder / "peft-lora.json", _result("peft-lora", seed, (0.4,) * 3))
        run.write_json(folder / "pal-full.json", _result("pal-full", seed, (0.4,) * 3))

    def rates():
        return {g["row"]: report.rate(g) for g in report.seed_groups(tmp_path)}

    assert set(rates().values()) == {"`task_lr` 0.0002 (today's)", "`lr` 5e-05 (today's)"}
    keep = {"param": "optimizer.lr", "chosen": 5e-5, "changed": False}
    move = {"param": "optimizer.task_lr", "chosen": 2e-3, "changed": True}
    run.write_json(run.choice_path(tmp_path), {"rows": {"pal-full": keep, "pal-frozen": move}})
    assert rates() == {
        "pal-full": "`lr` 5e-05 (chosen)",  # today's value, kept by the sweep
        "pal-frozen": "`task_lr` 0.0002 (today's)",  # not yet rerun at the choice
        "peft-lora": "`task_lr` 0.0002 (today's)",  # not swept
    }
    run.write_json(tmp_path / "pal-frozen.json", _result("pal-frozen", 0, (0.4,) * 3, lr=2e-3))
    labels = {g.get("label", g["row"]): report.rate(g) for g in report.seed_groups(tmp_path)}
    assert labels["pal-frozen (optimizer.task_lr 0.002)"] == "`task_lr` 0.002 (chosen)"
    assert labels["pal-frozen (optimizer.task_lr 0.0002)"] == "`task_lr` 0.0002 (today's)"
    assert report.rate({"lr": None, "param": None, "tuned": False}) == "-"


def test_the_readmes_quickstart_table_is_seed_0_of_its_two_rows():
    """README.md's first table: the quickstart (`pal-full-annealed`) and separate models, seed
    0 as committed (a rerun at a newly chosen rate moves the README with it)."""
    readme = (run.ROOT / "README.md").read_text()
    for label, row in (
        ("quickstart (one encoder + 3 PALs)", "pal-full-annealed"),
        ("three separately fine-tuned MiniLMs, same examples", "separate"),
    ):
        r = json.loads((run.RESULTS / f"{row}.json").read_text())
        p, stored = r["dev_primary"], round(r["params"]["stored_multiple"], 2)
        line = f"| {label} | {p['sst']:.3f} | {p['quora']:.3f} | {p['sts']:.3f} | {stored:g} x"
        assert line in readme, line
