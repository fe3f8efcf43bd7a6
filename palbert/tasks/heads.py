"""Task heads: pooling, then a linear layer, an MLP, a bi-encoder or the cosine head.

The contract the multi-task model relies on: a head has ``encoding`` ("single", "cross" or
"bi") and ``needs_hidden_states``; ``forward(features)`` takes a list of
:class:`palbert.encoded.Encoded` (one for single/cross inputs, two for "bi": sentence a and
sentence b, each encoded alone) and returns logits ``(batch, num_labels)`` for classification or
scores ``(batch,)`` for regression.

Pooling (every head), for hidden states ``H`` (batch, seq, hidden) and mask ``m``:

- ``cls``: ``H[:, 0]``, the [CLS] vector;
- ``mean``: ``sum_t m_t H_t / sum_t m_t``, padding excluded;
- ``last_k``: first average the hidden states of the last ``k`` layers,
  ``H' = mean(hidden_states[-k:])`` (``hidden_states[-1]`` is the last layer's output and
  ``hidden_states[0]`` the embeddings), then pool ``H'`` over tokens by ``token_pooling``
  (``mean`` by default, or ``cls``). Such heads set ``needs_hidden_states = True``.

::

    head = build_head(HeadSpec(type="mlp", hidden=(256,), pooling="mean"), hidden_size=384,
                      num_labels=5, kind="classification", encoding="single")
    logits = head([Encoded(last_hidden_state, attention_mask)])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from palbert.activations import activation as make_activation
from palbert.choices import check_choice
from palbert.tasks.spec import POOLINGS, HeadSpec

if TYPE_CHECKING:
    from palbert.encoded import Encoded


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden) by [CLS] or masked mean."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown token pooling {how!r}")


class Pooler(nn.Module):
    """Turns one :class:`Encoded` into one vector per row (see the module docstring)."""

    def __init__(self, pooling: str = "cls", k: int = 2, token_pooling: str = "mean") -> None:
        super().__init__()
        check_choice("pooling", pooling, POOLINGS)
        self.pooling = pooling
        self.k = k
        self.token_pooling = token_pooling

    @property
    def needs_hidden_states(self) -> bool:
        return self.pooling == "last_k"

    def forward(self, enc: Encoded) -> torch.Tensor:
        if self.pooling != "last_k":
            return pool_tokens(enc.last_hidden_state, enc.attention_mask, self.pooling)
        hs = enc.hidden_states
        if hs is None:
            raise ValueError(
                "pooling 'last_k' needs hidden_states; call the encoder with output_hidden_states"
            )
        if self.k > len(hs):
            raise ValueError(
                f"pooling 'last_k' with k={self.k} but the encoder gives {len(hs)} hidden states"
            )
        avg = torch.stack(tuple(hs[-self.k :]), dim=0).mean(0)
        return pool_tokens(avg, enc.attention_mask, self.token_pooling)

    def extra_repr(self) -> str:
        if self.pooling == "last_k":
            return f"last_k, k={self.k}, token_pooling={self.token_pooling}"
        return self.pooling


def mlp(
    in_features: int, hidden: tuple[int, ...], out_features: int, activation: str, dropout: float
) -> nn.Sequential:
    """dropout -> [Linear -> activation -> dropout] per hidden size -> Linear(out).

    With no hidden sizes it is dropout then one Linear: the usual BERT classifier.
    """
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), make_activation(activation), nn.Dropout(dropout)]
        width = h
    layers.append(nn.Linear(width, out_features))
    seq = nn.Sequential(*layers)
    for m in seq.modules():
        if isinstance(m, nn.Linear):  # BERT's initialisation, so heads start small
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return seq


def _hidden(spec: HeadSpec, hidden_size: int) -> tuple[int, ...]:
    # type "mlp" without sizes: one hidden layer as wide as the encoder
    if spec.type == "mlp" and not spec.hidden:
        return (hidden_size,)
    return tuple(spec.hidden)


class PooledHead(nn.Module):
    """Linear or MLP on one pooled vector: single sentences and cross-encoded pairs."""

    def __init__(
        self,
        spec: HeadSpec,
        hidden_size: int,
        out_features: int,
        regression: bool,
        encoding: str = "single",
    ) -> None:
        super().__init__()
        if encoding not in ("single", "cross"):
            raise ValueError(f"PooledHead is for 'single' or 'cross' inputs, not {encoding!r}")
        self.encoding = encoding
        self.regression = regression
        self.pool = Pooler(spec.pooling, spec.k, spec.token_pooling)
        self.mlp = mlp(
            hidden_size, _hidden(spec, hidden_size), out_features, spec.activation, spec.dropout
        )

    @property
    def needs_hidden_states(self) -> bool:
        return self.pool.needs_hidden_states

    def forward(self, features: list[Encoded]) -> torch.Tensor:
        out = self.mlp(self.pool(features[0]))
        return out.squeeze(-1) if self.regression else out


def pair_features(u: torch.Tensor, v: torch.Tensor, which: tuple[str, ...]) -> torch.Tensor:
    """Concatenate the chosen of u, v, |u-v|, u*v (Sentence-BERT's classification features)."""
    parts = {"u": lambda: u, "v": lambda: v, "|u-v|": lambda: (u - v).abs(), "u*v": lambda: u * v}
    return torch.cat([parts[w]() for w in which], dim=-1)


class BiEncoderHead(nn.Module):
    """Pairs encoded one sentence at a time: pool u and v, concatenate features, linear/MLP."""

    encoding = "bi"

    def __init__(
        self, spec: HeadSpec, hidden_size: int, out_features: int, regression: bool
    ) -> None:
        super().__init__()
        self.regression = regression
        self.features = tuple(spec.features)
        self.pool = Pooler(spec.pooling, spec.k, spec.token_pooling)
        width = hidden_size * len(self.features)
        self.mlp = mlp(
            width, _hidden(spec, hidden_size), out_features, spec.activation, spec.dropout
        )

    @property
    def needs_hidden_states(self) -> bool:
        return self.pool.needs_hidden_states

    def forward(self, features: list[Encoded]) -> torch.Tensor:
        if len(features) != 2:
            raise ValueError(f"a bi-encoder head takes two encoded sentences, got {len(features)}")
        u, v = self.pool(features[0]), self.pool(features[1])
        out = self.mlp(pair_features(u, v, self.features))
        return out.squeeze(-1) if self.regression else out


class CosineHead(nn.Module):
    """cos(u, v) of two separately encoded sentences mapped to the label range [lo, hi].

    ``scale="relu"``: ``lo + relu(cos) * (hi - lo)`` - for STS (0..5) this is "cosine
    similarity, ReLU, times 5" of the reference system; ``scale="affine"``:
    ``lo + (cos + 1) / 2 * (hi - lo)``, which keeps negative cosines distinguishable.
    No parameters: everything it learns is in the encoder (and the task's PALs).
    """

    encoding = "bi"

    def __init__(self, spec: HeadSpec, label_range: tuple[float, float]) -> None:
        super().__init__()
        self.pool = Pooler(spec.pooling, spec.k, spec.token_pooling)
        self.scale = spec.cosine_scale
        self.lo, self.hi = float(label_range[0]), float(label_range[1])

    @property
    def needs_hidden_states(self) -> bool:
        return self.pool.needs_hidden_states

    def forward(self, features: list[Encoded]) -> torch.Tensor:
        if len(features) != 2:
            raise ValueError(f"the cosine head takes two encoded sentences, got {len(features)}")
        u, v = self.pool(features[0]), self.pool(features[1])
        cos = F.cosine_similarity(u, v, dim=-1, eps=1e-8)
        unit = F.relu(cos) if self.scale == "relu" else (cos + 1.0) / 2.0
        return self.lo + unit * (self.hi - self.lo)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, range=({self.lo:g}, {self.hi:g})"


def build_head(
    spec: HeadSpec,
    hidden_size: int,
    num_labels: int,
    kind: str,
    encoding: str,
    label_range: tuple[float, float] | None = None,
) -> nn.Module:
    """The head a task spec asks for. Regression heads output one score per row."""
    regression = kind == "regression"
    out = 1 if regression else num_labels
    if spec.type == "cosine":
        if not regression or encoding != "bi" or label_range is None:
            raise ValueError(
                "the cosine head needs a regression task with encoding 'bi' and a label range"
            )
        return CosineHead(spec, label_range)
    if encoding == "bi":
        return BiEncoderHead(spec, hidden_size, out, regression)
    return PooledHead(spec, hidden_size, out, regression, encoding)
