"""Configuration of the per-task modules injected into every encoder layer."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from palbert.activations import ACTIVATIONS
from palbert.validate import Where, at_least, at_most, build, check, each, one_of, rules

ModuleKind = Literal["pal", "low_rank", "adapter", "none"]
MODULE_KINDS: tuple[str, ...] = typing.get_args(ModuleKind)
MAX_SIZE = 1 << 16  # widths beyond this are typos (and would exhaust memory), not configs


@dataclass
class Progressive:
    """Progressive PAL depth: start with the top ``start`` layers, grow downward.

    Every ``every`` units (``unit`` = "steps" or "epochs") ``grow`` more layers below the
    active ones get their PAL, until all injected layers are active. Inactive PALs add nothing
    and get no gradient. The active set is a pure function of (step, epoch), so a resumed run
    continues the schedule exactly.
    """

    start: int = field(default=1, metadata=rules(at_least(0)))
    every: int = field(default=100, metadata=rules(at_least(1)))
    grow: int = field(default=1, metadata=rules(at_least(1)))
    unit: Literal["steps", "epochs"] = "steps"

    def __post_init__(self) -> None:
        check(self, Where(prefix=("module", "progressive")))

    def num_active(self, step: int, epoch: int, total: int) -> int:
        t = step if self.unit == "steps" else epoch
        return min(total, self.start + (t // self.every) * self.grow)


@dataclass
class ModuleConfig:
    """How each task's module looks.

    kind:       "pal" (projected attention), "low_rank", "adapter" (Houlsby bottleneck) or
                "none" (heads only on the shared encoder).
    size:       d_pal for PALs, the rank for low-rank, the bottleneck for adapters.
                None picks :func:`default_size` for the encoder's hidden size.
    heads:      attention heads of a PAL (None: 6, the paper's choice for bert-base).
    shared:     share V^E / V^D across layers (PAL default True, as in the paper; low-rank
                default False). Set explicitly to override.
    init:       "zero" (default): output projections start at zero, so a freshly injected
                model computes exactly what the backbone computes; "normal": every weight from
                N(0, 0.02) as in the authors' code.
    activation: applied to TS after V^D for PALs ("none" default, "gelu" as the authors'
                code) and inside the bottleneck for low-rank/adapters ("gelu" default there).
    layers:     indices of the layers to inject into (None: all).
    progressive: progressive PAL depth (None: all layers active from the start).

    >>> ModuleConfig(kind="pal").resolved(hidden_size=768).size
    204
    """

    kind: ModuleKind = "pal"
    size: int | None = field(default=None, metadata=rules(at_least(1), at_most(MAX_SIZE)))
    heads: int | None = field(default=None, metadata=rules(at_least(1), at_most(MAX_SIZE)))
    shared: bool | None = None
    init: Literal["zero", "normal"] = "zero"
    activation: str | None = field(default=None, metadata=rules(one_of(ACTIVATIONS)))
    layers: list[int] | None = field(default=None, metadata=rules(each(at_least(0))))
    progressive: Progressive | None = None

    def __post_init__(self) -> None:
        where = Where(prefix=("module",))
        check(self, where)
        if self.progressive is not None and self.kind != "pal":
            raise where.fail(("progressive",), "applies to kind 'pal' only")
        if self.kind == "pal" and self.size is not None and self.size % (self.heads or 6):
            raise where.fail(
                ("size",),
                f"must be divisible by the PAL's {self.heads or 6} heads, not {self.size}",
            )

    def resolved(self, hidden_size: int) -> ModuleConfig:
        """A copy with every None default filled in for an encoder of this hidden size."""
        if self.kind == "none":
            return ModuleConfig(kind="none", init=self.init)
        size = self.size if self.size is not None else default_size(self.kind, hidden_size)
        heads = self.heads if self.heads is not None else 6
        if self.kind == "pal" and size % heads:  # the default size for this encoder
            raise Where(prefix=("module",)).fail(
                ("heads",),
                f"must divide the PAL size {size} (the default for this encoder), not {heads}",
            )
        shared = self.shared if self.shared is not None else self.kind == "pal"
        activation = self.activation or ("none" if self.kind == "pal" else "gelu")
        return ModuleConfig(
            kind=self.kind,
            size=size,
            heads=heads,
            shared=shared,
            init=self.init,
            activation=activation,
            layers=self.layers,
            progressive=self.progressive,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Where | None = None) -> ModuleConfig:
        """Validate a ``module:`` mapping (errors name the key: ``module.size``)."""
        return build(cls, d, (), where or Where(prefix=("module",)))


def default_size(kind: str, hidden_size: int) -> int:
    """The documented rule for sizes at any hidden size H.

    PAL: 6 heads of round(34 * H / 768) dims, i.e. the paper's d_pal=204 for bert-base and
    102 for MiniLM (H=384). Low-rank: round(100 * H / 768). Adapter bottleneck: round(64 * H / 768).
    """
    if kind == "pal":
        return 6 * max(1, round(34 * hidden_size / 768))
    if kind == "low_rank":
        return max(1, round(100 * hidden_size / 768))
    if kind == "adapter":
        return max(1, round(64 * hidden_size / 768))
    return 0


__all__ = ["MODULE_KINDS", "ModuleConfig", "ModuleKind", "Progressive", "default_size"]
