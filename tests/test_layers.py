"""PAL, low-rank and adapter modules: exact sizes, the paper's formula, identity at init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from palbert import ModuleConfig, PalBert
from palbert.layers import PAL, Adapter, LowRank, build_module, default_size
from tests.tiny_run import CLSHead

BERT_BASE = dict(H=768, L=12)
BERT_BASE_WITH_POOLER = 109_482_240  # bert-base-uncased as the paper counts it


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_sizes_follow_the_documented_rule():
    assert default_size("pal", 768) == 204
    assert default_size("pal", 384) == 102
    cfg = ModuleConfig().resolved(768)
    assert (cfg.size, cfg.heads, cfg.shared) == (204, 6, True)


def test_pal_parameter_count_matches_the_paper_exactly():
    pal = build_module(ModuleConfig(kind="pal"), 768, 12)
    assert isinstance(pal, PAL)
    assert n_params(pal.V_E) == 156_876
    assert n_params(pal.V_D) == 157_440
    assert n_params(pal) == 1_819_836 == 156_876 + 157_440 + 12 * 3 * (204**2 + 204)


def test_eight_pal_tasks_on_bert_base_cost_x1133():
    model = PalBert.from_pretrained("random:bert-base")
    for i in range(8):
        model.add_task(f"t{i}", CLSHead(768, 2))
    r = model.parameter_report()
    assert r["backbone"] == 108_891_648  # BertModel without the unused pooler
    assert all(t["module"] == 1_819_836 for t in r["tasks"].values())
    assert r["modules"] == 8 * 1_819_836
    assert r["kinds"] == {"pal": 8 * 1_819_836}
    assert r["tasks"]["t0"]["head"] == 768 * 2 + 2
    # The paper's x1.13 counts bert-base with its pooler.
    assert round((BERT_BASE_WITH_POOLER + r["modules"]) / BERT_BASE_WITH_POOLER, 3) == 1.133
    assert round(r["multiple"], 3) == 1.134


@pytest.mark.parametrize("shared", [True, False])
def test_low_rank_and_adapter_counts_match_closed_forms(shared):
    H, L = BERT_BASE["H"], BERT_BASE["L"]
    r = 100
    lr = build_module(ModuleConfig(kind="low_rank", size=r, shared=shared), H, L)
    assert isinstance(lr, LowRank)
    per = H * r + r + r * H + H
    assert n_params(lr) == (per if shared else L * per)
    m = 64
    ad = build_module(ModuleConfig(kind="adapter", size=m), H, L)
    assert isinstance(ad, Adapter)
    assert n_params(ad) == L * 2 * (2 * H * m + m + H)


def test_unshared_pal_and_layer_subset_counts():
    d, H = 204, 768
    attn = 3 * (d * d + d)
    unshared = build_module(ModuleConfig(kind="pal", shared=False), H, 12)
    assert n_params(unshared) == 12 * (H * d + d + d * H + H + attn)
    subset = build_module(ModuleConfig(kind="pal", layers=[9, 10, 11]), H, 12)
    assert n_params(subset) == H * d + d + d * H + H + 3 * attn
    with pytest.raises(ValueError, match="out of range"):
        build_module(ModuleConfig(kind="pal", layers=[12]), H, 12)


def test_pal_is_the_papers_formula():
    """TS(h) = V^D MHA(V^E h) against a float64 hand computation."""
    torch.manual_seed(0)
    cfg = ModuleConfig(kind="pal", size=12, heads=3, init="normal").resolved(16)
    pal = PAL(cfg, 16, range(2)).double()
    h = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = pal.residual(1, h, mask)
    x = pal.V_E(h)
    att = pal.attn["1"]
    q, k, v = (f(x).view(2, 5, 3, 4).transpose(1, 2) for f in (att.query, att.key, att.value))
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(4)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 12)
    torch.testing.assert_close(got, pal.V_D(y), rtol=0, atol=1e-12)
    # No padding: the Route passes no mask (SDPA's fast path), same result as a mask of ones.
    ones = torch.ones(2, 5, dtype=torch.long)
    torch.testing.assert_close(
        pal.residual(1, h, None), pal.residual(1, h, ones), rtol=0, atol=1e-12
    )


def test_bad_configs_are_refused_with_the_key():
    with pytest.raises(ValueError, match="module.kind"):
        ModuleConfig(kind="lora")
    with pytest.raises(ValueError, match="divisible"):
        ModuleConfig(kind="pal", size=100, heads=6).resolved(768)
    with pytest.raises(ValueError, match=r"unknown key module\.knd; did you mean .module\.kind"):
        ModuleConfig.from_dict({"knd": "pal"})


def test_route_builds_the_mask_once_and_slices_for_contiguous_tasks():
    from palbert.layers import Route

    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    names = ["a", "b", "c"]
    route = Route.of(mask, task_ids=torch.tensor([1, 1, 0, 2]), names=names)
    assert route.mask.shape == (4, 1, 1, 3) and route.mask.dtype == torch.bool
    assert route.contiguous
    assert [(n, r) for n, r, _ in route.groups] == [
        ("b", slice(0, 2)),
        ("a", slice(2, 3)),
        ("c", slice(3, 4)),
    ]
    assert torch.equal(route.groups[0][2], route.mask[0:2])
    scattered = Route.of(mask, task_ids=torch.tensor([1, 0, 1, 2]), names=names)
    assert not scattered.contiguous
    assert [(n, r.tolist()) for n, r, _ in scattered.groups] == [
        ("b", [0, 2]),  # in order of first row
        ("a", [1]),
        ("c", [3]),
    ]
    assert Route.of(torch.ones(2, 3, dtype=torch.long), task="a").mask is None  # fast path


def _inputs_alive_two_layers_on(model: nn.Module, layers, run) -> dict[int, bool]:
    """For each layer l >= 2, whether the input of layer l - 2 is still alive when l starts."""
    import weakref

    inputs: dict[int, weakref.ref] = {}
    alive: dict[int, bool] = {}

    def record(l):
        def hook(module, args, kwargs):
            if l >= 2:
                alive[l] = inputs[l - 2]() is not None
            inputs[l] = weakref.ref(args[0] if args else kwargs["hidden_states"])

        return hook

    handles = [
        layer.register_forward_pre_hook(record(l), with_kwargs=True)
        for l, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return alive


@pytest.mark.parametrize("impl", ["transformers", "minbert"])
def test_inference_frees_each_layers_input_when_the_bare_encoder_does(impl, pair_batch):
    """The route holds a layer's input h only until the layer's PAL has read it, so in
    inference PALs keep no (B, T, H) tensor alive that the bare encoder would have freed."""
    from palbert import load_backbone

    bare = load_backbone("minilm", impl=impl)
    model = PalBert(load_backbone("minilm", impl=impl), module=ModuleConfig(kind="pal")).eval()
    model.add_task("t", CLSHead(384, 2))
    want = _inputs_alive_two_layers_on(bare.model, bare.layers, lambda: bare.model(**pair_batch))
    got = _inputs_alive_two_layers_on(
        model, model.backbone_info.layers, lambda: model(pair_batch, task="t")
    )
    assert len(want) == len(bare.layers) - 2 and not any(list(want.values())[1:])
    assert got == want


def _op_counts(run) -> dict[str, int]:
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count() as c:
        run()
    return c.ops


@pytest.mark.parametrize("autocast", [False, True])
def test_the_padding_mask_is_converted_once_per_forward_not_per_layer(autocast, pair_batch):
    """SDPA turns a boolean mask into an additive one on every call (a where and two scalars:
    three kernels a layer on a GPU). The Route builds the additive mask once, in the dtype the
    PALs' attention runs in, so PALs add no mask op per layer to what the encoder does, and
    the outputs are those of the boolean mask bit for bit."""
    from palbert import load_backbone
    from palbert.layers import LowDimAttention
    from palbert.masks import sdpa_padding_mask

    bare = load_backbone("minilm").model.eval()
    model = PalBert.from_pretrained("minilm", module=ModuleConfig(kind="pal", init="normal"))
    model.add_task("t", CLSHead(384, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        encoder = _op_counts(lambda: bare(**pair_batch))
        pal = _op_counts(lambda: model(pair_batch, task="t"))
    for op in ("where", "scalar_tensor", "masked_fill_", "full"):
        assert pal[op] - encoder[op] <= 1, (op, encoder[op], pal[op])  # <= 1: the Route's

    attn = model.task_modules["t"].attn["0"]
    x = torch.randn(4, pair_batch["attention_mask"].shape[1], attn.query.in_features)
    with torch.no_grad():
        boolean = sdpa_padding_mask(pair_batch["attention_mask"])
        additive = sdpa_padding_mask(pair_batch["attention_mask"], torch.float32)
        assert boolean.dtype == torch.bool and additive.dtype == torch.float32
        assert torch.equal(LowDimAttention.forward(attn, x, boolean), attn(x, additive))


def test_a_task_module_adds_a_term_only_where_it_defines_a_hook():
    """The TaskModule contract: every hook returns None by default (nothing added, the bare
    encoder's output exactly); the Router calls whichever hooks a module defines."""
    from palbert import load_backbone
    from palbert.layers import Route, Router, TaskModule

    class FfnOfLayerOne(TaskModule):
        def ffn_bottleneck(self, layer: int, x: torch.Tensor) -> torch.Tensor | None:
            return torch.ones_like(x) if layer == 1 else None

    torch.manual_seed(0)
    bb = load_backbone("random:tiny")
    bb.model.eval()
    config = ModuleConfig(kind="adapter").resolved(bb.hidden_size)
    router = Router(
        {
            "bare": TaskModule(config, bb.hidden_size, range(bb.num_layers)),
            "one": FfnOfLayerOne(config, bb.hidden_size, range(bb.num_layers)),
        }
    )
    router.inject(bb.layers)
    ids = torch.randint(5, 1000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0

    def hidden(task: str | None) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            if task is None:
                return bb.model(ids, mask, output_hidden_states=True).hidden_states
            with router.routing(Route.of(mask, task=task)):
                return bb.model(ids, mask, output_hidden_states=True).hidden_states

    want = hidden(None)  # outside a routing block: no module runs
    for got, ref in zip(hidden("bare"), want, strict=True):
        assert torch.equal(got, ref)
    one = hidden("one")
    assert torch.equal(one[1], want[1])  # layer 0 untouched
    assert not torch.allclose(one[2], want[2])  # layer 1's feed-forward output got +1
