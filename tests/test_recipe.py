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


# -- one mechanism: every message names the key, the override or the line ------------------


def test_invalid_override_names_the_override_not_a_line(tmp_path):
    text = BASE + "module:\n  kind: pal\n"
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text), ["module.size=-3"])
    msg = str(e.value)
    assert msg == "module.size (command-line override module.size=-3) must be >= 1, not -3"
    with pytest.raises(RecipeError, match=r"^module\.progressive \(command-line override "):
        load_recipe(write(tmp_path, text), ["module.kind=adapter", "module.progressive={}"])


def test_misspelt_task_name_gets_a_suggestion(tmp_path):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, BASE.replace("  - sst", "  - stss")))
    msg = str(e.value)
    assert msg.startswith("tasks.0 (demo.yaml line 5): unknown task 'stss' (did you mean 'sts'?)")
    assert "built-in tasks are sst, cfimdb, quora, sts" in msg


def test_task_specs_are_checked_at_load_with_their_line(tmp_path):
    text = BASE.replace("    batch_size: 8", "    batch_size: 8\n    head: {poolin: mean}")
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, text))
    assert str(e.value).startswith(
        "unknown key tasks.1.head.poolin (demo.yaml line 8); did you mean 'tasks.1.head.pooling'?"
    )
    # what used to fail only at training time (a ZeroDivisionError, a huge allocation)
    with pytest.raises(RecipeError, match=r"^module\.heads \(demo\.yaml line 14\) must be >= 1"):
        load_recipe(write(tmp_path, BASE + "module:\n  heads: 0\n"))
    for hidden, problem in [("[1000000000000]", "must be <= 65536"), ("[1e12]", "must be int")]:
        with pytest.raises(RecipeError, match=rf"^tasks\.1\.head\.hidden\.0 .*{problem}"):
            load_recipe(write(tmp_path, BASE), [f"tasks.1.head={{type: mlp, hidden: {hidden}}}"])


@pytest.mark.parametrize("name", ["/abs/path/x", "../x", "a\nb", ".", "..", "a b", "x" * 65])
def test_task_and_run_names_are_strict(tmp_path, name):
    with pytest.raises(RecipeError, match=r"^tasks\.1\.name .*must be 1 to 64 letters"):
        load_recipe(write(tmp_path, BASE), [f"tasks.1.name={name!r}"])
    with pytest.raises(RecipeError, match=r"^name .*must be 1 to 64 letters"):
        recipe_from_dict({"name": name, "tasks": ["sst"]})


def test_alias_bomb_is_refused(tmp_path):
    # 6 levels of 9 aliases: 531,441 values from 8 lines (9 levels would exhaust memory)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = write(tmp_path, "\n".join(lines) + "\n" + BASE)
    with pytest.raises(RecipeError, match=r"expands to more than 100000 values"):
        load_recipe(bomb)
    loop = write(tmp_path, "x: &x [a, *x]\n" + BASE)
    with pytest.raises(RecipeError, match=r"expands to more than"):
        load_recipe(loop)
    # anchors used a few times are fine
    r = load_recipe(write(tmp_path, BASE.replace("  epochs: 2", "  epochs: &e 2\n  log_every: *e")))
    assert r.train.log_every == 2


def test_default_data_dir(tmp_path, monkeypatch):
    from palbert.tasks.paths import default_data_dir

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("PALBERT_DATA_DIR", str(data))
    assert default_data_dir() == data.resolve()
    monkeypatch.delenv("PALBERT_DATA_DIR")
    # ../shared/data/cs224n from the current folder
    shared = tmp_path / "shared" / "data" / "cs224n"
    shared.mkdir(parents=True)
    (shared / "sts-dev.csv").write_text("id\tsentence1\tsentence2\tsimilarity\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    assert default_data_dir(["sts-dev.csv"]) == shared.resolve()
    # resolve_data_dir (palbert train) uses the same rule
    r = recipe_from_dict({"tasks": [{"name": "sts", "files": {"dev": "sts-dev.csv"}}]})
    assert resolve_data_dir(r, needed=["sts-dev.csv"]) == shared.resolve()


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64 + 1)])
def test_a_seed_outside_what_numpy_and_torch_take_is_refused_by_key(tmp_path, seed):
    with pytest.raises(RecipeError, match=r"^train\.seed \(command-line override .*\) must be"):
        load_recipe(write(tmp_path, BASE), [f"train.seed={seed}"])
    assert load_recipe(write(tmp_path, BASE), [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1
