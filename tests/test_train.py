"""Training end to end on a tiny local backbone and tiny CS224N-format files.

The backbone is a randomly initialised 2-layer BERT with hidden size 32 saved as a local
folder with its own small vocabulary, so recipes load it by path like any real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.tiny_run import (
    interrupted_run,
    write_recipe,
)

pytestmark = pytest.mark.usefixtures("one_thread", "token_cache")


# -- the optimizer step ---------------------------------------------------------------------


def tiny_model(backbone: Path, mode: str = "full", kind: str = "pal"):
    from palbert import ModuleConfig, PalBert
    from palbert.tasks import build_task

    torch.manual_seed(0)
    model = PalBert.from_pretrained(str(backbone), module=ModuleConfig(kind=kind, init="normal"))
    tasks = {n: build_task(n) for n in ("sst", "sts")}
    for n, t in tasks.items():
        model.add_task(n, t.build_head(32))
    model.set_train_mode(mode)
    for m in model.modules():  # comparisons of gradients need the same function each time
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, tasks


def batches(backbone: Path, data: Path, task: str, batch_size: int):
    from palbert.backbones import load_tokenizer
    from palbert.tasks import build_task

    tok = load_tokenizer(str(backbone))
    return list(build_task(task, data_dir=data).batches("train", tok, batch_size=batch_size))


def make_trainer(model, tasks, *, precision="fp32", pcgrad=False, **optimizer):
    """A trainer of the recipe sections' defaults, with ``optimizer`` keys changed."""
    from palbert.recipe import OptimizerSection, ScheduleSection, TrainSection
    from palbert.training.loop import Trainer

    train = TrainSection(precision=precision, pcgrad=pcgrad)
    sections = (OptimizerSection(**optimizer), ScheduleSection(), train)
    return Trainer(model, *sections, tasks=tasks, total_steps=1)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_the_large_batch(tiny_setup):
    backbone, data = tiny_setup
    big = batches(backbone, data, "sst", 8)[0]
    # unequal micro-batches (3 + 5 rows): each must count by its rows, not 1/k
    parts = [
        {k: v[:3] if k != "ids" else v[:3] for k, v in big.items()},
        {k: v[3:] for k, v in big.items()},
    ]
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks)
    tr.backward([("sst", big)])
    g_big = grads(model)
    tr.optimizer.zero_grad(set_to_none=True)
    tr.backward([("sst", parts[0]), ("sst", parts[1])])
    g_acc = grads(model)
    assert g_big.keys() == g_acc.keys() and len(g_big) > 10
    for n in g_big:
        torch.testing.assert_close(g_acc[n], g_big[n], rtol=1e-4, atol=1e-6, msg=n)


def test_window_of_two_tasks_sums_weighted_task_losses(tiny_setup):
    backbone, data = tiny_setup
    a, b = batches(backbone, data, "sst", 4)[0], batches(backbone, data, "sts", 4)[0]
    from palbert.tasks import build_task

    model, tasks = tiny_model(backbone)
    tasks["sts"] = build_task({"name": "sts", "loss_weight": 0.25})
    tr = make_trainer(model, tasks)
    tr.backward([("sst", a), ("sts", b)])
    g_window = grads(model)
    tr.optimizer.zero_grad(set_to_none=True)
    loss = tasks["sst"].loss(model(a, task="sst"), a["labels"])
    loss = loss + 0.25 * tasks["sts"].loss(model(b, task="sts"), b["labels"])
    loss.backward()
    for n, g in grads(model).items():
        torch.testing.assert_close(g_window[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_mixed_batches_give_the_same_gradients(tiny_setup):
    backbone, data = tiny_setup
    a, b = batches(backbone, data, "sst", 4)[0], batches(backbone, data, "sts", 4)[0]
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks)
    tr.backward([("sst", a), ("sts", b)])
    g_sep = grads(model)
    tr.optimizer.zero_grad(set_to_none=True)
    tr.mixed = True
    tr.backward([("sst", a), ("sts", b)])
    g_mixed = grads(model)
    assert g_sep.keys() == g_mixed.keys()
    for n in g_sep:
        torch.testing.assert_close(g_mixed[n], g_sep[n], rtol=1e-4, atol=1e-5, msg=n)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_setup):
    backbone, data = tiny_setup
    b = batches(backbone, data, "sts", 4)[0]
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks)
    tr.backward([("sts", b)])
    plain = grads(model)
    tr.optimizer.zero_grad(set_to_none=True)
    model.gradient_checkpointing(True)
    tr.backward([("sts", b)])
    for n, g in grads(model).items():
        torch.testing.assert_close(g, plain[n], rtol=1e-5, atol=1e-7, msg=n)


def test_frozen_params_have_no_grads_or_optimizer_state(tiny_setup):
    backbone, data = tiny_setup
    model, tasks = tiny_model(backbone, mode="frozen")
    tr = make_trainer(model, tasks)
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    tr.step([("sst", batches(backbone, data, "sst", 4)[0])])
    for n, p in model.backbone.named_parameters():
        assert id(p) not in in_opt and p.grad is None and p not in tr.optimizer.state
        assert torch.equal(p, before[n]), n
    assert all(n.startswith(("task_modules.", "heads.")) for n in tr.param_names)


def test_learning_rates_per_part(tiny_setup):
    backbone, _ = tiny_setup
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks, lr=1e-5, task_lr=1e-4, head_lr=1e-3)
    for g in tr.optimizer.param_groups:
        part = {n.split(".", 1)[0] for n in g["names"]}
        assert len(part) == 1
        want = {"backbone": 1e-5, "task_modules": 1e-4, "heads": 1e-3}[part.pop()]
        assert g["lr"] == pytest.approx(want)
        assert g["weight_decay"] == (
            0.01 if all(model.get_parameter(n).ndim >= 2 for n in g["names"]) else 0.0
        )


def test_unsampled_tasks_do_not_drift(tiny_setup):
    backbone, data = tiny_setup
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks, weight_decay=0.1, lr=1e-3, task_lr=1e-2)
    sst, sts = batches(backbone, data, "sst", 4), batches(backbone, data, "sts", 4)
    tr.step([("sts", sts[0])])  # sts gets moments ...

    def sts_params():
        return {n: p.detach().clone() for n, p in model.named_parameters() if ".sts." in n}

    before = sts_params()
    assert before
    for b in sst[:3]:  # ... then only sst trains: weight decay and momentum must not move sts
        tr.step([("sst", b)])
        assert all(p.grad is None for p in model.parameters())
    after = sts_params()
    for n in before:
        assert torch.equal(after[n], before[n]), n


def test_bf16_autocast_step_on_cpu(tiny_setup):
    backbone, data = tiny_setup
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks, precision="bf16")
    res = tr.step([("sst", batches(backbone, data, "sst", 4)[0])])
    assert res.losses["sst"] == pytest.approx(res.losses["sst"]) and torch.isfinite(
        torch.tensor(res.losses["sst"])
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_fp16_is_refused_on_cpu():
    from palbert.inference import resolve_precision

    with pytest.raises(ValueError, match="CUDA"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.cuda
def test_fp16_cuda_step_with_grad_scaler_and_overflow_skip(tiny_setup):
    backbone, data = tiny_setup
    model, tasks = tiny_model(backbone)
    model.cuda()
    tr = make_trainer(model, tasks, precision="auto")  # on the model's device
    assert tr.precision == "fp16" and tr.scaler is not None
    b = batches(backbone, data, "sst", 4)[0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = tr.step([("sst", b)])
    assert not res.skipped and torch.isfinite(torch.tensor(res.losses["sst"]))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    # an overflowing step is skipped (weights untouched) and counted
    done = tr.backward([("sst", b)])
    next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("inf"))
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = tr.apply(done)
    assert res.skipped and tr.skipped_steps == 1
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n
    torch.testing.assert_close(torch.tensor(tr.scaler.get_scale()), torch.tensor(2.0**15))


def test_pcgrad_projects_conflicts():
    from palbert.training.pcgrad import pcgrad

    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    out = pcgrad([g1, g2], torch.Generator().manual_seed(0))
    # g1 -> g1 - (g1.g2/|g2|^2) g2 = [0.5, 0.5]; g2 -> g2 - (g2.g1/|g1|^2) g1 = [0, 1]
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5]))
    g3 = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(pcgrad([g1, g3]), g1 + g3)  # no conflict: plain sum


def test_pcgrad_step_keeps_task_only_grads(tiny_setup):
    backbone, data = tiny_setup
    a, b = batches(backbone, data, "sst", 4)[0], batches(backbone, data, "sts", 4)[0]
    model, tasks = tiny_model(backbone)
    tr = make_trainer(model, tasks, pcgrad=True)
    tr.backward([("sst", a), ("sts", b)])
    g_pc = grads(model)
    tr.optimizer.zero_grad(set_to_none=True)
    tr.use_pcgrad = False
    tr.backward([("sst", a), ("sts", b)])
    g_plain = grads(model)
    assert g_pc.keys() == g_plain.keys()
    for n in g_pc:
        if n.startswith("heads.") or n.startswith("task_modules."):  # one task each: untouched
            torch.testing.assert_close(g_pc[n], g_plain[n], msg=n)


# -- runs -----------------------------------------------------------------------------------


def run_files(run: Path) -> set[str]:
    return {p.name for p in run.iterdir()}


def test_run_folder_contract_and_load_run(tiny_setup, tmp_path):
    from safetensors.torch import load_file

    from palbert.recipe import load_recipe
    from palbert.training.run import load_run, train

    backbone, data = tiny_setup
    run = train(load_recipe(write_recipe(tmp_path, backbone, data)), progress=False)
    assert run.parent == tmp_path / "runs" and run.name.startswith("tiny-")
    assert {
        "recipe.yaml",
        "data.json",
        "last",
        "best.safetensors",
        "metrics.jsonl",
        "summary.json",
        "tb",
        "COMPLETE",
    } <= run_files(run)
    assert {p.name for p in (run / "last").iterdir()} == {
        "weights.safetensors",
        "state.safetensors",
        "state.json",
    }
    assert any((run / "tb").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["best"]["scores"]) == {"sst", "sts"}
    assert set(summary["final"]["scores"]["sts"]) == {"pearson", "spearman"}
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [3, 6]
    best = load_file(str(run / "best.safetensors"))
    assert any(k.startswith("backbone.") for k in best)  # mode full: the backbone is kept
    assert any(k.startswith("task_modules.sst.") for k in best)
    assert any(k.startswith("heads.sts.") for k in best)

    model, tasks, recipe = load_run(run)
    assert set(tasks) == {"sst", "sts"} and recipe.name == "tiny"
    for k, v in best.items():
        assert torch.equal(model.state_dict()[k], v), k
    # the resolved recipe spells tasks out and loads back
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["data_dir"] == str(data.resolve()) and isinstance(saved["tasks"][0], dict)


def test_frozen_run_keeps_backbone_out_of_best(tiny_setup, tmp_path):
    from safetensors.torch import load_file

    from palbert.recipe import load_recipe
    from palbert.training.run import train

    backbone, data = tiny_setup
    path = write_recipe(
        tmp_path, backbone, data, train={"mode": "frozen", "max_steps": 2}, eval={"every": 2}
    )
    run = train(load_recipe(path), progress=False)
    keys = load_file(str(run / "best.safetensors")).keys()
    assert keys and not any(k.startswith("backbone.") for k in keys)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "weights.safetensors"))


def test_resume_is_bit_identical(dropout_backbone, tiny_setup, tmp_path):
    from palbert.recipe import load_recipe
    from palbert.training.run import TrainingInterrupted, train

    _, data = tiny_setup
    common = dict(
        train={"max_steps": 8, "save_every": 1, "grad_accum": 2},
        sampler={"kind": "sqrt"},
        eval={"every": 4},
    )
    full = train(
        load_recipe(write_recipe(tmp_path / "a", dropout_backbone, data, **common)), progress=False
    )
    recipe = load_recipe(write_recipe(tmp_path / "b", dropout_backbone, data, **common))
    with pytest.raises(TrainingInterrupted):
        train(recipe, progress=False, stop_at_step=5)  # "killed" after step 5's checkpoint
    (run,) = (tmp_path / "b" / "runs").iterdir()
    assert not (run / "COMPLETE").exists()
    resumed = train(recipe, resume=run, progress=False)
    assert resumed == run and (run / "COMPLETE").exists()
    a, b = _final_weights(full), _final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [
        json.loads(x)["step"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["type"] == "train"
    ]
    assert steps == list(range(1, 9))  # nothing logged twice


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tiny_setup, tmp_path, monkeypatch):
    from palbert.recipe import load_recipe
    from palbert.tasks.task import Task
    from palbert.training.loop import NonFiniteLoss
    from palbert.training.run import load_run, train

    backbone, data = tiny_setup
    calls = {"n": 0}
    original = Task.loss

    def poisoned(self, outputs, labels):
        calls["n"] += 1
        loss = original(self, outputs, labels)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(Task, "loss", poisoned)
    path = write_recipe(tmp_path, backbone, data, train={"save_every": 1})
    with pytest.raises(NonFiniteLoss) as e:
        train(load_recipe(path), progress=False)
    assert "task 'sts'" in str(e.value) and "step 4" in str(e.value)
    assert "last good checkpoint" in str(e.value)
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "COMPLETE").exists()
    state = json.loads((run / "last" / "state.json").read_text())
    assert state["step_count"] == 3
    model, _, _ = load_run(run, which="last")  # the checkpoint is intact
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["type"] == "error" and last["step"] == 4


def test_no_run_folder_when_the_backbone_fails(tmp_path, monkeypatch):
    from palbert.backbones import BackboneError
    from palbert.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "runs"
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    with pytest.raises(BackboneError, match="backbone.name="):
        train(load_recipe(root / "recipes" / "pal_rr.yaml", [f"output_dir={out}"]))
    assert not out.exists() or not any(out.iterdir())
    # and from the command line: the clear message, exit code 2, no traceback
    assert main(["train", str(root / "recipes" / "pal_rr.yaml"), f"output_dir={out}"]) == 2
    assert not out.exists() or not any(out.iterdir())


def test_bad_data_leaves_no_run_folder(tiny_setup, tmp_path, capsys):
    from palbert.cli import main

    backbone, data = tiny_setup
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data.iterdir():
        (bad / f.name).write_text(f.read_text())
    with open(bad / "sts-train.csv", "a") as fh:
        fh.write("99\tbadrow\tonly one sentence\n")
    path = write_recipe(tmp_path, backbone, bad)
    assert main(["train", str(path), "--no-progress"]) == 2
    assert "sts-train.csv" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_train_with_overrides_then_plot(tiny_setup, tmp_path, capsys):
    from palbert.cli import main

    backbone, data = tiny_setup
    path = write_recipe(tmp_path, backbone, data)
    code = main(
        [
            "train",
            str(path),
            "train.max_steps=2",
            "eval.every=2",
            "sampler.kind=uniform",
            "--no-progress",
        ]
    )
    assert code == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["sampler"]["kind"] == "uniform"
    assert main(["plot", str(run)]) == 0
    png = run / "metrics.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("steps, active", [(5, {0, 1}), (4, {1})])
def test_progressive_depth_follows_training_steps(tiny_setup, tmp_path, steps, active):
    """The loaded model has the PALs its last training step used: step k trains under the
    schedule of k-1 completed steps, so at 4 steps the second layer has not trained yet."""
    from palbert.recipe import load_recipe
    from palbert.training.run import load_run, train

    backbone, data = tiny_setup
    path = write_recipe(
        tmp_path,
        backbone,
        data,
        module={"kind": "pal", "progressive": {"start": 1, "every": 4}},
        train={"max_steps": steps},
        eval={"every": steps},
    )
    run = train(load_recipe(path), progress=False)
    model, _, _ = load_run(run)
    assert model.task_modules["sst"].active == active


@pytest.mark.data
def test_quickstart_smoke_on_real_data(tmp_path, data_dir):
    from palbert.recipe import load_recipe
    from palbert.training.run import train

    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(
        root / "recipes" / "quickstart.yaml",
        [
            "tasks=[sst]",
            "train.max_steps=2",
            "eval.every=2",
            f"output_dir={tmp_path}",
            f"data_dir={data_dir}",
            "train.batch_size=8",
        ],
    )
    run = train(recipe, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["final"]["scores"]["sst"]["accuracy"] <= 1.0


def test_cli_resume_continues_the_newest_unfinished_run(tiny_setup, tmp_path, capsys):
    from palbert.cli import main

    backbone, data = tiny_setup
    path, run = interrupted_run(tmp_path, backbone, data)
    assert main(["train", str(path), "--resume", "--no-progress"]) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]) == run
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert main(["train", str(path), "--resume"]) == 2  # nothing left to resume
    assert "no unfinished run" in capsys.readouterr().err
