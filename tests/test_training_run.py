"""Runs: every check before anything is written; a refused or damaged resume changes nothing;
one writer per run folder; nothing non-finite is saved; a loaded run predicts at the length
it trained with and has the PALs of its last step; the training rate leaves evaluation out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.tiny_run import interrupted_run, one_line_error, snapshot, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread", "token_cache")

TRAINING = Path(__file__).resolve().parents[1] / "palbert" / "training"


def nothing_written(tmp_path: Path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_tokenizer_larger_than_the_encoder_is_refused_before_anything_is_written(
    tiny_setup,
    tmp_path,
    capsys,
):
    from palbert.backbones import BackboneError
    from palbert.cli import main
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    _, data = tiny_setup
    path = write_recipe(tmp_path, "random:tiny", data, train={"max_steps": 1})
    with pytest.raises(BackboneError, match="vocab_size is 1,000"):
        train(load_recipe(path), progress=False)
    assert nothing_written(tmp_path)
    assert main(["train", str(path), "--no-progress"]) == 2
    assert "30,522 tokens" in one_line_error(capsys.readouterr().err)
    assert nothing_written(tmp_path)


def test_a_max_length_beyond_the_encoders_positions_is_refused(
    tiny_setup,
    tmp_path,
    capsys,
):
    from palbert.cli import main

    backbone, data = tiny_setup  # 64 positions
    path = write_recipe(tmp_path, backbone, data, tasks=["sst", {"name": "sts", "max_length": 65}])
    assert main(["train", str(path), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "task 'sts': max_length 65 is longer than the encoder's 64 positions" in line
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"train": {"max_length": 1}}, "max_length 1 leaves no room for text"),
        (  # [CLS] a [SEP] b [SEP]: three special tokens in a cross-encoded pair
            {"tasks": ["sst", {"name": "sts", "max_length": 3}]},
            "task 'sts': max_length 3 leaves no room for text after the 3 special tokens",
        ),
        ({"train": {"seed": -1}}, "train.seed"),
    ],
)
def test_a_max_length_or_seed_that_cannot_work_is_refused_before_the_run_folder(
    tiny_setup, tmp_path, capsys, sections, message
):
    from palbert.cli import main

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, **sections)
    assert main(["train", str(path), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert message in line and ("max_length" in line or "seed" in line)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "tasks, sampler, train, message",
    [
        (  # one task per step: merging would change nothing
            ["sst", "sts"],
            {"mixed": True, "per": "step"},
            {"grad_accum": 1},
            "sampler.per: step",
        ),
        (  # one micro-batch per step: the same
            ["sst", "sts"],
            {"mixed": True, "per": "micro_batch"},
            {"grad_accum": 1},
            "train.grad_accum >= 2",
        ),
    ],
)
def test_mixed_batches_that_cannot_work_are_refused_before_anything_is_written(
    tiny_setup,
    tmp_path,
    capsys,
    tasks,
    sampler,
    train,
    message,
):
    from palbert.cli import main

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, tasks=tasks, sampler=sampler, train=train)
    assert main(["train", str(path), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "tiny.yaml: sampler.mixed" in line and message in line
    assert nothing_written(tmp_path)


def test_mixed_batches_train_when_they_can(tiny_setup, tmp_path):
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    backbone, data = tiny_setup
    path = write_recipe(
        tmp_path,
        backbone,
        data,
        sampler={"mixed": True, "per": "micro_batch"},
        train={"grad_accum": 2, "max_steps": 2},
        eval={"every": 2},
    )
    run = train(load_recipe(path), progress=False)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize(
    "device, message",
    [("foo", "is not a device"), ("cuda", "no CUDA device")],
)
def test_a_device_that_cannot_work_is_refused(
    tiny_setup,
    tmp_path,
    capsys,
    device,
    message,
):
    from palbert.cli import main

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data)
    assert main(["train", str(path), f"train.device={device}", "--no-progress"]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["tasks.0.head.hidden=[32]"], "hidden sizes need type 'mlp'"),
        # a head of another shape cannot take the checkpoint's weights
        (["tasks.0.head.type=mlp", "tasks.0.head.hidden=[32]"], "does not fit the model"),
        (["sampler.kind=uniform"], "sampler state does not match"),
    ],
)
def test_a_refused_resume_leaves_the_run_byte_identical(
    tiny_setup,
    tmp_path,
    capsys,
    overrides,
    message,
):
    from palbert.cli import main

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), *overrides, "--no-progress"]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before
    # the run still resumes as it was
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_a_resume_on_changed_data_is_refused_unless_the_user_says_to_go_on(
    tiny_setup, tmp_path, capsys
):
    import shutil

    from palbert.cli import main

    backbone, shared = tiny_setup
    data = tmp_path / "data"
    shutil.copytree(shared, data)
    path, run = interrupted_run(tmp_path, backbone, data)
    record = json.loads((run / "data.json").read_text())["tasks"]
    assert set(record) == {"sst", "sts"} and set(record["sst"]) == {"train", "dev"}
    # two rows fewer and every label flipped: the same number of batches, other data
    train_file = data / "ids-sst-train.csv"
    header, *rows = train_file.read_text().splitlines()
    flipped = [r.rsplit("\t", 1)[0] + "\t" + str(4 - int(r.rsplit("\t", 1)[1])) for r in rows]
    train_file.write_text("\n".join([header, *flipped[:-2]]) + "\n")
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert f"task 'sst' split 'train': {train_file.resolve()} changed" in line
    assert "sts" not in line and "--allow-data-change" in line
    assert snapshot(run) == before
    # the user says to go on: it does, warns, and records the data it now trains on
    assert (
        main(["train", str(path), "--resume", str(run), "--no-progress", "--allow-data-change"])
        == 0
    )
    assert "resuming" in capsys.readouterr().err  # a warning naming the flag and the files
    assert (run / "COMPLETE").exists()
    now = json.loads((run / "data.json").read_text())["tasks"]
    assert now["sst"]["train"]["size"] == train_file.stat().st_size
    assert now["sst"]["train"]["sha256"] != record["sst"]["train"]["sha256"]


def test_a_run_without_a_data_record_still_resumes_with_a_warning(tiny_setup, tmp_path, capsys):
    from palbert.cli import main

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    (run / "data.json").unlink()  # as a run of an older palbert
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 0
    warnings = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "records no fingerprint of its data" in warnings[0]
    assert (run / "data.json").is_file() and (run / "COMPLETE").exists()


def test_a_complete_run_is_not_resumed_and_a_finished_one_keeps_its_scores(
    tiny_setup,
    tmp_path,
    capsys,
):
    from palbert.cli import main
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data)
    with pytest.raises(TrainingInterrupted):  # killed right after the final checkpoint
        train(load_recipe(path), progress=False, stop_at_step=6)
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "summary.json").exists()
    assert train(load_recipe(path), resume=run, progress=False) == run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["step"] == 6 and summary["best"] is not None
    assert summary["time_s"] > 0
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 2
    assert "is complete" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before


def test_an_accepted_override_on_resume_is_kept_in_the_recipe(tiny_setup, tmp_path):
    import yaml

    from palbert.cli import main

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    assert main(["train", str(path), "--resume", str(run), "train.log_every=2"]) == 0
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["log_every"] == 2
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 4, 6]


def test_a_loaded_run_predicts_at_the_length_it_trained_with(tiny_setup, tmp_path):
    from palbert.recipe import load_recipe
    from palbert.training.run import load_run, train

    backbone, data = tiny_setup
    path = write_recipe(
        tmp_path,
        backbone,
        data,
        tasks=["sst", {"name": "sts", "max_length": 12}],
        train={"max_steps": 2, "max_length": 10},
        eval={"every": 2},
    )
    run = train(load_recipe(path), progress=False)
    model, tasks, _ = load_run(run)
    assert model.specs["sst"].max_length == 10 and model.specs["sts"].max_length == 12
    assert model.specs["sst"].labels == tuple(tasks["sst"].labels)
    (pred,) = model.predict("sst", ["the movie was very good"])
    assert pred["label"] in tasks["sst"].labels
    (score,) = model.predict("sts", [("a cat sat", "a dog sat")])
    assert isinstance(score, float)


def test_the_sampler_is_built_once(tiny_setup, tmp_path, monkeypatch):
    from palbert.recipe import load_recipe
    from palbert.training import prepare as prepare_mod
    from palbert.training import run as run_mod

    built = []
    original = prepare_mod.TaskSampler

    def counting(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare_mod, "TaskSampler", counting)
    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, train={"max_steps": 1}, eval={"every": 1})
    run_mod.train(load_recipe(path), progress=False)
    assert len(built) == 1


def test_the_training_rate_leaves_out_evaluation_and_checkpoints(
    tiny_setup,
    tmp_path,
    monkeypatch,
    capsys,
):
    """A fake clock: each optimizer step takes 1 s, each evaluation 1000 s."""
    import tqdm.std

    from palbert.recipe import load_recipe
    from palbert.training import run as run_mod
    from palbert.training.loop import Trainer

    now = [0.0]
    monkeypatch.setattr(run_mod, "_clock", lambda: now[0])
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    step, dev_scores = Trainer.step, run_mod.dev_scores

    def timed_step(self, window):
        now[0] += 1.0
        return step(self, window)

    def timed_eval(run):
        now[0] += 1000.0
        return dev_scores(run)

    monkeypatch.setattr(Trainer, "step", timed_step)
    monkeypatch.setattr(run_mod, "dev_scores", timed_eval)
    backbone, data = tiny_setup
    run = run_mod.train(load_recipe(write_recipe(tmp_path, backbone, data)), progress=True)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records if r["type"] == "train"]
    assert rates == [4.0] * 6  # batch size 4, one batch a second, evaluations or not
    assert "6/6 [00:06<00:00" in capsys.readouterr().err  # the bar's elapsed time too
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_s"] == 2006.0  # the run's wall time still counts everything


@pytest.mark.parametrize("which", ["best", "last"])
def test_a_loaded_run_has_the_pals_of_its_last_step(tiny_setup, tmp_path, which):
    from palbert.recipe import load_recipe
    from palbert.training.run import load_run, train

    backbone, data = tiny_setup
    path = write_recipe(
        tmp_path,
        backbone,
        data,
        module={"kind": "pal", "progressive": {"start": 1, "every": 4}},
        train={"max_steps": 4},
        eval={"every": 4},
    )
    run = train(load_recipe(path), progress=False)
    state = json.loads((run / "last" / "state.json").read_text())
    assert (state["progress_step"], state["progress_epoch"]) == (3, 0)
    model, _, _ = load_run(run, which=which)
    assert model.task_modules["sst"].active == {1}  # step 4 trained under 3 completed steps


@pytest.mark.parametrize("fault", ["gradient", "weight"])
def test_nothing_non_finite_is_saved(
    tiny_setup,
    tmp_path,
    monkeypatch,
    capsys,
    fault,
):
    """A NaN gradient (step 3) or weight (after step 3) stops the run before step 3's
    checkpoint; the last checkpoint is step 2's and finite."""
    from palbert.cli import main
    from palbert.training.loop import Trainer
    from palbert.training.run import load_run

    backward, apply = Trainer.backward, Trainer.apply

    def poisoned_backward(self, window):
        out = backward(self, window)
        if fault == "gradient" and self.step_count == 2:
            next(p for p in self.params if p.grad is not None).grad.fill_(float("nan"))
        return out

    def poisoned_apply(self, done):
        res = apply(self, done)
        if fault == "weight" and self.step_count == 3:
            self.params[-1].data.fill_(float("inf"))
        return res

    monkeypatch.setattr(Trainer, "backward", poisoned_backward)
    monkeypatch.setattr(Trainer, "apply", poisoned_apply)
    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, train={"save_every": 1}, eval={"every": 2})
    assert main(["train", str(path), "--no-progress"]) == 1
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("palbert train: error")]
    assert len(line) == 1 and "optimizer step 3" in line[0] and "last good checkpoint" in line[0]
    assert ("gradient norm is nan" if fault == "gradient" else "is not finite") in line[0]
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "last" / "state.json").read_text())["step_count"] == 2
    for which in ("last", "best"):
        model, _, _ = load_run(run, which=which)
        assert all(torch.isfinite(p).all() for p in model.parameters()), which
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["type"] == "error" and records[-1]["step"] == 3
    assert [r["step"] for r in records if r["type"] == "eval"] == [2]


def test_a_run_being_trained_is_not_resumed_twice(tiny_setup, tmp_path, capsys):
    from palbert.cli import main
    from palbert.training.runfolder import hold

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    held = hold(run)  # as another `palbert train --resume` would
    try:
        before = snapshot(run)
        capsys.readouterr()
        assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 2
        line = one_line_error(capsys.readouterr().err)
        assert f"being trained by process {os.getpid()}" in line
        assert snapshot(run) == before
    finally:
        held.close()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 0


def test_resume_removes_what_a_killed_run_left_behind(tiny_setup, tmp_path):
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    (run / ".last.tmp-x1y2").mkdir()
    (run / ".last.tmp-x1y2" / "weights.safetensors").write_bytes(b"half")
    (run / ".best.safetensors.abc123.tmp").write_bytes(b"half")
    (run / ".summary.json.q.tmp").write_text("{")
    train(load_recipe(path), resume=run, progress=False)
    assert not [p.name for p in run.glob(".*")]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: (run / "last" / "state.json").write_text('{"format": 1, "step'), "damaged"),
        (lambda run: (run / "last" / "weights.safetensors").write_bytes(b"\0" * 9), "damaged"),
        (
            lambda run: (run / "last" / "state.json").write_text(
                (run / "last" / "state.json")
                .read_text()
                .replace('"step_count": 2', '"step_count": 1000000000000')
            ),
            "at step 1000000000000, outside the run's 6 steps",
        ),
    ],
)
def test_a_damaged_checkpoint_is_refused_in_one_line(
    tiny_setup,
    tmp_path,
    capsys,
    damage,
    message,
):
    from palbert.cli import main

    path, run = interrupted_run(tmp_path, *tiny_setup)
    damage(run)
    before = snapshot(run)
    capsys.readouterr()
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before and not (run / "COMPLETE").exists()


def test_ctrl_c_says_how_to_continue(tiny_setup, tmp_path, monkeypatch, capsys):
    from palbert.cli import main
    from palbert.training.loop import Trainer

    step = Trainer.step

    def interrupted_at_3(self, window):
        if self.step_count == 2:
            raise KeyboardInterrupt
        return step(self, window)

    monkeypatch.setattr(Trainer, "step", interrupted_at_3)
    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data, train={"save_every": 2})
    assert main(["train", str(path), "--no-progress"]) == 130
    (run,) = (tmp_path / "runs").iterdir()
    err = capsys.readouterr().err
    assert f"palbert train: interrupted; continue with: palbert train {path} --resume {run}" in err
    monkeypatch.setattr(Trainer, "step", step)
    assert main(["train", str(path), "--resume", str(run), "--no-progress"]) == 0


def test_plot_names_the_line_of_a_damaged_metrics_file(tiny_setup, tmp_path, capsys):
    from palbert.cli import main

    _, run = interrupted_run(tmp_path, *tiny_setup)
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    lines[0] = b'{"type": "train", "step": 1, "loss": {"sst": 0.5\xff}}'
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    capsys.readouterr()
    assert main(["plot", str(run)]) == 2
    line = one_line_error(capsys.readouterr().err, "plot")
    assert "metrics.jsonl:1: not a JSON record (not UTF-8 text)" in line


def test_a_damaged_data_record_is_refused_unless_the_user_says_to_go_on(tmp_path, capsys):
    from palbert.recipe import RecipeError
    from palbert.training.data_record import DATA_FILE, check_same_data, write_data_record

    now = {"sst": {"train": {"file": "/d/train.csv", "size": 10, "sha256": "ab"}}}
    write_data_record(tmp_path, now)
    check_same_data(tmp_path, now)  # the same data: silent
    assert capsys.readouterr().err == ""
    (tmp_path / DATA_FILE).write_text('{"format": 1, "tasks": {"sst": ["not", "a", "record"]}}')
    with pytest.raises(RecipeError, match="cannot tell what data it was trained on: .*damaged"):
        check_same_data(tmp_path, now)
    check_same_data(tmp_path, now, allow_change=True)
    assert "--allow-data-change" in capsys.readouterr().err


def test_an_unknown_option_after_the_recipe_is_one_error_line(capsys):
    from palbert.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert main(["train", str(recipe), "max_steps=3", "--bogus"]) == 2
    assert "unknown option --bogus" in one_line_error(capsys.readouterr().err)


def test_read_metrics_passes_over_only_a_killed_last_write(tmp_path):
    from palbert.training.runlog import read_metrics

    good = b'{"type": "train", "step": 1, "loss": {"sst": 1.0}}\n'
    (tmp_path / "metrics.jsonl").write_bytes(good + b"\n" + b'{"type": "tr')  # killed mid-write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    (tmp_path / "metrics.jsonl").write_bytes(good + b'{"type": "tr\n')  # whole, but damaged
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(good + b'{"step": 2}\n' + good)
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a palbert metrics record"):
        read_metrics(tmp_path)
