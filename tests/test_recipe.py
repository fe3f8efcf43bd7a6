"""Recipes: validation errors name the key and line, overrides, the data folder, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from palbert.recipe import (
    RecipeError,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    resolve_data_dir,
)

ROOT = Path(__file__).resolve().parents[1]

BASE = """\
name: demo
backbone:
  name: minilm
tasks:
  - sst
  - name: sts
    batch_size: 8
train:
  epochs: 2
  batch_size: 16
optimizer:
  lr: 3.0e-5
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "demo.yaml"
    p.write_text(text)
    return p


def test_valid_recipe_is_typed(tmp_path):
    r = load_recipe(write(tmp_path, BASE))
    assert r.name == "demo" and r.backbone.name == "minilm"
    assert [t.name for t in r.tasks] == ["sst", "sts"]
    assert r.train.epochs == 2 and r.optimizer.lr == 3e-5
    assert r.optimizer.betas == (0.9, 0.999)
    assert r.module.kind == "pal"


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    text = BASE.replace("  batch_size: 16", "  batch_sise: 16")
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    msg = str(e.value)
    assert "train.batch_sise" in msg and "demo.yaml line 10" in msg
    assert "did you mean 'train.batch_size'" in msg


def test_key_in_the_wrong_section_is_pointed_to(tmp_path):
    text = BASE.replace("  batch_size: 16", "  lr: 1.0e-4")
    with pytest.raises(RecipeError, match=r"train\.lr .*line 10.*did you mean 'optimizer\.lr'"):
        load_recipe(write(tmp_path, text))


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown key sampeler .*line 1.*'sampler'"):
        load_recipe(write(tmp_path, "sampeler: {kind: sqrt}\n" + BASE))


def test_wrong_type_names_key_and_expected_type(tmp_path):
    text = BASE.replace("  epochs: 2", "  epochs: two")
    with pytest.raises(RecipeError, match=r"train\.epochs \(demo\.yaml line 9\) must be int"):
        load_recipe(write(tmp_path, text))
    text = BASE.replace("  lr: 3.0e-5", "  lr: fast")
    with pytest.raises(RecipeError, match=r"optimizer\.lr .*must be float"):
        load_recipe(write(tmp_path, text))
    text = BASE + "  pcgrad: 1\n"  # under optimizer; wrong section and wrong type
    with pytest.raises(RecipeError, match="pcgrad"):
        load_recipe(write(tmp_path, text))


def test_bad_choice_suggests(tmp_path):
    with pytest.raises(RecipeError, match=r"sampler\.kind .*did you mean 'sqrt'"):
        load_recipe(write(tmp_path, BASE + "sampler: {kind: sqr}\n"))


def test_task_module_override_is_validated(tmp_path):
    text = BASE.replace("    batch_size: 8", "    batch_size: 8\n    module: {kind: adaptor}")
    with pytest.raises(RecipeError, match=r"tasks\.1\.module\.kind .*line 8.*'adapter'"):
        load_recipe(write(tmp_path, text))
    ok = load_recipe(write(tmp_path, BASE.replace("    batch_size: 8", "    module: {kind: none}")))
    assert ok.tasks[1].module.kind == "none" and ok.tasks[0].module is None


def test_yaml_1e_notation_is_a_float(tmp_path):
    r = load_recipe(write(tmp_path, BASE.replace("3.0e-5", "1e-5")))
    assert r.optimizer.lr == 1e-5


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides(tmp_path):
    r = load_recipe(
        write(tmp_path, BASE),
        [
            "train.max_steps=7",
            "optimizer.lr=1e-4",
            "tasks.0.batch_size=4",
            "module.progressive={start: 2, every: 5}",
            "sampler.kind=annealed",
        ],
    )
    assert r.train.max_steps == 7 and r.optimizer.lr == 1e-4
    assert r.tasks[0].spec == {"name": "sst", "batch_size": 4}
    assert r.module.progressive.start == 2 and r.module.progressive.every == 5
    assert r.sampler.kind == "annealed"


def test_override_errors_say_command_line(tmp_path):
    with pytest.raises(
        RecipeError, match=r"train\.epochs \(command-line override train\.epochs=soon\) must be int"
    ):
        load_recipe(write(tmp_path, BASE), ["train.epochs=soon"])
    with pytest.raises(RecipeError, match="unknown key train.epoch .*did you mean 'train.epochs'"):
        load_recipe(write(tmp_path, BASE), ["train.epoch=3"])
    with pytest.raises(RecipeError, match="key.sub=value"):
        load_recipe(write(tmp_path, BASE), ["train.epochs"])


def test_cross_key_checks(tmp_path):
    with pytest.raises(RecipeError, match="pcgrad.*micro_batch"):
        load_recipe(write(tmp_path, BASE), ["train.pcgrad=true"])
    with pytest.raises(RecipeError, match="steps_per_epoch"):
        load_recipe(write(tmp_path, BASE), ["sampler.epoch=fixed"])
    with pytest.raises(RecipeError, match="eval.metric"):
        load_recipe(write(tmp_path, BASE), ["eval.metric=quora.accuracy"])
    with pytest.raises(RecipeError, match="appears twice"):
        recipe_from_dict({"tasks": ["sst", "sst"]})


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(write(tmp_path, BASE), ["tasks.1.module={kind: adapter}"])
    again = recipe_from_dict(yaml.safe_load(dump_recipe(r)))
    again.source = r.source
    assert again == r


def test_data_dir_precedence_and_missing_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    r = load_recipe(write(tmp_path, BASE))
    monkeypatch.setenv("PALBERT_DATA_DIR", str(data))
    assert resolve_data_dir(r, needed=[]) == data.resolve()
    # the recipe key wins over the environment
    r2 = load_recipe(write(tmp_path, BASE), [f"data_dir={tmp_path / 'missing'}"])
    with pytest.raises(RecipeError) as e:
        resolve_data_dir(r2)
    msg = str(e.value)
    assert "data folder not found" in msg and "missing" in msg
    assert "ids-sst-train.csv" in msg and "sts-dev.csv" in msg and "CS224N" in msg


def test_missing_data_file_is_listed(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ids-sst-train.csv").write_text("\tid\tsentence\tsentiment\n")
    monkeypatch.setenv("PALBERT_DATA_DIR", str(data))
    with pytest.raises(RecipeError, match="lacks: ids-sst-dev.csv, sts-train.csv, sts-dev.csv"):
        resolve_data_dir(load_recipe(write(tmp_path, BASE)))


def test_default_data_dir_finds_shared_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PALBERT_DATA_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    r = load_recipe(write(tmp_path, BASE))
    shared = ROOT.parent / "shared" / "data" / "cs224n"
    if not shared.is_dir():
        pytest.skip("no ../shared/data/cs224n here")
    assert resolve_data_dir(r) == shared.resolve()


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    from palbert.tasks import build_task

    r = load_recipe(path)
    for entry in r.tasks:
        build_task(entry.spec)  # task specs (heads, encodings) are valid too
