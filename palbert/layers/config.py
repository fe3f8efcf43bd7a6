"""Configuration of the per-task modules injected into every encoder layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

ModuleKind = Literal["pal", "low_rank", "adapter", "none"]
KINDS: tuple[str, ...] = ("pal", "low_rank", "adapter", "none")


@dataclass
class Progressive:
    """Progressive PAL depth: start with the top ``start`` layers, grow downward.

    Every ``every`` units (``unit`` = "steps" or "epochs") ``grow`` more layers below the
    active ones get their PAL, until all injected layers are active. Inactive PALs add nothing
    and get no gradient. The active set is a pure function of (step, epoch), so a resumed run
    continues the schedule exactly.
    """

    start: int = 1
    every: int = 100
    grow: int = 1
    unit: Literal["steps", "epochs"] = "steps"

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
    size: int | None = None
    heads: int | None = None
    shared: bool | None = None
    init: Literal["zero", "normal"] = "zero"
    activation: Literal["none", "gelu", "relu"] | None = None
    layers: list[int] | None = None
    progressive: Progressive | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"module.kind must be one of {KINDS}, not {self.kind!r}")
        if self.init not in ("zero", "normal"):
            raise ValueError(f"module.init must be 'zero' or 'normal', not {self.init!r}")
        if self.activation not in (None, "none", "gelu", "relu"):
            raise ValueError(
                f"module.activation must be none, gelu or relu, not {self.activation!r}"
            )
        if isinstance(self.progressive, dict):
            self.progressive = Progressive(**self.progressive)
        if self.progressive is not None and self.kind != "pal":
            raise ValueError("module.progressive applies to kind 'pal' only")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"module.size must be positive, not {self.size}")

    def resolved(self, hidden_size: int) -> ModuleConfig:
        """A copy with every None default filled in for an encoder of this hidden size."""
        if self.kind == "none":
            return ModuleConfig(kind="none", init=self.init)
        size = self.size if self.size is not None else default_size(self.kind, hidden_size)
        heads = self.heads if self.heads is not None else 6
        if self.kind == "pal" and size % heads:
            raise ValueError(f"PAL size {size} is not divisible by its {heads} heads")
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
    def from_dict(cls, d: dict[str, Any]) -> ModuleConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown module key(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


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


__all__ = ["KINDS", "ModuleConfig", "ModuleKind", "Progressive", "default_size"]
