"""minBERT computes what transformers' BertModel computes, from the same weights and keys."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from palbert.backbones import BackboneError, load_backbone, load_tokenizer
from palbert.minbert import MinBert

TOL = 1e-5


@pytest.fixture(scope="module")
def minilm():
    """The embedded MiniLM weights in both implementations, plus its tokenizer."""
    mine = load_backbone("minilm", impl="minbert").model
    theirs = load_backbone("minilm").model
    return mine, theirs, load_tokenizer("minilm")


def run_both(mine, theirs, batch) -> tuple:
    with torch.no_grad():
        a = mine(**batch, output_hidden_states=True)
        b = theirs(**batch, output_hidden_states=True)
    return a, b


def assert_close(a, b) -> None:
    # Every position, pads included: both mask pad *keys* only, so pad queries still attend to
    # the real tokens and come out the same in both implementations.
    assert (a.last_hidden_state - b.last_hidden_state).abs().max().item() <= TOL
    assert len(a.hidden_states) == len(b.hidden_states)
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states, strict=True)):
        assert (x - y).abs().max().item() <= TOL, f"hidden_states[{i}] differs"


def test_minilm_padded_batch_matches_transformers(minilm):
    mine, theirs, tok = minilm
    sentences = [
        "Hi.",
        "The quick brown fox jumps over the lazy dog.",
        "A rather longer sentence, with punctuation, numbers like 1984 and rare words: "
        "antidisestablishmentarianism.",
    ]
    batch = dict(tok(sentences, padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    batch.pop("token_type_ids")  # single segment: minBERT's default of zeros
    assert_close(*run_both(mine, theirs, batch))


def test_minilm_sentence_pairs_match_transformers(minilm):
    mine, theirs, tok = minilm
    firsts = ["How old are you?", "What is the capital of France?"]
    seconds = ["What is your age?", "Paris is a big city in France, on the Seine."]
    batch = dict(tok(firsts, seconds, padding=True, return_tensors="pt"))
    assert batch["token_type_ids"].any()  # second segments present
    assert_close(*run_both(mine, theirs, batch))


def test_no_hidden_states_unless_asked(minilm):
    mine, _, _ = minilm
    out = mine(torch.tensor([[101, 7592, 102]]))
    assert out.hidden_states is None and out.last_hidden_state.shape == (1, 3, 384)


def test_state_dict_keys_identical(minilm):
    mine, theirs, _ = minilm
    assert list(mine.state_dict()) == list(theirs.state_dict())
    assert "encoder.layer.0.attention.output.LayerNorm.weight" in mine.state_dict()


def tiny_pair() -> tuple[MinBert, torch.nn.Module]:
    torch.manual_seed(0)
    return load_backbone("random:tiny", impl="minbert").model, load_backbone("random:tiny").model


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    tt = torch.zeros_like(ids)
    tt[:, 5:] = 1
    return dict(input_ids=ids * mask, attention_mask=mask, token_type_ids=tt)


@pytest.mark.parametrize("direction", ["into_minbert", "into_transformers"])
def test_random_weights_copied_give_equal_outputs(direction):
    mine, theirs = tiny_pair()
    src, dst = (theirs, mine) if direction == "into_minbert" else (mine, theirs)
    dst.load_state_dict(src.state_dict(), strict=True)
    assert_close(*run_both(mine, theirs, tiny_batch()))


def test_gradients_match_transformers():
    mine, theirs = tiny_pair()
    mine.load_state_dict(theirs.state_dict())
    batch = tiny_batch()
    for model in (mine, theirs):  # eval: no dropout, so the two are deterministic and comparable
        model(**batch).last_hidden_state.pow(2).sum().backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.grad, theirs_params[name].grad, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    mine, _ = tiny_pair()
    mine.train()  # dropout on: checkpointing must replay the same dropout masks
    batch = tiny_batch()

    def grads() -> dict[str, torch.Tensor]:
        mine.zero_grad()
        torch.manual_seed(123)
        mine(**batch).last_hidden_state.pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in mine.named_parameters()}

    plain = grads()
    mine.gradient_checkpointing_enable()
    assert mine.is_gradient_checkpointing
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_hooks_on_output_fire_and_rewrite_the_residual():
    # palbert's injection contract: a pre-hook on layer.output sees (intermediate, attention_out)
    mine, _ = tiny_pair()
    batch = tiny_batch()
    with torch.no_grad():
        before = mine(**batch).last_hidden_state
    seen = []

    def pre_hook(module, args):
        intermediate, attention_out = args
        seen.append((intermediate.shape[-1], attention_out.shape[-1]))
        return intermediate, attention_out + 1.0

    handle = mine.encoder.layer[-1].output.register_forward_pre_hook(pre_hook)
    with torch.no_grad():
        after = mine(**batch).last_hidden_state
    handle.remove()
    assert seen == [(128, 64)]
    assert not torch.allclose(before, after)


def save_tiny(folder, state: dict[str, torch.Tensor], config) -> None:
    folder.mkdir(exist_ok=True)
    config.to_json_file(folder / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")


def test_from_pretrained_reads_bertfor_checkpoints(tmp_path):
    mine, theirs = tiny_pair()
    # a BertFor* checkpoint: bert. prefix, a head, a pooler and the old position_ids buffer
    state = {f"bert.{k}": v for k, v in theirs.state_dict().items()}
    state["bert.pooler.dense.weight"] = torch.zeros(64, 64)
    state["bert.embeddings.position_ids"] = torch.arange(128)[None]
    state["classifier.weight"] = torch.zeros(2, 64)
    save_tiny(tmp_path / "ckpt", state, theirs.config)
    loaded = MinBert.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert_close(*run_both(loaded, theirs, tiny_batch()))
    # a bare .safetensors file with its config given
    again = MinBert.from_pretrained(tmp_path / "ckpt" / "model.safetensors", config=theirs.config)
    torch.testing.assert_close(again.state_dict(), loaded.state_dict())


def test_from_pretrained_names_missing_and_unexpected_keys(tmp_path):
    mine, _ = tiny_pair()
    state = dict(mine.state_dict())
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.1.output.adapter.weight"] = torch.zeros(2)
    save_tiny(tmp_path / "broken", state, mine.config)
    with pytest.raises(BackboneError) as e:
        MinBert.from_pretrained(tmp_path / "broken")
    assert "encoder.layer.1.output.dense.bias" in str(e.value)
    assert "encoder.layer.1.output.adapter.weight" in str(e.value)


def test_from_pretrained_names_the_folder_when_files_are_missing(tmp_path):
    with pytest.raises(BackboneError, match="config.json"):
        MinBert.from_pretrained(tmp_path)
    load_backbone("random:tiny").config.to_json_file(tmp_path / "config.json")
    with pytest.raises(BackboneError, match=re.escape(f"no model.safetensors in {tmp_path}")):
        MinBert.from_pretrained(tmp_path)
