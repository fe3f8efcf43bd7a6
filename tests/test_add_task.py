"""A task added later (recipes/add_task.yaml): a new task's PAL and head trained, frozen, on
the encoder another run fine-tuned and exported, then exported beside that run's tasks.

Real `palbert train` runs of a few steps on tiny data: the originals' files (and the encoder
folder) keep their bytes, ``PalBert.from_pretrained("DIR/backbone")`` loads every file, and the
added task predicts there what it predicted in its own run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palbert import PalBert
from palbert.cli import main
from palbert.recipe import load_recipe, recipe_from_dict
from palbert.taskfile import read_task_file

from .test_export_cli import SIM, SPECS, inputs, write_data

ROOT = Path(__file__).resolve().parents[1]
TINY = {"max_steps": 2, "batch_size": 2, "max_length": 16, "device": "cpu", "log_every": 1}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """(tasks folder, bytes before the added task, the added run, the first run)."""
    from palbert.training.run import train

    tmp = tmp_path_factory.mktemp("add")
    data = write_data(tmp / "data")
    first = train(
        recipe_from_dict(
            {
                "name": "first",
                "backbone": {"name": "minilm"},
                "tasks": SPECS[:2],  # sent, sim
                "train": {"mode": "full", **TINY},
                "eval": {"every": 2},
                "data_dir": str(data),
                "output_dir": str(tmp / "checkpoints"),
            }
        ),
        progress=False,
    )
    tasks = tmp / "tasks"
    assert main(["export", str(first), "--task", "all", "--out", str(tasks)]) == 0
    before = _bytes(tasks)
    added_spec = {"name": "simcos", **SIM, "head": {"type": "cosine"}}
    overrides = [
        f"backbone.name={tasks / 'backbone'}",
        f"tasks={json.dumps([added_spec])}",
        f"data_dir={data}",
        f"output_dir={tmp / 'checkpoints-added'}",
        "eval.every=2",
        *(f"train.{k}={v}" for k, v in TINY.items()),
    ]
    recipe = load_recipe(ROOT / "recipes" / "add_task.yaml", overrides)
    assert recipe.train.mode == "frozen" and recipe.module.kind == "pal"
    added = train(recipe, progress=False)
    assert main(["export", str(added), "--task", "all", "--out", str(tasks)]) == 0
    return tasks, before, added, first, data


def test_the_originals_keep_their_bytes_and_only_the_new_file_is_written(grown):
    tasks, before, *_ = grown
    after = _bytes(tasks)
    assert {k: after[k] for k in before} == before  # task files and backbone/ alike
    assert set(after) - set(before) == {"simcos.safetensors"}


def test_every_task_loads_on_the_exported_encoder_and_the_added_one_predicts_as_in_its_run(
    grown,
):
    from palbert.training.run import load_run

    tasks, _, added, first, _ = grown
    model = PalBert.from_pretrained(str(tasks / "backbone"))
    for f in sorted(tasks.glob("*.safetensors")):
        model.load_task(f)  # refuses a file of another encoder (fingerprint)
    assert set(model.heads) == {"sent", "sim", "simcos"}
    new = read_task_file(tasks / "simcos.safetensors").backbone
    old = read_task_file(tasks / "sent.safetensors").backbone
    assert new["fingerprint"] == old["fingerprint"] == model.fingerprint()
    assert new["fine_tuned"] is True  # so eval/predict look for backbone/ beside it
    own = load_run(added)[0]
    assert model.predict("simcos", inputs("simcos")) == own.predict("simcos", inputs("simcos"))
    ref = load_run(first)[0]
    for name in ("sent", "sim"):
        assert model.predict(name, inputs(name)) == ref.predict(name, inputs(name))


def test_eval_of_the_folder_serves_old_and_added_tasks_together(grown, tmp_path):
    tasks, _, _, _, data = grown
    out = tmp_path / "scores.json"
    assert main(["eval", str(tasks), "--data-dir", str(data), "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"sent", "sim", "simcos"}
