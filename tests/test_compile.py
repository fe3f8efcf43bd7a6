"""torch.compile(model) with task modules injected computes what the eager model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from palbert import ModuleConfig, PalBert


class MeanHead(nn.Module):
    encoding, needs_hidden_states = "single", False

    def forward(self, features):
        return features[0].last_hidden_state.mean(1)


@pytest.mark.slow  # compiling forward and backward takes 1-3 minutes on 2 cores
@pytest.mark.parametrize("impl", ["transformers", "minbert"])
def test_compiled_model_equals_eager(impl):
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = ModuleConfig(kind="pal", size=8, heads=2, init="normal")
    model = PalBert.from_pretrained("random:tiny", impl=impl, module=module)
    for name in ("a", "b"):
        model.add_task(name, MeanHead())
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    compiled = torch.compile(model)
    ids = torch.randint(5, 1000, (4, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    mixed = {**batch, "task_ids": torch.tensor([0, 1, 1, 0])}

    model.eval()
    with torch.no_grad():
        for task in ("a", "b"):
            torch.testing.assert_close(compiled(batch, task=task), model(batch, task=task))
        want, got = model(mixed), compiled(mixed)
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k])
        # the tasks differ, so a route lost inside the compiled graph would show
        assert not torch.allclose(compiled(batch, task="a"), compiled(batch, task="b"))

    model.train()
    grads = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        m(batch, task="b").pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("task_modules.b.") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["transformers", "minbert"])
def test_one_task_forward_traces_as_one_graph(impl):
    # a graph break (once: the padding check's data-dependent branch) splits the compiled
    # model in two and costs speed; the route's Python must all trace
    torch._dynamo.reset()
    module = ModuleConfig(kind="pal", size=8, heads=2)
    model = PalBert.from_pretrained("random:tiny", impl=impl, module=module).eval()
    model.add_task("a", MeanHead())
    ids = torch.randint(5, 1000, (4, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(batch, task="a")
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.slow  # compiling the encoder: about a minute on 2 busy cores
def test_serve_compiled_encoder_answers_as_eager():
    """``palbert serve --compile``: mixed-task batches of two shapes (dynamic: no second
    compile needed) through the compiled encoder equal eager's to 1e-5."""
    from palbert.serve.app import compile_encoder

    torch._dynamo.reset()
    torch.manual_seed(0)
    module = ModuleConfig(kind="pal", size=8, heads=2, init="normal")
    model = PalBert.from_pretrained("random:tiny", module=module).eval()
    for name in ("a", "b"):
        model.add_task(name, MeanHead())
    batches = []
    for rows, width in ((4, 10), (7, 13)):
        ids = torch.randint(5, 1000, (rows, width))
        mask = torch.ones_like(ids)
        mask[0, width // 2 :] = 0
        batches.append(
            dict(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                 task_ids=torch.arange(rows) % 2)
        )  # fmt: skip
    with torch.inference_mode():
        want = [model(b) for b in batches]
        compile_encoder(model)
        got = [model(b) for b in batches]
    for w, g in zip(want, got, strict=True):
        assert w.keys() == g.keys() == {"a", "b"}
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=0, atol=1e-5)
