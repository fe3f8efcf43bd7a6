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

Errors (:class:`RecipeError`) name the key path and, for keys from the file, its line (or
the command-line override that set it); an unknown key or choice comes with the closest
known one ("did you mean ..."). Checking is :mod:`palbert.validate`: each section's types and
the rules on its fields; checks across keys follow in :func:`_check`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from palbert.choices import (
    Decay,
    EpochPolicy,
    Impl,
    OnError,
    Precision,
    SamplerKind,
    SamplerPer,
    TrainMode,
)
from palbert.layers import ModuleConfig, Progressive
from palbert.tasks.paths import DATA_ENV, default_data_dir
from palbert.tasks.paths import data_dir_candidates as default_data_dir_candidates
from palbert.tasks.spec import BUILTIN_SPECS, TASK_NAME_RULE, TaskSpec, unknown_task
from palbert.validate import (
    ConfigError,
    Where,
    above,
    at_least,
    at_most,
    build,
    convert,
    each,
    in_range,
    rules,
    unknown_key,
)

DEFAULT_OUTPUT_DIR = "checkpoints"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML, not a data file
MAX_RECIPE_NODES = 100_000  # values a recipe may expand to, aliases counted where used
# numpy's legacy seeding takes [0, 2**32 - 1]; the trainer's per-step generators multiply the
# seed by ~10**6, which stays inside torch's 64 bits from this range
MAX_SEED = 2**32 - 1


class RecipeError(ConfigError):
    """A recipe is wrong: the message names the key (and YAML line) and what was expected."""


# -- sections ---------------------------------------------------------------------------


@dataclass
class BackboneSection:
    """The shared encoder: a hub name, a local folder, ``minilm`` or ``random:<shape>``."""

    name: str = "bert-base-uncased"
    impl: Impl = "transformers"


@dataclass
class TaskEntry:
    """One ``tasks:`` entry: the task's mapping (handed to ``palbert.tasks.build_task``)
    an optional per-task module that overrides the recipe's ``module``, and ``on_error``
    (``skip`` drops rows the reader rejects, reporting them; ``raise`` stops)."""

    name: str
    spec: str | dict[str, Any]
    module: ModuleConfig | None = None
    on_error: OnError = "raise"  # "skip": drop bad rows, reported

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
    seed: 0 to 2**32 - 1 (:data:`MAX_SEED`), the one seed of heads, shuffling and sampling.
    """

    mode: TrainMode = "full"
    epochs: int | None = field(default=3, metadata=rules(at_least(1)))
    max_steps: int | None = field(default=None, metadata=rules(at_least(1)))
    batch_size: int = field(default=32, metadata=rules(at_least(1)))
    max_length: int = field(default=128, metadata=rules(at_least(1)))
    grad_accum: int = field(default=1, metadata=rules(at_least(1)))
    grad_clip: float | None = field(default=1.0, metadata=rules(above(0)))
    pcgrad: bool = False
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    seed: int = field(default=0, metadata=rules(at_least(0), at_most(MAX_SEED)))
    save_every: int | None = field(default=None, metadata=rules(at_least(1)))
    log_every: int = field(default=10, metadata=rules(at_least(1)))
    eval_batch_size: int = field(default=64, metadata=rules(at_least(1)))
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

    kind: SamplerKind = "round_robin"
    alpha: float | None = field(default=None, metadata=rules(at_least(0)))
    temperature: float = field(default=2.0, metadata=rules(above(0)))
    epoch: EpochPolicy = "sum"
    steps_per_epoch: int | None = field(default=None, metadata=rules(at_least(1)))
    per: SamplerPer = "step"
    mixed: bool = False


@dataclass
class OptimizerSection:
    """AdamW: ``lr`` for the backbone, ``task_lr`` for the task modules (PALs, adapters) and
    ``head_lr`` for the heads (None: ``task_lr``)."""

    name: Literal["adamw"] = "adamw"
    lr: float = field(default=2e-5, metadata=rules(above(0)))
    task_lr: float | None = field(default=1e-3, metadata=rules(above(0)))
    head_lr: float | None = field(default=None, metadata=rules(above(0)))
    weight_decay: float = field(default=0.01, metadata=rules(at_least(0)))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=rules(each(in_range(0, 1))))
    eps: float = field(default=1e-8, metadata=rules(above(0)))


@dataclass
class ScheduleSection:
    """Linear warmup (steps, or a ratio of all steps) then linear/cosine decay to 0 or constant."""

    warmup_steps: int | None = field(default=None, metadata=rules(at_least(0)))
    warmup_ratio: float = field(default=0.0, metadata=rules(in_range(0, 1)))
    decay: Decay = "linear"


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
    name: str = field(default="run", metadata=rules(TASK_NAME_RULE))
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
# a key in the wrong section (train.lr) is pointed to its section (optimizer.lr)
SECTION_KEYS = {k: [f.name for f in dataclasses.fields(c)] for k, c in SECTIONS.items()}


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


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many values ``node`` stands for once every alias is expanded, counting up to
    ``limit`` (an alias bomb is small as text, huge as values); an alias inside its own anchor
    counts as more than ``limit``."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_:
            return limit + 1
        open_.add(id(n))
        total = 1
        if isinstance(n, yaml.MappingNode):
            children = [c for kv in n.value for c in kv]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        else:
            children = []
        for c in children:
            total += size(c)
            if total > limit:
                break
        open_.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


# -- loading ------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[tuple, str]:
    """Apply ``key.sub=value`` overrides in place; return each overridden key path with the
    override's text (errors name it)."""
    done: dict[tuple, str] = {}
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
        done[tuple(parts)] = item.strip()
    return done


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. Raises :class:`RecipeError`."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path} is larger than a recipe can be ({MAX_RECIPE_BYTES} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path} is not UTF-8 text: {e}") from None
    try:
        node = yaml.compose(text)
        if node is not None and _expanded_size(node, MAX_RECIPE_NODES) > MAX_RECIPE_NODES:
            raise RecipeError(
                f"{path} expands to more than {MAX_RECIPE_NODES} values (YAML aliases "
                "repeated inside aliases, or an alias inside its own anchor?)"
            )
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{path} is not valid YAML: {e}") from e
    except RecursionError:
        raise RecipeError(f"{path} is nested too deeply to be a recipe") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, not {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    overridden = apply_overrides(raw, list(overrides or []))
    where = Where(file=path.name, lines=_lines(node), overrides=overridden, error=RecipeError)
    recipe = recipe_from_dict(raw, where=where)
    recipe.source = str(path.resolve())
    return recipe


def recipe_from_dict(raw: dict[str, Any], where: Where | None = None) -> Recipe:
    """Validate a recipe given as plain data (what ``yaml.safe_load`` returns)."""
    where = where or Where(error=RecipeError)
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a mapping of sections")
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(key, TOP_KEYS, (key,), where)
    if not raw.get("tasks"):
        raise where.fail(("tasks",), ": a recipe needs at least one task")
    kw: dict[str, Any] = {}
    for key, cls in SECTIONS.items():
        if key in raw:
            kw[key] = build(cls, raw[key], (key,), where, elsewhere=SECTION_KEYS)
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    hints = typing.get_type_hints(Recipe)
    for key in ("name", "output_dir", "data_dir"):
        if key in raw:
            kw[key] = convert(raw[key], hints[key], (key,), where, fields[key].metadata)
    kw["tasks"] = _tasks(raw["tasks"], where)
    recipe = Recipe(**kw)
    _check(recipe, where)
    return recipe


def _tasks(raw: Any, where: Where) -> list[TaskEntry]:
    """Each entry's spec is validated here (with its YAML lines), not only when training."""
    if not isinstance(raw, list):
        raise where.fail(("tasks",), "must be a list of task names or mappings")
    out, seen = [], set()
    for i, item in enumerate(raw):
        path = ("tasks", i)
        module, on_error = None, "raise"
        if isinstance(item, str):
            if item not in BUILTIN_SPECS:
                raise where.fail(path, ": " + unknown_task(item))
            name, spec = item, item
        elif isinstance(item, dict):
            spec = dict(item)
            if "module" in spec:
                module = build(ModuleConfig, spec.pop("module"), path + ("module",), where)
            if "on_error" in spec:
                on_error = convert(spec.pop("on_error"), OnError, path + ("on_error",), where)
            name = TaskSpec.from_dict(spec, where.at(*path)).name
        else:
            raise where.fail(path, f"must be a task name or a mapping, not {item!r}")
        if name in seen:
            raise where.fail(path, f": task {name!r} appears twice")
        seen.add(name)
        out.append(TaskEntry(name=name, spec=spec, module=module, on_error=on_error))
    return out


def _check(r: Recipe, where: Where) -> None:
    """Checks across keys (each key's own range is a rule on its field)."""
    t, s = r.train, r.sampler
    if t.epochs is None and t.max_steps is None:
        raise where.fail(("train",), ": give train.epochs or train.max_steps")
    if s.epoch == "fixed" and s.steps_per_epoch is None:
        raise where.fail(("sampler", "epoch"), ": 'fixed' needs sampler.steps_per_epoch")
    if t.pcgrad and (s.per == "step" or t.grad_accum < 2):
        raise where.fail(
            ("train", "pcgrad"),
            ": PCGrad works across the tasks of one optimizer step; set sampler.per: "
            "micro_batch and train.grad_accum >= 2 (e.g. the number of tasks, with round_robin)",
        )
    if s.mixed and s.per == "step" and t.grad_accum > 1:
        raise where.fail(
            ("sampler", "mixed"),
            ": mixed batches merge the tasks of one step; set sampler.per: micro_batch",
        )
    if s.alpha is not None and s.kind not in ("proportional", "sqrt"):
        raise where.fail(("sampler", "alpha"), "applies to kinds proportional and sqrt")
    if isinstance(r.eval.every, int) and r.eval.every < 1:
        raise where.fail(("eval", "every"), f"must be >= 1 or 'epoch', not {r.eval.every}")
    names = [x.name for x in r.tasks]
    m = r.eval.metric
    if m != "mean" and (m.count(".") != 1 or m.split(".")[0] not in names):
        raise where.fail(
            ("eval", "metric"),
            f"must be 'mean' or '<task>.<metric>' with a task of this recipe "
            f"({', '.join(names)}), not {m!r}",
        )


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what the run folder's recipe.yaml holds)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, default_flow_style=None)


# -- the data folder ----------------------------------------------------------------------


def cs224n_files_needed(recipe: Recipe) -> list[str]:
    """The CS224N train/dev files of the recipe's built-in tasks that keep their own files
    (named once, in :data:`palbert.tasks.spec.BUILTIN_SPECS`)."""
    out = []
    for t in recipe.tasks:
        own = isinstance(t.spec, str) or not ({"files", "dataset"} & set(t.spec))
        if own and t.name in BUILTIN_SPECS:
            files = BUILTIN_SPECS[t.name]["files"]
            out += [files[split] for split in ("train", "dev")]
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
    return default_data_dir_candidates()


def resolve_data_dir(recipe: Recipe, needed: list[str] | None = None) -> Path:
    """The data folder: ``data_dir`` (key or override) > ``$PALBERT_DATA_DIR`` > the first of
    ``../shared/data/cs224n`` relative to the current folder or to palbert's source checkout.

    ``needed`` lists files that must be there; a missing folder or file is a
    :class:`RecipeError` that lists what is expected and where it comes from.
    """
    if needed is None:
        needed = cs224n_files_needed(recipe)
    cands = data_dir_candidates(recipe)
    if recipe.data_dir:
        found = next((p for p, _ in cands if p.is_dir()), None)
    else:
        found = default_data_dir(needed)
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
