"""Lists of allowed values that several levels of palbert check: each a ``Literal`` written
once here, its tuple derived with ``typing.get_args`` (recipe fields, argparse ``choices`` and
the checks of the code that acts on them all take it from here).

Lists that one level owns live with it: module kinds in :mod:`palbert.layers.config`, task
kinds, encodings, heads and formats in :mod:`palbert.tasks.spec`, output formats in
:mod:`palbert.tasks.predictions`. Nothing here imports torch: every level may use it.
"""

from __future__ import annotations

import typing
from typing import Literal

from palbert.validate import one_of

# backbone implementation: transformers' BertModel or palbert's minBERT (palbert.backbones)
Impl = Literal["transformers", "minbert"]
# what trains: everything, task modules and heads, or heads only (PalBert.set_train_mode)
TrainMode = Literal["full", "frozen", "heads"]
# autocast of training and inference ("auto": fp16 on CUDA, fp32 elsewhere)
Precision = Literal["auto", "fp32", "fp16", "bf16"]
# rows a reader rejects: stop, or drop them and report them
OnError = Literal["raise", "skip"]
# which task each micro-batch comes from (palbert.training.samplers)
SamplerKind = Literal["round_robin", "uniform", "proportional", "sqrt", "annealed", "temperature"]
# what one epoch of the sampler is
EpochPolicy = Literal["sum", "min", "max", "fixed"]
# how often the sampler draws a task: once per optimizer step or per micro-batch
SamplerPer = Literal["step", "micro_batch"]
# the learning rate after warmup
Decay = Literal["linear", "cosine", "constant"]

IMPLS: tuple[str, ...] = typing.get_args(Impl)
TRAIN_MODES: tuple[str, ...] = typing.get_args(TrainMode)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
ON_ERRORS: tuple[str, ...] = typing.get_args(OnError)
SAMPLER_KINDS: tuple[str, ...] = typing.get_args(SamplerKind)
EPOCH_POLICIES: tuple[str, ...] = typing.get_args(EpochPolicy)
SAMPLER_PERS: tuple[str, ...] = typing.get_args(SamplerPer)
DECAYS: tuple[str, ...] = typing.get_args(Decay)


def check_choice(
    what: str, value: object, allowed: tuple[str, ...], error: type[Exception] = ValueError
) -> None:
    """Raise ``error`` ("<what> must be one of a, b, not 'x' (did you mean ...)") unless
    ``value`` is allowed: the check of code called from Python, where no recipe checked it."""
    problem = one_of(allowed)(value)
    if problem:
        raise error(f"{what} {problem}")


__all__ = [
    "DECAYS",
    "EPOCH_POLICIES",
    "IMPLS",
    "ON_ERRORS",
    "PRECISIONS",
    "SAMPLER_KINDS",
    "SAMPLER_PERS",
    "TRAIN_MODES",
    "Decay",
    "EpochPolicy",
    "Impl",
    "OnError",
    "Precision",
    "SamplerKind",
    "SamplerPer",
    "TrainMode",
    "check_choice",
]
