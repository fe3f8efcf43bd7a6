"""Task samplers: closed-form probabilities, epoch lengths, determinism, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from palbert.recipe import SamplerSection
from palbert.training.samplers import (
    TaskSampler,
    annealed_alpha,
    draws_per_epoch,
    probabilities,
)

SIZES = [250, 54, 500, 174]


def sampler(kind, sizes, *, seed=0, epochs=1, grad_accum=1, **section) -> TaskSampler:
    """A sampler of a ``sampler:`` section with ``kind`` and the other keys given."""
    config = SamplerSection(kind=kind, **section)
    return TaskSampler(config, sizes, seed=seed, epochs=epochs, grad_accum=grad_accum)


def normalized(x):
    x = np.asarray(x, dtype=float)
    return x / x.sum()


@pytest.mark.parametrize(
    "kind, kwargs, expected",
    [
        ("round_robin", {}, normalized([1, 1, 1, 1])),
        ("uniform", {}, normalized([1, 1, 1, 1])),
        ("proportional", {}, normalized(SIZES)),
        ("sqrt", {}, normalized(np.sqrt(SIZES))),
        ("proportional", {"alpha": 0.3}, normalized(np.power(SIZES, 0.3))),
        ("temperature", {"temperature": 2.0}, normalized(np.power(SIZES, 0.5))),
        ("temperature", {"temperature": 1.0}, normalized(SIZES)),
        ("temperature", {"temperature": 4.0}, normalized(np.power(SIZES, 0.25))),
    ],
)
def test_probabilities_closed_forms(kind, kwargs, expected):
    np.testing.assert_allclose(probabilities(kind, SIZES, **kwargs), expected, rtol=1e-12)


@pytest.mark.parametrize("epoch, alpha", [(1, 1.0), (2, 0.8), (3, 0.6), (5, 0.2)])
def test_annealed_alpha_and_probabilities(epoch, alpha):
    # alpha = 1 - 0.8 (e-1)/(E-1) with E = 5
    assert annealed_alpha(epoch, 5) == pytest.approx(alpha)
    p = probabilities("annealed", SIZES, epoch=epoch, epochs=5)
    np.testing.assert_allclose(p, normalized(np.power(SIZES, alpha)), rtol=1e-12)


def test_annealed_single_epoch_is_proportional():
    assert annealed_alpha(1, 1) == 1.0
    np.testing.assert_allclose(
        probabilities("annealed", SIZES, epoch=1, epochs=1), normalized(SIZES)
    )


def test_empirical_frequencies_follow_probabilities():
    s = sampler("sqrt", SIZES, seed=3, epoch="fixed", steps_per_epoch=20000)
    counts = np.bincount(s.plan(0), minlength=4) / 20000
    np.testing.assert_allclose(counts, normalized(np.sqrt(SIZES)), atol=0.01)


def test_annealed_sampler_changes_distribution_across_epochs():
    s = sampler("annealed", SIZES, seed=0, epochs=3, epoch="fixed", steps_per_epoch=20000)
    first = np.bincount(s.plan(0), minlength=4) / 20000
    last = np.bincount(s.plan(2), minlength=4) / 20000
    np.testing.assert_allclose(first, normalized(SIZES), atol=0.01)
    np.testing.assert_allclose(last, normalized(np.power(SIZES, 0.2)), atol=0.01)


def test_round_robin_cycles_and_advances():
    s = sampler("round_robin", [3, 2, 5], seed=0)
    got = [s.next_window()[0] for _ in range(7)]
    assert got == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize(
    "policy, expected", [("sum", 978), ("min", 4 * 54), ("max", 4 * 500), ("fixed", 30)]
)
def test_epoch_policies(policy, expected):
    assert draws_per_epoch(SIZES, policy, steps_per_epoch=30) == expected


def test_epoch_is_whole_windows():
    # D rounded down to a multiple of grad_accum; steps per epoch = D / grad_accum
    s = sampler("uniform", [5, 6], grad_accum=4)
    assert s.draws == 8 and s.steps_per_epoch == 2
    s = sampler("uniform", [5, 6], grad_accum=4, epoch="fixed", steps_per_epoch=3)
    assert s.draws == 12 and s.steps_per_epoch == 3


def test_min_policy_with_round_robin_repeats_no_batch():
    s = sampler("round_robin", [7, 3, 5], epoch="min", per="micro_batch", grad_accum=3)
    counts = np.bincount(s.plan(0), minlength=3)
    assert counts.tolist() == [3, 3, 3]  # each task exactly its smallest count


def test_one_task_per_step_by_default():
    s = sampler("uniform", SIZES, seed=1, grad_accum=4)
    for _ in range(50):
        window = s.next_window()
        assert len(window) == 4 and len(set(window)) == 1


def test_per_micro_batch_round_robin_windows_hold_every_task():
    s = sampler("round_robin", [4, 4, 4], per="micro_batch", grad_accum=3)
    for _ in range(6):
        assert sorted(s.next_window()) == [0, 1, 2]


@pytest.mark.parametrize("kind", ["uniform", "proportional", "sqrt", "annealed", "temperature"])
def test_deterministic_under_seed(kind):
    a = sampler(kind, SIZES, seed=7, epochs=3)
    b = sampler(kind, SIZES, seed=7, epochs=3)
    c = sampler(kind, SIZES, seed=8, epochs=3)
    for e in range(3):
        np.testing.assert_array_equal(a.plan(e), b.plan(e))
    assert not np.array_equal(a.plan(0), c.plan(0))
    assert not np.array_equal(a.plan(0), a.plan(1))  # a new order each epoch


def test_state_round_trip_continues_identically():
    a = sampler("sqrt", SIZES, seed=5, epochs=2, grad_accum=2, per="micro_batch")
    for _ in range(700):  # crosses the epoch boundary (489 windows per epoch)
        a.next_window()
    state = a.state_dict()
    rest = [a.next_window() for _ in range(400)]
    b = sampler("sqrt", SIZES, seed=5, epochs=2, grad_accum=2, per="micro_batch")
    b.load_state_dict(state)
    assert [b.next_window() for _ in range(400)] == rest


def test_state_of_another_configuration_is_refused():
    state = sampler("sqrt", SIZES, seed=5).state_dict()
    with pytest.raises(ValueError, match="sizes"):
        sampler("sqrt", [1, 2, 3, 4], seed=5).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        probabilities("zipf", SIZES)
    with pytest.raises(ValueError, match="positive"):
        probabilities("uniform", [3, 0])
    with pytest.raises(ValueError, match="steps_per_epoch"):
        draws_per_epoch(SIZES, "fixed")
