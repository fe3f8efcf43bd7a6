"""One inference path: a run's dev scores, `palbert eval RUN` and `palbert eval` of its
exported files are the same numbers; a model from any source can predict.

The quickstart's own recipe and task definitions run here on the first rows of each real
CS224N file (copied into a temporary folder at test time), at max_length 64 as the quickstart
trains - not the default 128 - so a length lost on the way would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palbert.cli import main

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"train": 48, "dev": 40}


def head_of_data(data_dir: Path, out: Path) -> Path:
    """The first rows of each CS224N train and dev file (header kept), under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for path in data_dir.glob("*.csv"):
        split = "dev" if "-dev" in path.name else "train" if "-train" in path.name else None
        if split is None:
            continue
        with path.open(encoding="utf-8") as fh:
            lines = [line for _, line in zip(range(ROWS[split] + 1), fh, strict=False)]
        (out / path.name).write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_dir):
    if not data_dir.is_dir():
        pytest.skip(f"real data not found at {data_dir}")
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    tmp = tmp_path_factory.mktemp("quick")
    data = head_of_data(data_dir, tmp / "data")
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            "train.max_steps=4",
            "eval.every=4",
            "train.max_length=64",
            "train.batch_size=8",
            f"output_dir={tmp / 'runs'}",
            f"data_dir={data}",
        ],
    )
    run = train(recipe, progress=False)
    return run, data


@pytest.mark.data
def test_dev_scores_equal_eval_of_the_run_and_of_its_files(quick_run, tmp_path, capsys):
    run, data = quick_run
    summary = json.loads((run / "summary.json").read_text())
    trained = summary["final"]["scores"]
    assert set(trained) == {"sst", "quora", "sts"}

    assert main(["eval", str(run), "--json", str(tmp_path / "run.json")]) == 0
    files = tmp_path / "files"
    assert main(["export", str(run), "--task", "all", "--out", str(files)]) == 0
    args = ["eval", str(files), "--data-dir", str(data), "--json", str(tmp_path / "files.json")]
    assert main(args) == 0

    assert json.loads((tmp_path / "run.json").read_text()) == trained
    assert json.loads((tmp_path / "files.json").read_text()) == trained
    from palbert.taskfile import read_task_file

    assert read_task_file(files / "sst.safetensors").spec["max_length"] == 64


@pytest.mark.data
def test_a_loaded_run_predicts(quick_run):
    from palbert.training.run import load_run

    run, _ = quick_run
    model, _, _ = load_run(run)
    assert not model.training
    assert model.spec("sst").max_length == 64
    rows = model.predict("sst", ["a gripping film", "dull"])
    assert [r["label"] in {"0", "1", "2", "3", "4"} for r in rows] == [True, True]
    scores = model.predict("sts", [("a man sings", "a man is singing")])
    assert len(scores) == 1 and isinstance(scores[0], float)


@pytest.mark.data
def test_eval_of_a_task_file_finds_the_default_data_folder(quick_run, tmp_path, monkeypatch):
    """`palbert eval FILE` looks for the data where `palbert train` does (here: the CS224N
    folder beside palbert's checkout), so no --data-dir is needed."""
    run, _ = quick_run
    assert main(["export", str(run), "--task", "sts", "--out", str(tmp_path)]) == 0
    out = tmp_path / "sts.safetensors"
    monkeypatch.chdir(tmp_path)  # not the repository: the default comes from palbert's source
    monkeypatch.delenv("PALBERT_DATA_DIR", raising=False)
    assert main(["eval", str(out), "--json", str(tmp_path / "e.json")]) == 0
    assert set(json.loads((tmp_path / "e.json").read_text())["sts"]) == {"pearson", "spearman"}


@pytest.mark.data
@pytest.mark.parametrize("name", ["sst", "cfimdb", "quora", "sts"])
def test_length_batches_waste_little_padding_on_the_dev_sets(name, data_dir, tokenizer):
    """Inference batches rows by length: under 10% of the tokens it runs are padding (64 rows
    a batch, the eval default, at the quickstart's max_length and at 128)."""
    from palbert.inference import length_batches, padding_waste
    from palbert.tasks import build_task

    task = build_task(name, data_dir=data_dir)
    for max_length in (64, 128):
        lengths = task.tokenized("dev", tokenizer, max_length=max_length).lengths
        assert padding_waste(lengths, 64) < 0.10
        batches = length_batches(lengths, 64)
        assert sorted(i for b in batches for i in b.tolist()) == list(range(len(lengths)))


def test_the_default_data_folder_serves_a_copy_without_the_test_split(tmp_path, monkeypatch):
    """The shared CS224N copy has no quora-test-student.csv: dev must still be found there."""
    from palbert.tasks import build_task

    data = tmp_path / "shared" / "data" / "cs224n"
    data.mkdir(parents=True)
    (data / "quora-dev.csv").write_text("id\tsentence1\tsentence2\tis_duplicate\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("PALBERT_DATA_DIR", raising=False)
    assert build_task("quora").data_dir == data.resolve()
