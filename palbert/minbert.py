"""minBERT: a BERT encoder small enough to read top to bottom.

It computes what transformers' ``BertModel`` (without pooler) computes, and its module names
reproduce that model's state-dict keys, so the same safetensors files load into either::

    from palbert.minbert import MinBert

    model = MinBert.from_pretrained("path/to/bert-base-uncased")  # config.json + model.safetensors
    out = model(input_ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    out.last_hidden_state  # (B, T, H)
    out.hidden_states  # embeddings, then the output of each layer

One layer, in the names of the BERT paper and of the state dict::

    a   = attention.output(attention.self(x), x)        # LayerNorm(dropout(dense(SelfAttn(x))) + x)
    out = output(intermediate(a), a)                    # LayerNorm(dropout(dense(GELU(dense(a)))) + a)

palbert injects per-task modules with hooks on ``attention.output`` and ``output``, so both are
modules called exactly as above (see :mod:`palbert.layers.inject`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import BertConfig

from palbert.errors import BackboneError
from palbert.masks import attention_dtype, sdpa_padding_mask


@dataclass
class MinBertOutput:
    """What :class:`MinBert` returns; the same two fields as transformers' output."""

    last_hidden_state: torch.Tensor  # (B, T, H)
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings + each layer; or None


class Embeddings(nn.Module):
    """Token + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, H, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, H)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, H)
        self.LayerNorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        T = input_ids.size(1)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # a single segment
        positions = torch.arange(T, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)  # (T, H) broadcasts over the batch
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (no output projection: see AddNorm)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        H = config.hidden_size
        if H % config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {H} is not a multiple of {config.num_attention_heads} heads"
            )
        self.n_head = config.num_attention_heads
        self.query = nn.Linear(H, H)
        self.key = nn.Linear(H, H)
        self.value = nn.Linear(H, H)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)  # on attention weights

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        # (B, T, H) -> (B, n_head, T, head_size); SDPA accepts these strided views as they are
        q = self.query(x).view(B, T, self.n_head, -1).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_head, -1).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_head, -1).transpose(1, 2)
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return y.transpose(1, 2).reshape(B, T, H)  # heads side by side again


class AddNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: the end of both sublayers of a layer.

    ``layer.attention.output`` projects the attention heads back to H; ``layer.output`` projects
    the feed-forward's intermediate size back to H. palbert hooks both by these names.
    """

    def __init__(self, in_features: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    """The attention sublayer: ``attention.self`` then ``attention.output`` (Add & Norm)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = SelfAttention(config)  # "self" because the state-dict keys say so
        self.output = AddNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """The first half of the feed-forward: H -> intermediate_size, exact (erf) GELU."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    """One encoder layer: attention sublayer, then feed-forward sublayer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention(x, mask)
        # two positional arguments: palbert's pre-hook on `output` rewrites the second one
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    """The stack of layers, with optional activation checkpointing."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: dict[str, Any] = {"use_reentrant": False}

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, output_hidden_states: bool = False
    ) -> MinBertOutput:
        hidden_states = [x] if output_hidden_states else None
        for layer in self.layer:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # keep only each layer's input; recompute its insides during backward
                x = checkpoint(layer, x, mask, **self.checkpoint_kwargs)
            else:
                x = layer(x, mask)
            if hidden_states is not None:
                hidden_states.append(x)
        return MinBertOutput(x, tuple(hidden_states) if hidden_states is not None else None)


class MinBert(nn.Module):
    """A BERT encoder (embeddings + layers, no pooler) with transformers' state-dict keys.

    Example::

        model = MinBert(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128))
        out = model(torch.tensor([[101, 7592, 102, 0]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))
        out.last_hidden_state.shape  # (1, 4, 64)
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("minBERT supports only absolute position embeddings")
        if config.hidden_act != "gelu":
            raise ValueError(f"minBERT supports only hidden_act='gelu', not {config.hidden_act!r}")
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's initialisation: N(0, initializer_range), zero biases, zero padding embedding
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> MinBertOutput:
        """Encode a (B, T) batch of token ids; ``attention_mask`` is 1 for real tokens, 0 for pads."""
        x = self.embeddings(input_ids, token_type_ids)
        mask = sdpa_padding_mask(attention_mask, attention_dtype(x))  # once, for every layer
        return self.encoder(x, mask, output_hidden_states)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute each layer's activations in backward to save memory (as in transformers)."""
        self.encoder.gradient_checkpointing = True
        self.encoder.checkpoint_kwargs = {
            "use_reentrant": False,
            **(gradient_checkpointing_kwargs or {}),
        }

    def gradient_checkpointing_disable(self) -> None:
        self.encoder.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @classmethod
    def from_pretrained(cls, path: str | Path, config: BertConfig | None = None) -> MinBert:
        """Load Hugging Face BERT weights from safetensors (never pickle).

        ``path`` is a folder with config.json and model.safetensors (or a sharded
        model.safetensors.index.json), or a ``.safetensors`` file with ``config`` given or a
        config.json beside it. Checkpoints of ``BertFor*`` models work too: their ``bert.``
        prefix is stripped and their task heads and pooler are ignored. Example::

            model = MinBert.from_pretrained(palbert.backbones.embedded_path())
        """
        path = Path(path).expanduser()
        folder = path.parent if path.suffix == ".safetensors" else path
        if config is None:
            if not (folder / "config.json").is_file():
                raise BackboneError(f"no config.json in {folder}; minBERT needs the BERT config")
            config = BertConfig.from_pretrained(folder)
        state = _read_safetensors(path, BackboneError)

        if any(k.startswith("bert.") for k in state):
            # a BertFor* checkpoint: the encoder is under bert., everything else is a task head
            state = {k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}
        state = {
            k: v
            for k, v in state.items()
            if k != "embeddings.position_ids" and not k.startswith("pooler.")
        }

        model = cls(config)
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise BackboneError(
                f"weights in {path} do not fit minBERT with this config: "
                f"missing keys {_short(missing)}, unexpected keys {_short(unexpected)}"
            )
        model.load_state_dict(state, strict=True)
        return model.eval()


def _read_safetensors(path: Path, error: type[Exception]) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, of a folder's model.safetensors, or of its shards."""
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise error(f"weights file {path} does not exist")
        return load_file(path)
    if (path / "model.safetensors").is_file():
        return load_file(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(path / shard).items()}
    raise error(
        f"no model.safetensors in {path}; minBERT reads only safetensors weights "
        f"(convert a pytorch_model.bin with transformers' save_pretrained first)"
    )


def _short(keys: list[str], n: int = 8) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
