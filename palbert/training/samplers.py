"""Task samplers: which task each micro-batch of training comes from.

No torch and no models here, so samplers are testable alone::

    s = TaskSampler(SamplerSection(kind="sqrt"), sizes=[250, 54, 500, 174], seed=0, epochs=3)
    s.probabilities(epoch=0)        # p_i ~ N_i^0.5
    window = s.next_window()         # task indices of the next optimizer step's micro-batches
    state = s.state_dict(); s.load_state_dict(state)

Kinds (Stickland & Murray 2019, plus two common ones), with N_i the number of batches of
task i in one pass over its training data:

- ``round_robin``: tasks in turn, 0, 1, ..., T-1, 0, 1, ...
- ``uniform``: p_i = 1/T.
- ``proportional``: p_i ~ N_i (alpha = 1); ``sqrt``: p_i ~ N_i^0.5 (alpha = 0.5);
  ``alpha`` overrides either exponent.
- ``annealed``: p_i ~ N_i^alpha(e), alpha(e) = 1 - 0.8 (e-1)/(E-1) for epochs e = 1..E
  (alpha 1 in the first epoch, 0.2 in the last; 1 throughout when E = 1).
- ``temperature``: p_i ~ N_i^(1/T) for temperature T (T=1 proportional, T -> inf uniform).

**What an epoch is.** An epoch is a fixed number of micro-batch draws D, set by ``policy``:

- ``sum`` (default): D = sum_i N_i, one pass over all data in expectation under
  proportional sampling;
- ``min``: D = T * min_i N_i, bounded by the smallest task (with round-robin no task's
  batches repeat within an epoch);
- ``max``: D = T * max_i N_i, bounded by the largest task (smaller tasks repeat);
- ``fixed``: D = ``steps_per_epoch`` * ``grad_accum``.

D is rounded down to a multiple of ``grad_accum`` (at least one window): an optimizer step
takes ``grad_accum`` consecutive draws and never spans two epochs, so an epoch has
D / grad_accum optimizer steps.

**One task per optimizer step** (``per="step"``, the default): the task is drawn once per
optimizer step and all its ``grad_accum`` micro-batches come from it (round-robin then
cycles over steps). ``per="micro_batch"`` draws each micro-batch, so one step can mix tasks
(what PCGrad needs: with round-robin and grad_accum = T every step sees every task once).

Each task's batches come from its own stream that
reshuffles when exhausted, independent of epochs.

The draws of epoch e are a pure function of (seed, e, sizes), drawn with a
``numpy.random.Generator`` seeded by ``(seed, e)``; the sampler's whole state is
(epoch, position in the epoch).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from palbert.choices import EPOCH_POLICIES, SAMPLER_KINDS, SAMPLER_PERS, check_choice

if TYPE_CHECKING:  # the recipe's section, read by attribute: no torch import here
    from palbert.recipe import SamplerSection


def annealed_alpha(epoch: int, epochs: int) -> float:
    """alpha(e) = 1 - 0.8 (e-1)/(E-1) for 1-based epoch e of E (1.0 when E == 1)."""
    if epochs <= 1:
        return 1.0
    e = min(max(epoch, 1), epochs)
    return 1.0 - 0.8 * (e - 1) / (epochs - 1)


def probabilities(
    kind: str,
    sizes: list[int],
    epoch: int = 1,
    epochs: int = 1,
    alpha: float | None = None,
    temperature: float = 2.0,
) -> np.ndarray:
    """Sampling probabilities of the tasks in 1-based ``epoch`` of ``epochs``.

    Round-robin returns each task's share of the draws (1/T).
    """
    check_choice("sampler kind", kind, SAMPLER_KINDS)
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or len(n) == 0 or (n <= 0).any():
        raise ValueError(f"task sizes must be positive batch counts, not {sizes!r}")
    if kind in ("round_robin", "uniform"):
        a = 0.0
    elif kind == "proportional":
        a = 1.0 if alpha is None else alpha
    elif kind == "sqrt":
        a = 0.5 if alpha is None else alpha
    elif kind == "annealed":
        a = annealed_alpha(epoch, epochs)
    else:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, not {temperature}")
        a = 1.0 / temperature
    w = n**a
    return w / w.sum()


def draws_per_epoch(
    sizes: list[int], policy: str = "sum", steps_per_epoch: int | None = None, grad_accum: int = 1
) -> int:
    """D, the micro-batch draws of one epoch (a positive multiple of ``grad_accum``)."""
    check_choice("epoch policy", policy, EPOCH_POLICIES)
    t = len(sizes)
    if policy == "sum":
        d = sum(sizes)
    elif policy == "min":
        d = t * min(sizes)
    elif policy == "max":
        d = t * max(sizes)
    else:
        if not steps_per_epoch or steps_per_epoch < 1:
            raise ValueError("epoch policy 'fixed' needs steps_per_epoch >= 1")
        d = steps_per_epoch * grad_accum
    return max(grad_accum, (d // grad_accum) * grad_accum)


class TaskSampler:
    """Draws task indices for the micro-batches of training, epoch by epoch.

    ``config`` is the recipe's ``sampler:`` section (kind, alpha, temperature, epoch policy,
    steps_per_epoch, per); ``sizes`` the tasks' batch counts (per pass over their training
    data). ``epochs`` (E) is needed by the annealed kind.
    """

    def __init__(
        self,
        config: SamplerSection,
        sizes: list[int],
        *,
        seed: int = 0,
        epochs: int = 1,
        grad_accum: int = 1,
    ) -> None:
        check_choice("sampler per", config.per, SAMPLER_PERS)
        kind, alpha, temperature = config.kind, config.alpha, config.temperature
        probabilities(kind, sizes, 1, max(epochs, 1), alpha, temperature)  # validates
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, not {grad_accum}")
        self.kind = kind
        self.sizes = [int(s) for s in sizes]
        self.seed = int(seed)
        self.epochs = max(int(epochs), 1)
        self.alpha = alpha
        self.temperature = temperature
        self.policy = config.epoch
        self.grad_accum = grad_accum
        self.per = config.per
        self.draws = draws_per_epoch(self.sizes, self.policy, config.steps_per_epoch, grad_accum)
        self.epoch = 0  # 0-based epoch of the next draw
        self.position = 0  # draws already taken in this epoch
        self._plan: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (D / grad_accum)."""
        return self.draws // self.grad_accum

    def probabilities(self, epoch: int) -> np.ndarray:
        """The tasks' probabilities in 0-based ``epoch``."""
        return probabilities(
            self.kind, self.sizes, epoch + 1, self.epochs, self.alpha, self.temperature
        )

    def plan(self, epoch: int) -> np.ndarray:
        """Task index of every draw of 0-based ``epoch`` (length D), fixed by (seed, epoch)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        t = len(self.sizes)
        # one draw per optimizer step (repeated for its micro-batches) or per micro-batch
        n = self.steps_per_epoch if self.per == "step" else self.draws
        if self.kind == "round_robin":
            order = np.arange(n) % t
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.choice(t, size=n, p=self.probabilities(epoch))
        if self.per == "step":
            order = np.repeat(order, self.grad_accum)
        self._plan = (epoch, order.astype(np.int64))
        return self._plan[1]

    def next_window(self) -> list[int]:
        """The task indices of the next optimizer step's ``grad_accum`` draws."""
        if self.position >= self.draws:
            self.epoch += 1
            self.position = 0
        plan = self.plan(self.epoch)
        window = plan[self.position : self.position + self.grad_accum].tolist()
        self.position += self.grad_accum
        return window

    @property
    def epoch_done(self) -> bool:
        """True right after the last window of an epoch was taken."""
        return self.position >= self.draws

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sizes": list(self.sizes),
            "seed": self.seed,
            "epochs": self.epochs,
            "draws": self.draws,
            "per": self.per,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state of a differently configured sampler."""
        keys = ["kind", "sizes", "seed", "draws", "per"]
        if self.kind == "annealed":  # its probabilities depend on the number of epochs E
            keys.append("epochs")
        for key in keys:
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state does not match: {key} was {state[key]!r}, now "
                    f"{getattr(self, key)!r} (the data or recipe changed since the checkpoint)"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def expected_epochs(max_steps: int, steps_per_epoch: int) -> int:
    """E for a run bounded by ``max_steps`` optimizer steps."""
    return max(1, math.ceil(max_steps / steps_per_epoch))


__all__ = [
    "TaskSampler",
    "annealed_alpha",
    "draws_per_epoch",
    "expected_epochs",
    "probabilities",
]
