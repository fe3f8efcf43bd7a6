"""palbert.validate: typed conversion, field rules, key paths and origins, one error type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from palbert.validate import (
    ConfigError,
    Where,
    at_least,
    at_most,
    build,
    check,
    convert,
    each,
    in_range,
    rules,
)


@dataclass(frozen=True)
class Inner:
    size: int = field(default=1, metadata=rules(at_least(1), at_most(100)))
    mode: Literal["fast", "slow"] = "fast"

    def __post_init__(self) -> None:
        check(self, Where(prefix=("inner",)))
        if self.mode == "slow" and self.size > 10:
            raise Where(prefix=("inner",)).fail(("size",), "must be <= 10 when mode is slow")


@dataclass
class Outer:
    name: str
    rate: float = field(default=0.5, metadata=rules(in_range(0, 1)))
    widths: tuple[int, ...] = field(default=(), metadata=rules(each(at_least(1)), listify=True))
    pair: tuple[float, float] = (0.0, 1.0)
    inner: Inner | None = None
    every: int | Literal["epoch"] = "epoch"
    flag: bool = False
    files: dict[str, str] = field(default_factory=dict)


def test_types_convert_and_refuse():
    o = build(Outer, {"name": "a", "rate": "1e-1", "widths": 8, "pair": [1, 2], "every": 3})
    assert (o.rate, o.widths, o.pair, o.every) == (0.1, (8,), (1.0, 2.0), 3)
    assert build(Outer, {"name": "a", "inner": {"size": 5}}).inner == Inner(size=5)
    for raw, message in [
        ({"name": "a", "flag": 1}, "flag must be bool, not 1"),
        ({"name": "a", "widths": [True]}, "widths.0 must be int, not True"),  # bool is not int
        ({"name": "a", "rate": float("nan")}, "rate must be a finite number, not nan"),
        ({"name": "a", "pair": [1]}, "pair must be a list of 2 (float, float), not [1]"),
        ({"name": "a", "every": "epok"}, "every must be int or 'epoch', not 'epok' (did you mean"),
        ({"name": "a", "inner": {"mode": "slwo"}}, "inner.mode must be one of fast, slow, not"),
        ({"name": "a", "files": {"train": 3}}, "files.train must be str, not 3"),
        ({"name": 3}, "name must be str, not 3"),
        ({}, "name is required"),
    ]:
        with pytest.raises(ConfigError) as e:
            build(Outer, raw)
        assert str(e.value).startswith(message), str(e.value)


def test_rules_name_the_item():
    with pytest.raises(ConfigError, match=r"^widths\.1 must be >= 1, not 0$"):
        build(Outer, {"name": "a", "widths": [3, 0]})
    with pytest.raises(ConfigError, match=r"^rate must be in \[0, 1\), not 1\.0$"):
        build(Outer, {"name": "a", "rate": 1})
    with pytest.raises(ConfigError, match=r"^inner\.size must be <= 100, not 1000000000000$"):
        build(Outer, {"name": "a", "inner": {"size": 10**12}})


def test_unknown_key_suggests_the_full_path():
    with pytest.raises(ConfigError) as e:
        build(Outer, {"name": "a", "inner": {"sise": 3}}, (), Where(prefix=("x",)))
    assert str(e.value) == (
        "unknown key x.inner.sise; did you mean 'x.inner.size'? (known here: size, mode)"
    )
    # a key that belongs to another section
    with pytest.raises(ConfigError, match=r"did you mean 'other\.files'\?"):
        build(Inner, {"files": 1}, (), Where(), elsewhere={"other": ["files"]})


def test_origin_line_override_and_error_class():
    class MyError(ConfigError):
        pass

    where = Where(
        file="r.yaml",
        lines={("inner",): 4, ("inner", "size"): 5},
        overrides={("inner", "mode"): "inner.mode=slow"},
        error=MyError,
    )
    with pytest.raises(MyError, match=r"^inner\.size \(r\.yaml line 5\) must be >= 1, not 0$"):
        convert({"size": 0}, Inner, ("inner",), where)
    # an error raised by the object's own check after conversion is named under the outer
    # origin: the override that set mode, not the line of the section
    with pytest.raises(MyError) as e:
        convert({"size": 50, "mode": "slow"}, Inner, ("inner",), where)
    assert str(e.value) == "inner.size (r.yaml line 5) must be <= 10 when mode is slow"
    with pytest.raises(MyError, match=r"inner\.mode \(command-line override inner\.mode=slow\)"):
        convert({"mode": "slo"}, Inner, ("inner",), where)
    assert issubclass(ConfigError, ValueError)


def test_objects_made_in_code_obey_the_same_rules():
    with pytest.raises(ConfigError, match=r"^inner\.size must be >= 1, not 0$"):
        Inner(size=0)
    with pytest.raises(ConfigError, match=r"^inner\.mode must be one of fast, slow"):
        Inner(mode="x")  # type: ignore[arg-type]


# -- the module config and the one activation table ---------------------------------------


def test_module_config_rules():
    from palbert.layers import ModuleConfig

    for kw, message in [
        ({"heads": 0}, "module.heads must be >= 1, not 0"),  # was a ZeroDivisionError
        ({"size": 10**12}, "module.size must be <= 65536, not 1000000000000"),
        ({"size": 100, "heads": 6}, "module.size must be divisible by the PAL's 6 heads, not 100"),
        ({"layers": [0, -1]}, "module.layers.1 must be >= 0, not -1"),
        ({"kind": "adaptor"}, "module.kind must be one of pal, low_rank, adapter, none, not"),
        ({"kind": "adapter", "progressive": {}}, "module.progressive applies to kind 'pal' only"),
        ({"progressive": {"every": 0}}, "module.progressive.every must be >= 1, not 0"),
    ]:
        with pytest.raises(ValueError) as e:  # ValueError, as callers catch it
            ModuleConfig(**kw)
        assert str(e.value).startswith(message), str(e.value)
    with pytest.raises(ValueError, match="module.heads must divide the PAL size 204"):
        ModuleConfig(heads=7).resolved(768)
    cfg = ModuleConfig.from_dict({"progressive": {"start": 2}, "layers": [1, 2]})
    assert cfg.progressive.start == 2 and cfg.layers == [1, 2]


def test_one_activation_table_for_modules_and_heads():
    from torch import nn

    from palbert.activations import ACTIVATIONS, activation
    from palbert.layers import ModuleConfig, build_module
    from palbert.tasks import HeadSpec
    from palbert.tasks.heads import build_head

    assert ACTIVATIONS == ("none", "relu", "gelu", "tanh")
    assert isinstance(activation("none"), nn.Identity) and isinstance(activation("tanh"), nn.Tanh)
    low = build_module(ModuleConfig(kind="low_rank", size=4, activation="tanh"), 16, 2)
    assert isinstance(low.act, nn.Tanh)
    head = build_head(
        HeadSpec(type="mlp", hidden=(8,), activation="gelu"), 16, 2, "classification", "single"
    )
    assert any(isinstance(m, nn.GELU) for m in head.modules())
    with pytest.raises(
        ValueError, match=r"module\.activation must be one of none, relu, gelu, tanh"
    ):
        ModuleConfig(activation="swish")
    with pytest.raises(
        ValueError, match=r"head\.activation must be one of .* \(did you mean 'tanh'"
    ):
        HeadSpec(activation="tahn")
