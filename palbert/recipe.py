"""Recipes: a YAML file validated into a typed :class:`Recipe`.

::

    recipe = load_recipe("recipes/quickstart.yaml", ["train.max_steps=50", "sampler.kind=sqrt"])
    recipe.train.precision, recipe.tasks[0].name
    print(dump_recipe(recipe))          # the resolved recipe, as saved in the run folder

A recipe has these sections (every key is optional except ``tasks``)::

    name: quickstart                    # run folders are <output_dir>/<name>-<YYYYmmdd-HHMMSS>
    backbone: {name: minilm, impl: transformers}
    module: {kind: pal, size: null, heads: null, ..., progressive: {start, every, grow, unit}}
    tasks:                              # built-in names, or mappings (see palbert.tasks.TaskSpec)
      - sst
      - {name: sts, batch_size: 16, loss_weight: 2.0, head: {type: cosine}, module: {kind: none}}
    train: {mode: frozen, epochs: 3, max_steps: null, batch_size: 32, max_length: 128, ...}
    sampler: {kind: round_robin, alpha: null, temperature: 2.0, epoch: sum, ...}
    optimizer: {name: adamw, lr: 2e-5, task_lr: 1e-3, weight_decay: 0.01, betas: [0.9, 0.999]}
    schedule: {warmup_steps: null, warmup_ratio: 0.1, decay: linear}
    eval: {every: epoch, metric: mean, split: dev}
    output_dir: checkpoints
    data_dir: null                      # see resolve_data_dir

Command-line overrides are ``key.sub=value`` with the value parsed as YAML
(``train.lr=1e-4``, ``tasks.0.batch_size=8``, ``module.progressive={start: 2}``).

Errors (:class:`RecipeError`) name the key path and, for keys from the file, its line; an
unknown key comes with the closest known key ("did you mean ...").
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from palbert.layers import ModuleConfig, Progressive

DATA_ENV = "PALBERT_DATA_DIR"
DEFAULT_OUTPUT_DIR = "checkpoints"


class RecipeError(ValueError):
    """A recipe is wrong: the message names the key (and YAML line) and what was expected."""


# -- sections ---------------------------------------------------------------------------


@dataclass
class BackboneSection:
    """The shared encoder: a hub name, a local folder, ``minilm`` or ``random:<shape>``."""

    name: str = "bert-base-uncased"
    impl: Literal["transformers", "minbert"] = "transformers"


@dataclass
class TaskEntry:
    """One ``tasks:`` entry: the task's mapping (handed to ``palbert.tasks.build_task``)
    an optional per-task module that overrides the recipe's ``module``, and ``on_error``
    (``skip`` drops rows the reader rejects, reporting them; ``raise`` stops)."""

    name: str
    spec: str | dict[str, Any]
    module: ModuleConfig | None = None
    on_error: Literal["raise", "skip"] = "raise"  # "skip": drop bad rows, reported

    def to_yaml(self) -> str | dict[str, Any]:
        if self.module is None and self.on_error == "raise":
            return self.spec
        d = {"name": self.name} if isinstance(self.spec, str) else dict(self.spec)
        if self.module is not None:
            d["module"] = _asdict(self.module)
        if self.on_error != "raise":
            d["on_error"] = self.on_error
        return d


@dataclass
class TrainSection:
    """How long and how to train.

    mode: full (backbone too), frozen (task modules + heads), heads (heads only).
    epochs / max_steps: max_steps (optimizer steps) wins when both are set.
    batch_size / max_length: defaults for tasks that set none.
    grad_accum: micro-batches (sampler draws) per optimizer step.
    precision: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (CUDA only), bf16.
    save_every: optimizer steps between resume checkpoints (None: at each evaluation).
    """

    mode: Literal["full", "frozen", "heads"] = "full"
    epochs: int | None = 3
    max_steps: int | None = None
    batch_size: int = 32
    max_length: int = 128
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    pcgrad: bool = False
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    seed: int = 0
    save_every: int | None = None
    log_every: int = 10
    eval_batch_size: int = 64
    device: str = "auto"


@dataclass
class SamplerSection:
    """Which task each micro-batch comes from (see palbert.training.samplers).

    kind: round_robin, uniform, proportional (alpha 1), sqrt (alpha 0.5), annealed, temperature.
    alpha: overrides the exponent of proportional/sqrt (p_i ~ N_i^alpha).
    temperature: T of the temperature sampler (p_i ~ N_i^(1/T)).
    epoch: what one epoch is: sum (all tasks' batches), min / max (number of tasks times
           the smallest / largest task's batches) or fixed (steps_per_epoch optimizer steps).
    per: draw a task once per optimizer step (all its grad_accum micro-batches from it) or
         for every micro-batch (steps then mix tasks; PCGrad needs this).
    mixed: merge the micro-batches of an optimizer step into one forward pass with task_ids.
    """

    kind: Literal["round_robin", "uniform", "proportional", "sqrt", "annealed", "temperature"] = (
        "round_robin"
    )
    alpha: float | None = None
    temperature: float = 2.0
    epoch: Literal["sum", "min", "max", "fixed"] = "sum"
    steps_per_epoch: int | None = None
    per: Literal["step", "micro_batch"] = "step"
    mixed: bool = False


@dataclass
class OptimizerSection:
    """AdamW: ``lr`` for the backbone, ``task_lr`` for the task modules (PALs, adapters) and
    ``head_lr`` for the heads (None: ``task_lr``)."""

    name: Literal["adamw"] = "adamw"
    lr: float = 2e-5
    task_lr: float | None = 1e-3
    head_lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class ScheduleSection:
    """Linear warmup (steps, or a ratio of all steps) then linear/cosine decay to 0 or constant."""

    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    decay: Literal["linear", "cosine", "constant"] = "linear"


@dataclass
class EvalSection:
    """Dev evaluation: every N optimizer steps or at the end of each epoch ("epoch").

    metric: the selection score, "mean" (mean of the tasks' primary metrics) or
    "<task>.<metric>" (e.g. "sts.pearson"); higher is better.
    """

    every: int | Literal["epoch"] = "epoch"
    metric: str = "mean"
    split: str = "dev"


@dataclass
class Recipe:
    """A validated recipe; ``source`` is the file it came from (None when built in code)."""

    tasks: list[TaskEntry]
    name: str = "run"
    backbone: BackboneSection = field(default_factory=BackboneSection)
    module: ModuleConfig = field(default_factory=lambda: ModuleConfig(kind="pal"))
    train: TrainSection = field(default_factory=TrainSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = DEFAULT_OUTPUT_DIR
    data_dir: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data that :func:`recipe_from_dict` turns back into an equal recipe."""
        return {
            "name": self.name,
            "backbone": _asdict(self.backbone),
            "module": _asdict(self.module),
            "tasks": [t.to_yaml() for t in self.tasks],
            "train": _asdict(self.train),
            "sampler": _asdict(self.sampler),
            "optimizer": _asdict(self.optimizer),
            "schedule": _asdict(self.schedule),
            "eval": _asdict(self.eval),
            "output_dir": self.output_dir,
            "data_dir": self.data_dir,
        }


SECTIONS: dict[str, type] = {
    "backbone": BackboneSection,
    "module": ModuleConfig,
    "train": TrainSection,
    "sampler": SamplerSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "eval": EvalSection,
}
TOP_KEYS = ["name", "tasks", "output_dir", "data_dir", *SECTIONS]


def _asdict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _asdict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_asdict(x) for x in obj]
    if isinstance(obj, list):
        return [_asdict(x) for x in obj]
    return obj


# -- YAML with line numbers ---------------------------------------------------------------


def _lines(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each key path (("train", "lr"), ("tasks", 0)) to its 1-based line in the file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _lines(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[path + (i,)] = v.start_mark.line + 1
            _lines(v, path + (i,), out)
    return out


class _Where:
    """Turns a key path into "train.lr (recipe.yaml line 12)" for messages."""

    def __init__(self, lines: dict[tuple, int], file: str | None, overridden: set[tuple]):
        self.lines, self.file, self.overridden = lines, file, overridden

    def __call__(self, path: tuple) -> str:
        name = ".".join(str(p) for p in path) or "recipe"
        if any(path[: len(o)] == o for o in self.overridden):
            return f"{name} (command-line override)"
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{name} ({self.file or 'recipe'} line {self.lines[path[:n]]})"
        return name


# -- types --------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"a list of [{inner}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: tuple, where: _Where) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (lists to tuples)."""
    origin = typing.get_origin(tp)
    bad = RecipeError(f"{where(path)} must be {_type_name(tp)}, not {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path, where)
            except RecipeError as e:
                last = e
        # a single non-None alternative gives its own (more precise) message
        if len([a for a in args if a is not type(None)]) == 1:
            raise last
        raise bad
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where(path)} must be one of {_type_name(tp)}, not {value!r}{hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and Ellipsis not in args:
            if len(value) != len(args):
                raise bad
            return tuple(
                _convert(v, a, path + (i,), where)
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        out = [_convert(v, item, path + (i,), where) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if dataclasses.is_dataclass(tp):
        return _section(tp, value, path, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        # YAML reads 1e-5 as a string (it wants 1.0e-5); accept what float() accepts
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise bad
    raise RecipeError(f"{where(path)}: cannot check type {tp!r}")


def _section(cls: type, raw: Any, path: tuple, where: _Where) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{where(path)} must be a mapping of keys, not {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(key, names, path + (key,), where)
        kw[key] = _convert(value, hints[key], path + (key,), where)
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where(path)}: {e}") from e


def _unknown(key: Any, known: list[str], path: tuple, where: _Where) -> RecipeError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {'.'.join(map(str, path[:-1] + (close[0],)))!r}?" if close else ""
    if not close and len(path) == 2:
        # a key that lives in another section (train.lr -> optimizer.lr)
        for section, cls in SECTIONS.items():
            names = [f.name for f in dataclasses.fields(cls)]
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.8)
            if close:
                hint = f"; did you mean '{section}.{close[0]}'?"
                break
    return RecipeError(f"unknown key {where(path)}{hint} (known here: {', '.join(known)})")


# -- loading ------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> set[tuple]:
    """Apply ``key.sub=value`` overrides in place; return the overridden key paths."""
    done = set()
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        parts: list[Any] = [
            int(p) if p.lstrip("-").isdigit() else p for p in key.strip().split(".")
        ]
        if not all(str(p) for p in parts):
            raise RecipeError(f"override {item!r}: empty key part")
        node: Any = raw
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not isinstance(p, int) or not -len(node) <= p < len(node):
                    raise RecipeError(
                        f"override {item!r}: no list item {p} at {'.'.join(map(str, parts[:i]))}"
                    )
                if isinstance(node[p], str):  # a task given by name becomes a mapping
                    node[p] = {"name": node[p]}
                node = node[p]
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
            if not isinstance(node, (dict, list)):
                raise RecipeError(
                    f"override {item!r}: {'.'.join(map(str, parts[: i + 1]))} is not a mapping"
                )
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or not -len(node) <= last < len(node):
                raise RecipeError(f"override {item!r}: no list item {last}")
        node[last] = _parse_value(text)
        done.add(tuple(parts))
    return done


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. Raises :class:`RecipeError`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, not {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    overridden = apply_overrides(raw, list(overrides or []))
    where = _Where(_lines(node), path.name, overridden)
    recipe = recipe_from_dict(raw, where=where)
    recipe.source = str(path.resolve())
    return recipe


def recipe_from_dict(raw: dict[str, Any], where: _Where | None = None) -> Recipe:
    """Validate a recipe given as plain data (what ``yaml.safe_load`` returns)."""
    where = where or _Where({}, None, set())
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a mapping of sections")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, (key,), where)
    if not raw.get("tasks"):
        raise RecipeError(f"{where(('tasks',))}: a recipe needs at least one task")
    kw: dict[str, Any] = {}
    for key, cls in SECTIONS.items():
        if key in raw:
            kw[key] = _section(cls, raw[key], (key,), where)
    for key in ("name", "output_dir"):
        if key in raw:
            kw[key] = _convert(raw[key], str, (key,), where)
    if raw.get("data_dir") is not None:
        kw["data_dir"] = str(_convert(raw["data_dir"], str, ("data_dir",), where))
    kw["tasks"] = _tasks(raw["tasks"], where)
    recipe = Recipe(**kw)
    _check(recipe, where)
    return recipe


def _tasks(raw: Any, where: _Where) -> list[TaskEntry]:
    if not isinstance(raw, list):
        raise RecipeError(f"{where(('tasks',))} must be a list of task names or mappings")
    out, seen = [], set()
    for i, item in enumerate(raw):
        path = ("tasks", i)
        module, on_error = None, "raise"
        if isinstance(item, str):
            name, spec = item, item
        elif isinstance(item, dict):
            spec = dict(item)
            name = spec.get("name")
            if not isinstance(name, str):
                raise RecipeError(f"{where(path)}: a task mapping needs a name")
            if "module" in spec:
                module = _section(ModuleConfig, spec.pop("module"), path + ("module",), where)
            if "on_error" in spec:
                on_error = _convert(
                    spec.pop("on_error"), Literal["raise", "skip"], path + ("on_error",), where
                )
        else:
            raise RecipeError(f"{where(path)} must be a task name or a mapping, not {item!r}")
        if name in seen:
            raise RecipeError(f"{where(path)}: task {name!r} appears twice")
        seen.add(name)
        out.append(TaskEntry(name=name, spec=spec, module=module, on_error=on_error))
    return out


def _check(r: Recipe, where: _Where) -> None:
    """Checks across keys and of value ranges."""

    def positive(path: tuple, value: Any, allow_none: bool = True) -> None:
        if value is None and allow_none:
            return
        if value is None or value <= 0:
            raise RecipeError(f"{where(path)} must be > 0, not {value!r}")

    t = r.train
    for key in ("epochs", "max_steps", "save_every"):
        positive(("train", key), getattr(t, key))
    for key in ("batch_size", "max_length", "grad_accum", "log_every", "eval_batch_size"):
        positive(("train", key), getattr(t, key), allow_none=False)
    positive(("train", "grad_clip"), t.grad_clip)
    if t.epochs is None and t.max_steps is None:
        raise RecipeError(f"{where(('train',))}: give train.epochs or train.max_steps")
    s = r.sampler
    if s.epoch == "fixed" and s.steps_per_epoch is None:
        raise RecipeError(f"{where(('sampler', 'epoch'))}: 'fixed' needs sampler.steps_per_epoch")
    positive(("sampler", "steps_per_epoch"), s.steps_per_epoch)
    if t.pcgrad and (s.per == "step" or t.grad_accum < 2):
        raise RecipeError(
            f"{where(('train', 'pcgrad'))}: PCGrad works across the tasks of one optimizer "
            "step; set sampler.per: micro_batch and train.grad_accum >= 2 (e.g. the number of "
            "tasks, with round_robin)"
        )
    if s.mixed and s.per == "step" and t.grad_accum > 1:
        raise RecipeError(
            f"{where(('sampler', 'mixed'))}: mixed batches merge the tasks of one step; "
            "set sampler.per: micro_batch"
        )
    positive(("sampler", "temperature"), s.temperature, allow_none=False)
    if s.alpha is not None and s.kind not in ("proportional", "sqrt"):
        raise RecipeError(f"{where(('sampler', 'alpha'))} applies to kinds proportional and sqrt")
    positive(("optimizer", "lr"), r.optimizer.lr, allow_none=False)
    positive(("optimizer", "task_lr"), r.optimizer.task_lr)
    positive(("optimizer", "head_lr"), r.optimizer.head_lr)
    if not 0 <= r.schedule.warmup_ratio < 1:
        raise RecipeError(f"{where(('schedule', 'warmup_ratio'))} must be in [0, 1)")
    if isinstance(r.eval.every, int):
        positive(("eval", "every"), r.eval.every)
    names = [x.name for x in r.tasks]
    m = r.eval.metric
    if m != "mean" and (m.count(".") != 1 or m.split(".")[0] not in names):
        raise RecipeError(
            f"{where(('eval', 'metric'))} must be 'mean' or '<task>.<metric>' with a task of "
            f"this recipe ({', '.join(names)}), not {m!r}"
        )
    if not r.name or any(c in r.name for c in "/\\ "):
        raise RecipeError(f"{where(('name',))} must be a word without spaces or slashes")


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what the run folder's recipe.yaml holds)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)


# -- the data folder ----------------------------------------------------------------------

CS224N_FILES = {
    "sst": ["ids-sst-train.csv", "ids-sst-dev.csv"],
    "cfimdb": ["ids-cfimdb-train.csv", "ids-cfimdb-dev.csv"],
    "quora": ["quora-train.csv", "quora-dev.csv"],
    "sts": ["sts-train.csv", "sts-dev.csv"],
}


def cs224n_files_needed(recipe: Recipe) -> list[str]:
    """The CS224N train/dev files of the recipe's built-in tasks that keep their own files."""
    out = []
    for t in recipe.tasks:
        own = isinstance(t.spec, str) or not ({"files", "dataset"} & set(t.spec))
        if own and t.name in CS224N_FILES:
            out += CS224N_FILES[t.name]
    return out


def data_dir_candidates(recipe: Recipe) -> list[tuple[Path, str]]:
    """Where the data folder is looked for, first match wins, with the reason for each."""
    out: list[tuple[Path, str]] = []
    if recipe.data_dir:
        p = Path(recipe.data_dir).expanduser()
        if not p.is_absolute() and recipe.source:
            # relative to the recipe file when it exists there, else to the current folder
            beside = Path(recipe.source).parent / p
            out.append((beside if beside.exists() else p, "the recipe's data_dir"))
        else:
            out.append((p, "the recipe's data_dir"))
        return out
    env = os.environ.get(DATA_ENV)
    if env:
        return [(Path(env).expanduser(), f"${DATA_ENV}")]
    rel = Path("..") / "shared" / "data" / "cs224n"
    out.append((Path.cwd() / rel, "../shared/data/cs224n from the current folder"))
    repo = Path(__file__).resolve().parents[1]
    out.append((repo / rel, "../shared/data/cs224n from palbert's source folder"))
    return out


def resolve_data_dir(recipe: Recipe, needed: list[str] | None = None) -> Path:
    """The data folder: ``data_dir`` (key or override) > ``$PALBERT_DATA_DIR`` > the first of
    ``../shared/data/cs224n`` relative to the current folder or to palbert's source checkout.

    ``needed`` lists files that must be there; a missing folder or file is a
    :class:`RecipeError` that lists what is expected and where it comes from.
    """
    if needed is None:
        needed = cs224n_files_needed(recipe)
    cands = data_dir_candidates(recipe)
    found = next((p for p, _ in cands if p.is_dir()), None)
    where = "\n".join(f"  - {p} ({why})" for p, why in cands)
    expected = "\n".join(f"  {f}" for f in needed) or "  (the files named by the recipe's tasks)"
    source = (
        "The CS224N files come with the CS224N 'multitask minBERT' default final project "
        "(SST, CFIMDB, Quora, STS)."
    )
    if found is None:
        raise RecipeError(
            f"data folder not found; looked in:\n{where}\n"
            f"Set data_dir=PATH (recipe key or override) or ${DATA_ENV}. Expected files:\n"
            f"{expected}\n{source}"
        )
    missing = [f for f in needed if not (found / f).is_file()]
    if missing:
        raise RecipeError(
            f"data folder {found} lacks: {', '.join(missing)}. Expected files:\n{expected}\n{source}"
        )
    return found.resolve()


__all__ = [
    "BackboneSection",
    "EvalSection",
    "ModuleConfig",
    "OptimizerSection",
    "Progressive",
    "Recipe",
    "RecipeError",
    "SamplerSection",
    "ScheduleSection",
    "TaskEntry",
    "TrainSection",
    "apply_overrides",
    "dump_recipe",
    "load_recipe",
    "recipe_from_dict",
    "resolve_data_dir",
]
