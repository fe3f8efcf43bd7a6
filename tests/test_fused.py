"""The fused paths (one GEMM for a PAL's Q/K/V, slices for mixed batches) compute what the
plain formulas compute: outputs and gradients to 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from palbert import ModuleConfig, PalBert
from palbert.layers import LowDimAttention, Router
from tests.tiny_run import CLSHead


def plain_attention(self: LowDimAttention, x, mask):
    """MHA_{t,l} as three Linears and a (B, T) or ready-made mask: the unfused reference."""
    B, T, d = x.shape

    def split(t):
        return t.view(B, T, self.heads, d // self.heads).transpose(1, 2)

    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    if mask is not None and mask.dim() == 2:
        mask = mask[:, None, None, :].bool()
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return y.transpose(1, 2).reshape(B, T, d)


def plain_term(self: Router, fn, x, base, route):
    """Each task's rows gathered, its term computed alone, scattered into zeros, then added."""
    if route.task is not None:
        module = self.module(route.task)
        t = None if module is None else fn(module, x, route.mask)
        return None if t is None else base + t
    out = None
    for name, rows, mask in route.groups:
        module = self.module(name)
        idx = torch.arange(x.shape[0])[rows]
        t = None if module is None else fn(module, x[idx], mask)
        if t is not None:
            out = (torch.zeros_like(x) if out is None else out).index_add(0, idx, t)
    return None if out is None else base + out


def unfused(monkeypatch):
    monkeypatch.setattr(LowDimAttention, "forward", plain_attention)
    monkeypatch.setattr(Router, "term", plain_term)


@pytest.fixture(scope="module", params=["transformers", "minbert"])
def models(request):
    out = {}
    for kind in ("pal", "low_rank", "adapter"):
        torch.manual_seed(0)
        m = PalBert.from_pretrained(
            "minilm", impl=request.param, module=ModuleConfig(kind=kind, init="normal")
        )
        for i, name in enumerate(("a", "b", "c", "d")):
            m.add_task(name, CLSHead(384, 2 + i))
        with torch.no_grad():  # biases too, so a fused bias that went missing would show
            for p in m.task_modules.parameters():
                p.normal_(std=0.05)
        for mod in m.modules():  # train-mode code paths, made deterministic
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
        out[kind] = m
    return out


def run(model: PalBert, batch, route: str, train: bool):
    """Hidden states and (in train mode) the gradients of every parameter."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    ids = {"single": None, "contiguous": [0, 0, 1, 3], "scattered": [2, 0, 2, 1]}[route]
    with torch.set_grad_enabled(train):
        enc = model.encode(
            **batch,
            task="b" if ids is None else None,
            task_ids=None if ids is None else torch.tensor(ids),
            hidden_states=True,
        )
        if train:
            (enc.last_hidden_state * torch.linspace(-1, 1, 384)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return enc.hidden_states, grads


@pytest.mark.parametrize("kind", ["pal", "low_rank", "adapter"])
@pytest.mark.parametrize("route", ["single", "contiguous", "scattered"])
@pytest.mark.parametrize("train", [False, True])
def test_fused_paths_equal_the_plain_formulas(models, kind, route, train, pair_batch, monkeypatch):
    model = models[kind]
    fused_hs, fused_grads = run(model, pair_batch, route, train)
    with monkeypatch.context() as m:
        unfused(m)
        plain_hs, plain_grads = run(model, pair_batch, route, train)
    for got, want in zip(fused_hs, plain_hs, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert fused_grads.keys() == plain_grads.keys()
    if train:  # the task modules on the route (and the backbone) get gradients
        assert any(k.startswith("task_modules.") for k in fused_grads)
    for k in fused_grads:
        scale = max(1.0, plain_grads[k].abs().max().item())
        torch.testing.assert_close(fused_grads[k], plain_grads[k], rtol=0, atol=1e-5 * scale)
    # the modules matter here, so the comparison above could fail
    if route == "single" and not train:
        with torch.no_grad():
            bare = model.backbone(**pair_batch).last_hidden_state
        assert (fused_hs[-1] - bare).abs().max() > 1e-3
