"""Heads: output shapes, pooling math (last_k on the real MiniLM), bi-encoder features, cosine
scaling, losses and predictions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from palbert.model import Encoded
from palbert.tasks import HeadSpec, TaskSpec, build_task
from palbert.tasks.heads import (
    BiEncoderHead,
    CosineHead,
    PooledHead,
    Pooler,
    build_head,
    pair_features,
)

H = 16


def enc(batch=3, seq=5, layers=4, seed=0) -> Encoded:
    g = torch.Generator().manual_seed(seed)
    hs = tuple(torch.randn(batch, seq, H, generator=g) for _ in range(layers + 1))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 3:] = 0
    mask[1, 1:] = 0
    return Encoded(hs[-1], mask, hs)


def test_cls_and_masked_mean_pooling():
    e = enc()
    assert torch.equal(Pooler("cls")(e), e.last_hidden_state[:, 0])
    got = Pooler("mean")(e)
    assert torch.allclose(got[0], e.last_hidden_state[0, :3].mean(0))
    assert torch.allclose(got[1], e.last_hidden_state[1, 0])
    assert torch.allclose(got[2], e.last_hidden_state[2].mean(0))


def test_last_k_pooling_definition():
    e = enc(layers=4)
    avg = (e.hidden_states[-1] + e.hidden_states[-2] + e.hidden_states[-3]) / 3
    got = Pooler("last_k", k=3, token_pooling="mean")(e)
    assert torch.allclose(got[0], avg[0, :3].mean(0), atol=1e-6)
    assert torch.allclose(Pooler("last_k", k=3, token_pooling="cls")(e), avg[:, 0], atol=1e-6)
    assert torch.allclose(
        Pooler("last_k", k=1, token_pooling="mean")(e), Pooler("mean")(e), atol=1e-6
    )
    with pytest.raises(ValueError, match="needs hidden_states"):
        Pooler("last_k")(Encoded(e.last_hidden_state, e.attention_mask))
    with pytest.raises(ValueError, match="k=9"):
        Pooler("last_k", k=9)(e)


def test_last_k_on_real_minilm_matches_hand_computation():
    from palbert.backbones import load_backbone, load_tokenizer

    bb = load_backbone("minilm")
    tok = load_tokenizer("minilm")
    batch = tok(
        ["a short one", "a somewhat longer sentence about movies"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = bb.model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == bb.num_layers + 1
    e = Encoded(out.last_hidden_state, batch["attention_mask"], out.hidden_states)
    spec = TaskSpec.from_dict(
        {
            "name": "x",
            "text": "t",
            "labels": ["a", "b"],
            "files": {"train": "x.csv"},
            "head": {"pooling": "last_k", "k": 2},
        }
    )
    head = build_head(spec.head, bb.hidden_size, 2, "classification", "single").eval()
    assert head.needs_hidden_states
    # by hand: average layers 5 and 6 (hidden_states[5], [6]), then mean over real tokens
    m = batch["attention_mask"]
    avg = (out.hidden_states[5] + out.hidden_states[6]) / 2
    n_real = int(m[0].sum())
    want0 = avg[0, :n_real].mean(0)
    pooled = head.pool(e)
    assert torch.allclose(pooled[0], want0, atol=1e-6)
    assert torch.allclose(pooled[1], avg[1].mean(0), atol=1e-6)  # the longer row has no padding
    linear = head.mlp[-1]
    assert torch.allclose(head([e]), pooled @ linear.weight.T + linear.bias, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean", "last_k"])
@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_pooled_head_shapes(pooling, kind):
    spec = HeadSpec(type="mlp", hidden=(8, 4), pooling=pooling, activation="gelu", dropout=0.0)
    head = build_head(spec, H, 5, kind, "cross", (0.0, 5.0))
    assert isinstance(head, PooledHead) and head.encoding == "cross"
    assert head.needs_hidden_states == (pooling == "last_k")
    out = head([enc()])
    assert out.shape == ((3, 5) if kind == "classification" else (3,))


def test_mlp_structure():
    head = build_head(
        HeadSpec(type="mlp", hidden=(8, 4), activation="tanh", dropout=0.2),
        H,
        3,
        "classification",
        "single",
    )
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Dropout", "Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [8, 4, 3]
    default = build_head(HeadSpec(type="mlp"), H, 3, "classification", "single")
    assert [m.out_features for m in default.mlp if isinstance(m, torch.nn.Linear)] == [H, 3]
    linear = build_head(HeadSpec(), H, 3, "classification", "single")
    assert [type(m).__name__ for m in linear.mlp] == ["Dropout", "Linear"]


def test_bi_encoder_features_and_shape():
    u, v = torch.randn(2, 4), torch.randn(2, 4)
    f = pair_features(u, v, ("u", "v", "|u-v|", "u*v"))
    assert torch.equal(f, torch.cat([u, v, (u - v).abs(), u * v], -1))
    spec = HeadSpec(type="linear", pooling="mean", dropout=0.0)
    head = build_head(spec, H, 2, "classification", "bi")
    assert (
        isinstance(head, BiEncoderHead) and head.encoding == "bi" and not head.needs_hidden_states
    )
    a, b = enc(seed=1), enc(seed=2)
    out = head([a, b])
    assert out.shape == (3, 2)
    pa, pb = Pooler("mean")(a), Pooler("mean")(b)
    lin = head.mlp[-1]
    assert lin.in_features == 4 * H
    assert torch.allclose(
        out, pair_features(pa, pb, spec.features) @ lin.weight.T + lin.bias, atol=1e-6
    )
    with pytest.raises(ValueError, match="two encoded"):
        head([a])


@pytest.mark.parametrize("scale", ["relu", "affine"])
def test_cosine_head_maps_to_label_range(scale):
    head = build_head(
        HeadSpec(type="cosine", pooling="cls", cosine_scale=scale),
        H,
        1,
        "regression",
        "bi",
        (0.0, 5.0),
    )
    assert isinstance(head, CosineHead) and head.encoding == "bi"
    assert sum(p.numel() for p in head.parameters()) == 0
    a, b = enc(seed=1), enc(seed=2)
    cos = F.cosine_similarity(a.last_hidden_state[:, 0], b.last_hidden_state[:, 0], dim=-1)
    want = 5 * cos.clamp(min=0) if scale == "relu" else 5 * (cos + 1) / 2
    assert torch.allclose(head([a, b]), want, atol=1e-6)
    assert torch.allclose(
        head([a, a]), torch.full((3,), 5.0), atol=1e-5
    )  # identical -> top of range
    neg = Encoded(-a.last_hidden_state, a.attention_mask)
    assert torch.allclose(head([a, neg]), torch.full((3,), 0.0), atol=1e-5)  # opposite -> bottom


def test_builtin_default_heads():
    assert isinstance(build_task("sst").build_head(H), PooledHead)
    q = build_task("quora").build_head(H)
    assert q.encoding == "cross" and q([enc()]).shape == (3, 2)
    s = build_task("sts").build_head(H)
    assert s.encoding == "cross" and s([enc()]).shape == (3,)
    cos = build_task({"name": "sts", "head": {"type": "cosine", "pooling": "mean"}})
    assert cos.spec.encoding == "bi" and isinstance(cos.build_head(H), CosineHead)
    assert build_task("sst").build_head(H).encoding == "single"


def test_loss_and_predict():
    sst, sts = build_task("sst"), build_task("sts")
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0, 0.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(sst.loss(logits, y), F.cross_entropy(logits, y))
    p = sst.predict(logits)
    assert p["label"].tolist() == [0, 3] and p["label"].dtype == torch.int64
    assert torch.allclose(p["probs"].sum(-1), torch.ones(2))
    scores = torch.tensor([1.0, 4.5])
    assert torch.allclose(
        sts.loss(scores, torch.tensor([2.0, 4.0])), torch.tensor((1.0 + 0.25) / 2)
    )
    assert sts.predict(scores)["score"].tolist() == [1.0, 4.5]
    # two-way cross-entropy is binary cross-entropy on the logit difference
    quora = build_task("quora")
    two = torch.tensor([[0.3, 1.2], [2.0, -1.0]])
    yb = torch.tensor([1, 0])
    bce = F.binary_cross_entropy_with_logits(two[:, 1] - two[:, 0], yb.float())
    assert torch.allclose(quora.loss(two, yb), bce, atol=1e-6)


def test_heads_train_end_to_end_on_a_tiny_batch():
    # gradients reach every parameter of an MLP bi-encoder head
    torch.manual_seed(0)
    head = build_head(HeadSpec(type="mlp", hidden=(8,), dropout=0.0), H, 2, "classification", "bi")
    out = head([enc(seed=1), enc(seed=2)])
    F.cross_entropy(out, torch.tensor([0, 1, 1])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
