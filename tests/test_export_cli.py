"""`palbert export / eval / predict` over run folders and exported task files.

Run folders are written here in the training package's layout (recipe.yaml, best.safetensors,
COMPLETE, ...) from a model built in the test, and read back by the real
``palbert.training.run.load_run``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from palbert import PalBert
from palbert.cli import main
from palbert.taskfile import read_task_file
from tests.tiny_run import run_fresh

run_mod = pytest.importorskip("palbert.training.run")
prepare_mod = pytest.importorskip("palbert.training.prepare")
recipe_mod = pytest.importorskip("palbert.recipe")

SENT = ["a gripping and funny film", "dull and slow", "i loved it", "a mess", "great cast"]
PAIRS = [
    ("a man plays the guitar", "a man is playing a guitar"),
    ("the cat sleeps", "stocks fell sharply"),
    ("kids play football", "children are playing soccer"),
    ("a woman cooks", "a woman is cooking dinner"),
]


def write_data(folder: Path) -> Path:
    """Tiny CSV task files: a single-sentence classifier and a sentence-pair regression."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = ["pos", "neg", "pos", "neg", "pos"]
    for split in ("train", "dev", "test"):
        rows = ["id,sentence" + (",label" if split != "test" else "")]
        for i, (s, y) in enumerate(zip(SENT, labels, strict=True)):
            rows.append(f"s{split}{i},{s}" + (f",{y}" if split != "test" else ""))
        (folder / f"sent-{split}.csv").write_text("\n".join(rows) + "\n")
        rows = ["id,sentence1,sentence2" + (",score" if split != "test" else "")]
        for i, (a, b) in enumerate(PAIRS):
            rows.append(f"p{split}{i},{a},{b}" + (f",{i + 0.5}" if split != "test" else ""))
        (folder / f"sim-{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def _files(prefix: str) -> dict[str, str]:
    return {s: f"{prefix}-{s}.csv" for s in ("train", "dev", "test")}


SENT_SPEC = {
    "name": "sent",
    "kind": "classification",
    "text": "sentence",
    "label": "label",
    "labels": ["neg", "pos"],
    "files": _files("sent"),
}
SIM = {
    "kind": "regression",
    "pair": True,
    "text": ["sentence1", "sentence2"],
    "label": "score",
    "label_range": [0, 5],
    "files": _files("sim"),
}
SPECS = [
    SENT_SPEC,
    {"name": "sim", **SIM},
    {"name": "simbi", **SIM, "encoding": "bi"},
    {"name": "simcos", **SIM, "head": {"type": "cosine"}},
]


def make_run(
    root: Path,
    data: Path,
    backbone: str = "minilm",
    impl: str = "transformers",
    mode: str = "frozen",
    name: str = "toy",
    stamp: str = "20260101-120000",
    specs=SPECS,
    complete: bool = True,
) -> tuple[Path, PalBert]:
    """A run folder as ``palbert train`` leaves it, for a randomly initialised model.

    In mode "full" the encoder's weights are changed too, as fine-tuning would, and
    best.safetensors holds them.
    """
    from palbert.integrity import write_sealed
    from palbert.training.checkpoint import FORMAT, FORMAT_KEY

    raw = {
        "name": name,
        "backbone": {"name": backbone, "impl": impl},
        "module": {"kind": "pal", "init": "normal"},
        "tasks": specs,
        "train": {"mode": mode, "seed": 0},
        "data_dir": str(data),
        "output_dir": str(root),
    }
    recipe = recipe_mod.recipe_from_dict(raw)
    tasks = prepare_mod.build_tasks(recipe, data)
    torch.manual_seed(1)
    model = prepare_mod.build_model(recipe, tasks)
    if mode == "full":
        with torch.no_grad():
            for p in model.backbone.encoder.layer[-1].parameters():
                p.add_(0.01 * torch.randn_like(p))
    keep = ("task_modules.", "heads.") + (("backbone.",) if mode == "full" else ())
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items() if k.startswith(keep)}
    run = root / f"{name}-{stamp}"
    run.mkdir(parents=True)
    write_sealed(
        run / "best.safetensors", state, {"format": "palbert-run", FORMAT_KEY: str(FORMAT)}
    )
    resolved = prepare_mod.resolved(recipe, tasks, data)
    (run / "recipe.yaml").write_text(recipe_mod.dump_recipe(resolved))
    (run / "metrics.jsonl").write_text("")
    (run / "summary.json").write_text("{}")
    if complete:
        (run / "COMPLETE").touch()
    return run, model.eval()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory, data):
    return make_run(tmp_path_factory.mktemp("checkpoints"), data)


def inputs(name: str):
    return SENT if name == "sent" else PAIRS


# -- export ------------------------------------------------------------------------------


def test_export_defaults_to_the_newest_complete_run(tmp_path, data, capsys, monkeypatch):
    ckpt = tmp_path / "checkpoints"
    specs = [SENT_SPEC]
    make_run(ckpt, data, backbone="random:tiny", stamp="20260101-100000", specs=specs)
    newest, _ = make_run(ckpt, data, backbone="random:tiny", stamp="20260102-100000", specs=specs)
    make_run(
        ckpt, data, backbone="random:tiny", stamp="20260103-100000", specs=specs, complete=False
    )
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--task", "sent"]) == 0
    out = capsys.readouterr().out
    assert f"using run {Path('checkpoints') / newest.name}" in out
    # written inside the run folder, not into the current one, with a command to use it
    written = Path("checkpoints") / newest.name / "export" / "sent.safetensors"
    assert f"sent -> {written}" in out and f"palbert eval {written}" in out
    assert read_task_file(tmp_path / written).name == "sent"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert main(["export", "--task", "nope"]) == 2
    assert "no task 'nope'" in capsys.readouterr().err
    assert main(["export", "--task", "sent", "--checkpoints", "elsewhere"]) == 2
    assert "no complete run under elsewhere" in capsys.readouterr().err


def test_run_round_trip_in_a_fresh_process(frozen_run, tmp_path, capsys):
    """Export every task of a run (float32 and float16), load them in a new process on the
    stock backbone: predictions equal to the run's own model."""
    run, model = frozen_run
    want = {n: model.predict(n, inputs(n), batch_size=2) for n in model.tasks}
    assert main(["export", str(run), "--task", "all", "--out", str(tmp_path / "f32")]) == 0
    args = ["export", str(run), "--task", "all", "--out", str(tmp_path / "f16")]
    assert main([*args, "--dtype", "float16"]) == 0
    printed = capsys.readouterr().out
    assert "simcos ->" in printed and "MB" in printed
    code = f"""
import json
from palbert import PalBert
from tests.test_export_cli import SENT, PAIRS
out = {{}}
for kind in ("f32", "f16"):
    model = PalBert.from_pretrained("minilm")
    for name in {list(want)!r}:
        model.load_task({str(tmp_path)!r} + f"/{{kind}}/{{name}}.safetensors")
    out[kind] = {{n: model.predict(n, SENT if n == "sent" else PAIRS, batch_size=2)
                 for n in model.tasks}}
print(json.dumps(out))
"""
    got = json.loads(run_fresh(code))
    assert got["f32"] == json.loads(json.dumps(want))
    for name, rows in want.items():
        for w, g in zip(rows, got["f16"][name], strict=True):
            if isinstance(w, float):
                assert abs(w - g) <= 2e-2
            else:
                assert all(abs(w["probs"][k] - g["probs"][k]) <= 2e-2 for k in w["probs"])
    tf = read_task_file(tmp_path / "f16" / "sim.safetensors")
    assert tf.dtype == "float16" and tf.backbone["fine_tuned"] is False
    assert tf.spec["label_range"] == [0.0, 5.0] and tf.spec["encoding"] == "cross"


def test_full_run_exports_its_encoder(tmp_path, data, capsys):
    from transformers import BertModel

    run, model = make_run(tmp_path / "checkpoints", data, impl="minbert", mode="full")
    out = tmp_path / "encoder"
    args = ["export", str(run), "--backbone", "--task", "sim", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"sim -> {tmp_path / 'sim.safetensors'}" in printed
    assert f"backbone -> {tmp_path / 'backbone'}/" in printed
    assert f"use them: palbert eval {tmp_path / 'sim.safetensors'}\n" in printed
    out = tmp_path / "backbone"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(out))

    # transformers loads the folder, and computes what the run's fine-tuned encoder computes
    bert = BertModel.from_pretrained(out, add_pooling_layer=False).eval()
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    with torch.no_grad():
        want = model.backbone(**batch).last_hidden_state
        got = bert(**batch).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # the task file names the fine-tuned encoder: the stock one is refused unless forced
    path = tmp_path / "sim.safetensors"
    assert read_task_file(path).backbone["fine_tuned"] is True
    stock = PalBert.from_pretrained("minilm")
    with pytest.raises(ValueError, match="fine-tuned encoder"):
        stock.load_task(path)
    stock.load_task(path, force=True)
    tuned = PalBert.from_pretrained(str(out), impl="minbert")
    tuned.load_task(path)
    assert tuned.predict("sim", PAIRS) == model.predict("sim", PAIRS)


def test_backbone_export_needs_a_trained_encoder(frozen_run, tmp_path, capsys):
    run, _ = frozen_run
    assert main(["export", str(run), "--backbone", "--out", str(tmp_path / "b")]) == 2
    assert "did not train its encoder" in capsys.readouterr().err
    assert main(["export", str(run)]) == 2
    assert "--task NAME" in capsys.readouterr().err


# -- eval and predict --------------------------------------------------------------------


def test_eval_of_run_and_of_exported_files_agree(frozen_run, data, tmp_path, capsys):
    run, _ = frozen_run
    files = tmp_path / "files"
    assert main(["export", str(run), "--task", "all", "--out", str(files)]) == 0
    assert main(["eval", str(run), "--json", str(tmp_path / "run.json")]) == 0
    # a folder of task files, the backbone taken from their metadata
    args = ["eval", str(files), "--data-dir", str(data)]
    assert main([*args, "--json", str(tmp_path / "files.json")]) == 0
    from_run = json.loads((tmp_path / "run.json").read_text())
    from_files = json.loads((tmp_path / "files.json").read_text())
    assert set(from_run) == {"sent", "sim", "simbi", "simcos"}
    assert from_files == from_run
    assert set(from_run["sim"]) == {"pearson", "spearman"} and "accuracy" in from_run["sent"]
    out = capsys.readouterr().out
    assert "backbone minilm" in out and "pearson" in out


def test_predict_writes_prediction_files(frozen_run, tmp_path, capsys):
    from palbert.tasks import read_predictions

    run, model = frozen_run
    out = tmp_path / "preds"
    assert main(["predict", str(run), "--split", "test", "--out", str(out)]) == 0
    sim = (out / "sim-test-output.csv").read_text().splitlines()
    assert sim[0] == "id \t Predicted_Similarity "
    rows = read_predictions(out / "sim-test-output.csv")
    assert [r["id"] for r in rows] == [f"ptest{i}" for i in range(4)]
    want = model.predict("sim", PAIRS)
    assert [float(r["prediction"]) for r in rows] == pytest.approx(want, abs=1e-5)
    assert len(read_predictions(out / "sent-test-output.csv")) == 5

    # --input: a user's file with the task's columns, one task, JSONL out
    user = tmp_path / "mine.csv"
    user.write_text("sentence\nwhat a film\nawful\n")
    args = ["predict", str(run), "--task", "sent", "--input", str(user), "--format", "jsonl"]
    assert main([*args, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "sent-input-mine-output.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lines] == [
        r["label"] for r in model.predict("sent", ["what a film", "awful"])
    ]
    assert main(["predict", str(run), "--input", str(user)]) == 2
    assert "--input goes to one task" in capsys.readouterr().err


def test_predict_input_files_get_their_own_name_and_bad_ones_are_refused_by_name(
    frozen_run, tmp_path, capsys
):
    run, _ = frozen_run
    out = tmp_path / "preds"
    assert main(["predict", str(run), "--task", "sent", "--split", "test", "--out", str(out)]) == 0
    split_file = out / "sent-test-output.csv"
    before = split_file.read_bytes()
    # a user's file named like a split: its predictions go beside the split's, not over them
    user = tmp_path / "mine" / "test.csv"
    user.parent.mkdir()
    user.write_text("sentence\nwhat a film\n")
    args = ["predict", str(run), "--task", "sent", "--out", str(out), "--input"]
    assert main([*args, str(user)]) == 0
    assert split_file.read_bytes() == before
    assert len((out / "sent-input-test-output.csv").read_text().splitlines()) == 2
    capsys.readouterr()
    # not a regular file, binary, or too big: one line naming the file, nothing written
    device = tmp_path / "dev.csv"
    device.symlink_to(os.devnull)
    binary = tmp_path / "zeros.csv"
    binary.write_bytes(b"sentence\n" + b"\0" * 10_000)
    for path, extra, words in [
        (device, [], "is not a regular file (a device"),
        (binary, [], f"{binary}:2: a NUL byte at character 1"),
        (user, ["--max-input-mb", "0.00001"], "MB, over the limit of 1e-05 MB"),
    ]:
        assert main([*args, str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert sorted(p.name for p in out.iterdir()) == [
        "sent-input-test-output.csv",
        "sent-test-output.csv",
    ]


def test_exporting_an_unfinished_run_warns_from_which_step_its_weights_are(
    tiny_setup, token_cache, tmp_path, capsys
):
    from palbert.training.run import TrainingInterrupted, train
    from tests.tiny_run import write_recipe

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data)  # 6 steps, evaluated at 3 and 6
    with pytest.raises(TrainingInterrupted):
        train(recipe_mod.load_recipe(path), progress=False, stop_at_step=4)
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    assert main(["export", str(run), "--task", "sst", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "is unfinished (no COMPLETE): its weights are from step 3 of 6" in err
    assert (tmp_path / "out" / "sst.safetensors").is_file()
    train(recipe_mod.load_recipe(path), resume=run, progress=False)
    assert main(["export", str(run), "--task", "sst", "--out", str(tmp_path / "out")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.data
def test_predict_cs224n_sts_from_an_exported_file(tmp_path, data_dir, capsys):
    """The built-in STS task through an exported file: the course's file format."""
    torch.manual_seed(0)
    model = PalBert.from_pretrained("random:minilm")
    from palbert.tasks import build_task

    sts = build_task("sts", data_dir=data_dir)
    model.add_task("sts", sts.build_head(384), spec=sts)
    path = model.save_task("sts", tmp_path / "sts.safetensors")
    # a random backbone has no reproducible fingerprint: --force (and the stock shape)
    args = ["predict", str(path), "--backbone", "random:minilm", "--force", "--split", "dev"]
    assert main([*args, "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    lines = (tmp_path / "sts-dev-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted_Similiarity "
    assert len(lines) == 1 + 863


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval"]) == 2
    assert "no complete run under checkpoints/" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    assert main(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    assert os.listdir(tmp_path) == ["bad.safetensors"]


@pytest.mark.parametrize("device", ["foo", "cuda", "cuda:7", "meta"])
def test_a_bad_device_is_one_line_before_any_work(device, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    for command in ("eval", "predict"):
        assert main([command, "no-such-run", "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--device {device}" in err.replace("'", "")


def test_trained_run_end_to_end(tmp_path, data, capsys):
    """A real (4-step, full fine-tuning) `palbert train` run: eval reproduces the run's best
    dev scores, and its exported encoder + task files reproduce its predictions."""
    train = pytest.importorskip("palbert.training.run").train
    recipe = recipe_mod.recipe_from_dict(
        {
            "name": "toy",
            "backbone": {"name": "minilm"},
            "tasks": SPECS,
            "train": {"mode": "full", "max_steps": 4, "batch_size": 2, "device": "cpu"},
            "eval": {"every": 2},
            "data_dir": str(data),
            "output_dir": str(tmp_path / "checkpoints"),
        }
    )
    run = train(recipe, progress=False)
    best = json.loads((run / "summary.json").read_text())["best"]["scores"]
    assert main(["eval", str(run), "--json", str(tmp_path / "run.json")]) == 0
    scores = json.loads((tmp_path / "run.json").read_text())
    assert scores.keys() == best.keys()
    for name in best:
        assert scores[name] == pytest.approx(best[name], abs=1e-6)

    files = tmp_path / "files"
    enc = files / "backbone"
    # the run trained its encoder: exporting its tasks writes the encoder beside them
    assert main(["export", str(run), "--task", "all", "--out", str(files)]) == 0
    assert (enc / "config.json").is_file()
    args = ["eval", str(files), "--data-dir", str(data)]  # finds files/backbone
    assert main([*args, "--json", str(tmp_path / "files.json")]) == 0
    assert json.loads((tmp_path / "files.json").read_text()) == scores
    # moved elsewhere: --backbone names it; without it, the files say which encoder they need
    enc = enc.rename(tmp_path / "encoder")
    args = ["eval", str(files), "--backbone", str(enc), "--data-dir", str(data)]
    assert main([*args, "--json", str(tmp_path / "moved.json")]) == 0
    assert json.loads((tmp_path / "moved.json").read_text()) == scores
    assert main(["eval", str(files), "--data-dir", str(data)]) == 2
    assert "fine-tuned encoder" in capsys.readouterr().err

    model = run_mod.load_run(run)[0]
    fresh = PalBert.from_pretrained(str(enc))
    for name in model.tasks:
        fresh.load_task(files / f"{name}.safetensors")
        assert fresh.predict(name, inputs(name)) == model.predict(name, inputs(name))


def test_a_full_disk_is_one_line(frozen_run, tmp_path, capsys, monkeypatch):
    import errno

    run, _ = frozen_run

    def full(path, tensors, meta):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("palbert.taskfile.write_sealed", full)
    assert main(["export", str(run), "--task", "all", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and str(tmp_path) in err


# -- wrong answers with exit 0 (issue 23) ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_full_run(tmp_path_factory, tiny_setup, data):
    """A run that fine-tuned the tiny encoder: its task files need its backbone/ folder."""
    backbone, _ = tiny_setup
    root = tmp_path_factory.mktemp("full")
    return make_run(root, data, backbone=str(backbone), mode="full", specs=SPECS[:2])


def test_an_encoder_folder_without_its_tokenizer_is_refused(tiny_full_run, data, tmp_path, capsys):
    """Config and weights alone (what a killed export left) once predicted with a tokenizer
    of a few tokens, every word [UNK], exit 0; now every missing part is named."""
    import shutil

    run, _ = tiny_full_run
    full = tmp_path / "E"
    assert main(["export", str(run), "--task", "all", "--out", str(full)]) == 0
    part = tmp_path / "part"
    (part / "backbone").mkdir(parents=True)
    shutil.copy(full / "sent.safetensors", part)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(full / "backbone" / name, part / "backbone")
    capsys.readouterr()
    assert main(["eval", str(part / "sent.safetensors"), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"backbone folder {part / 'backbone'} lacks the tokenizer files" in err
    assert "config.json," not in err and err.count("\n") == 1
    (part / "backbone" / "config.json").unlink()
    from palbert import BackboneError

    with pytest.raises(BackboneError, match="lacks config.json, the tokenizer files"):
        PalBert.from_pretrained(str(part / "backbone"))


def test_a_task_file_needs_the_tokenizer_it_was_trained_with(tiny_setup, tmp_path):
    """Same weights, another tokenizer (two words' ids swapped): refused unless forced; a file
    written before palbert recorded tokenizers loads unchecked."""
    import shutil

    from palbert.taskfile import write_task_file

    backbone, _ = tiny_setup
    model = PalBert.from_pretrained(str(backbone))
    from palbert.tasks import build_task

    task = build_task(SENT_SPEC, cache_dir=False)
    model.add_task("sent", task.build_head(model.hidden_size), spec=task)
    path = model.save_task("sent", tmp_path / "sent.safetensors")
    assert read_task_file(path).backbone["tokenizer"] == model.tokenizer_fingerprint()

    other = shutil.copytree(backbone, tmp_path / "other")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    (other / "vocab.txt").unlink()
    swapped = PalBert.from_pretrained(str(other))
    assert swapped.fingerprint() == model.fingerprint()  # only the tokenizer differs
    with pytest.raises(ValueError, match=f"task file {path} .* tokenizes differently"):
        swapped.load_task(path)
    assert swapped.load_task(path, force=True) == "sent"

    tf = read_task_file(path)
    del tf.backbone["tokenizer"]
    old = write_task_file(tf, tmp_path / "old.safetensors")
    assert PalBert.from_pretrained(str(other)).load_task(old) == "sent"


def test_export_refuses_to_replace_another_encoder(
    tiny_full_run, tiny_setup, data, tmp_path, capsys
):
    """An export into a folder whose backbone/ holds other weights once replaced them, and
    the task files exported beside them stopped loading."""
    from palbert.export import export_backbone
    from tests.tiny_run import snapshot

    run, _ = tiny_full_run
    backbone, _ = tiny_setup
    out = tmp_path / "out"
    export_backbone(PalBert.from_pretrained(str(backbone)), out / "backbone")  # the stock one
    before = snapshot(out)
    args = ["export", str(run), "--task", "all", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out / 'backbone'} holds another encoder" in err and "--overwrite" in err
    assert snapshot(out) == before  # refused before anything was written
    assert main([*args, "--overwrite"]) == 0
    assert main(["eval", str(out), "--data-dir", str(data)]) == 0
    assert main(args) == 0  # the same encoder again: nothing to refuse


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_export_and_predict_replace_symlinks_and_clean_leftovers(tiny_full_run, tmp_path, capsys):
    """Links planted at the destinations are replaced, not written through (their targets
    outside --out are untouched); temporaries of a killed earlier command are removed."""
    run, _ = tiny_full_run
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    (out / "backbone").mkdir(parents=True)
    for name in ("backbone/config.json", "backbone/tokenizer_config.json", "sent.safetensors"):
        (out / name).symlink_to(outside)
    leftovers = [out / ".sent.safetensors.x1.tmp", out / "backbone" / ".config.json.x2.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    (out / "backbone" / ".files.tmp-x3").mkdir()
    assert main(["export", str(run), "--task", "all", "--out", str(out)]) == 0
    assert outside.read_text() == "keep me"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert not [p for p in out.rglob(".*")]
    assert read_task_file(out / "sent.safetensors").name == "sent"

    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "sent-test-output.csv").symlink_to(outside)
    (preds / ".sim-test-output.csv.x4.tmp").write_text("half")
    assert main(["predict", str(run), "--out", str(preds), "--split", "test"]) == 0
    assert outside.read_text() == "keep me"
    assert sorted(p.name for p in preds.iterdir()) == [
        "sent-test-output.csv",
        "sim-test-output.csv",
    ]
    assert not (preds / "sent-test-output.csv").is_symlink()
    report = tmp_path / "report.json"
    report.symlink_to(outside)
    assert main(["eval", str(run), "--json", str(report)]) == 0
    assert outside.read_text() == "keep me" and set(json.loads(report.read_text())) == {
        "sent",
        "sim",
    }


@pytest.mark.parametrize("command", ["export", "eval", "predict"])
def test_ctrl_c_is_one_line_and_exit_130(tiny_full_run, tmp_path, capsys, monkeypatch, command):
    run, _ = tiny_full_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("palbert.export.load_run", interrupted)
    args = {
        "export": ["--task", "all", "--out", str(tmp_path)],
        "predict": ["--out", str(tmp_path)],
    }
    try:
        code = main([command, str(run), *args.get(command, [])])
    except KeyboardInterrupt:
        pytest.fail("the KeyboardInterrupt escaped palbert's main (a traceback for the user)")
    assert code == 130
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert err == [f"palbert {command}: interrupted"]


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_closed_stdout_ends_cleanly_after_all_the_work(tiny_full_run, tmp_path, unbuffered):
    """``palbert export ... | head -1``: the reader is gone before the first line; the export
    still writes every file, and ends with exit 0 and nothing on stderr."""
    import subprocess
    import sys

    run, _ = tiny_full_run
    out = tmp_path / "out"
    read, write = os.pipe()
    os.close(read)  # the reader has gone: every write to the pipe fails
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    cmd = [sys.executable, "-m", "palbert", "export", str(run), "--task", "all", "--out", str(out)]
    try:
        done = subprocess.run(
            cmd, stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=300
        )
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert (out / "backbone" / "model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "sent.safetensors",
        "sim.safetensors",
    ]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["export", "/no/such/run", "--task", "all"], "/no/such/run is not a run folder"),
        (["params", "--tasks", "foo"], "unknown task 'foo'"),
    ],
)
def test_a_bad_argument_is_one_line_not_a_traceback(argv, words, capsys):
    from palbert.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
