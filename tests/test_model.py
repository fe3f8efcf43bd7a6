"""The multi-task model on real MiniLM weights: identity at init, routing, gradients, modes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from palbert import ModuleConfig, PalBert, load_backbone
from palbert.backbones import BackboneError
from tests.tiny_run import CLSHead

IMPLS = ["transformers", "minbert"]
KINDS = ["pal", "low_rank", "adapter"]


def minilm(impl: str, kind: str = "pal", init: str = "zero", tasks=("a", "b", "c")) -> PalBert:
    torch.manual_seed(0)
    model = PalBert.from_pretrained("minilm", impl=impl, module=ModuleConfig(kind=kind, init=init))
    for i, name in enumerate(tasks):
        model.add_task(name, CLSHead(384, 2 + i))
    return model.eval()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_init_reproduces_the_backbone_exactly(impl, kind, pair_batch):
    model = minilm(impl, kind)
    bare = load_backbone("minilm", impl=impl).model.eval()
    with torch.no_grad():
        want = bare(**pair_batch).last_hidden_state
        got = model.encode(**pair_batch, task="a").last_hidden_state
    assert torch.equal(got, want)
    # ...and "normal" init really changes the output, so the check above can fail.
    model = minilm(impl, kind, init="normal")
    with torch.no_grad():
        assert not torch.allclose(model.encode(**pair_batch, task="a").last_hidden_state, want)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("train", [False, True])
def test_mixed_batch_equals_each_task_alone(kind, train, pair_batch):
    model = minilm("transformers", kind, init="normal")
    model.train(train)
    for m in model.modules():  # keep train-mode code paths but make them deterministic
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    task_ids = torch.tensor([2, 0, 2, 1])
    outs = model({**pair_batch, "task_ids": task_ids})
    for i, name in enumerate(model.tasks):
        rows = (task_ids == i).nonzero(as_tuple=True)[0]
        alone = model({k: v[rows] for k, v in pair_batch.items()}, task=name)
        torch.testing.assert_close(outs[name], alone, rtol=1e-5, atol=1e-5)
    # and the task modules matter: routing everyone through task "a" differs
    wrong = model(pair_batch, task="a")
    assert not torch.allclose(wrong[[0, 2]][:, :2], outs["c"][:, :2], atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_only_the_chosen_task(kind, pair_batch):
    model = minilm("transformers", kind, init="normal").train()
    model.set_train_mode("frozen")
    model(pair_batch, task="b").sum().backward()
    for name, p in model.named_parameters():
        owned = name.startswith(("task_modules.b.", "heads.b."))
        if owned:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_train_modes_and_frozen_backbone_is_bit_identical_after_a_step(pair_batch):
    model = minilm("transformers", "pal").train()
    model.set_train_mode("frozen")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(pair_batch, task="a").sum().backward()
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.set_train_mode("heads")
    assert not any(p.requires_grad for p in model.task_modules.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    model.set_train_mode("full")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="train mode"):
        model.set_train_mode("partial")


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_checkpointing_gives_the_same_gradients(impl, pair_batch):
    grads = []
    for ckpt in (False, True):
        model = minilm(impl, "pal", init="normal").train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        model.gradient_checkpointing(ckpt)
        task_ids = torch.tensor([0, 1, 2, 0])
        outs = model({**pair_batch, "task_ids": task_ids})
        sum(o.sum() for o in outs.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_tasks_can_be_added_and_removed():
    model = minilm("transformers", tasks=("a",))
    with pytest.raises(ValueError, match="already"):
        model.add_task("a", CLSHead(384, 2))
    model.add_task("plain", CLSHead(384, 2), module=ModuleConfig(kind="none"))
    assert model.tasks == ["a", "plain"] and "plain" not in model.task_modules
    model.remove_task("a")
    assert model.tasks == ["plain"] and "a" not in model.task_modules
    with pytest.raises(KeyError, match="no task"):
        model(dict(input_ids=torch.ones(1, 3, dtype=torch.long)), task="a")


def test_offline_bert_base_gives_advice_not_a_stack_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as e:
        load_backbone("bert-base-uncased")
    msg = str(e.value)
    assert "bert-base-uncased" in msg and "local folder" in msg and "minilm" in msg
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(str(tmp_path / "nope"))


@pytest.mark.parametrize("kind", KINDS)
def test_minbert_equals_transformers_with_trained_looking_modules(kind, pair_batch):
    """Both backbones with the same non-zero task modules agree to 1e-5 (float32, eval)."""
    theirs = minilm("transformers", kind, init="normal")
    mine = minilm("minbert", kind, init="normal")
    mine.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        a = theirs.encode(**pair_batch, task="b", hidden_states=True)
        b = mine.encode(**pair_batch, task="b", hidden_states=True)
    assert (a.last_hidden_state - b.last_hidden_state).abs().max() <= 1e-5
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert (x - y).abs().max() <= 1e-5
