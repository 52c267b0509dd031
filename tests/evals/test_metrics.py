"""Eval metrics against hand-computed values and brute-force enumeration."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from evals.metrics import (
    bootstrap_ci,
    majority_at_k,
    mean_std_stderr,
    paired_bootstrap,
    pass_at_k,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 0, 1, 0.0),  # c = 0
        (4, 0, 4, 0.0),
        (4, 4, 1, 1.0),  # c = n
        (4, 4, 4, 1.0),
        (4, 1, 4, 1.0),  # n = k: solved once is solved
        (4, 0, 4, 0.0),
        (4, 1, 1, 0.25),  # pass@1 is the success rate
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (10, 3, 2, 1 - 21 / 45),
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_share_of_subsets_with_a_success() -> None:
    outcomes = [1, 0, 0, 1, 0, 0, 0]
    for k in range(1, len(outcomes) + 1):
        subsets = list(itertools.combinations(outcomes, k))
        assert pass_at_k(len(outcomes), sum(outcomes), k) == pytest.approx(
            sum(any(s) for s in subsets) / len(subsets)
        )


def _brute_majority(labels: list[int | None], right: set[int], k: int) -> tuple[float, float]:
    wins = ties = 0
    subsets = list(itertools.combinations(range(len(labels)), k))
    for subset in subsets:
        votes = Counter(labels[i] for i in subset if labels[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        leaders = sorted(c for c, v in votes.items() if v == top)
        ties += len(leaders) > 1
        wins += leaders[0] in right  # a tie goes to the class seen first (lowest label)
    return wins / len(subsets), ties / len(subsets)


def test_majority_at_k_small_case_by_hand() -> None:
    # classes: 0 wrong (x2), 1 right (x1), 2 wrong (x1); n = 4
    labels: list[int | None] = [0, 1, 0, 2]
    # k = 1: a single vote is right 1 time in 4
    assert majority_at_k(labels, {1}, 1).value == pytest.approx(0.25)
    # k = 2: six pairs; {0,1},{1,0'}→ tie 0 vs 1 → class 0 wins; {1,2} → tie, class 1 first → right
    result = majority_at_k(labels, {1}, 2)
    assert result.exact and result.subsets == 6
    assert result.value == pytest.approx(1 / 6)
    assert result.tie_share == pytest.approx(5 / 6)  # only {0, 0'} has a clear winner
    # k = 4: class 0 has two votes: wrong
    assert majority_at_k(labels, {1}, 4).value == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_majority_at_k_matches_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    labels: list[int | None] = [
        None if rng.random() < 0.2 else int(rng.integers(0, 3)) for _ in range(n)
    ]
    right = {int(rng.integers(0, 3))}
    for k in range(1, n + 1):
        value, ties = _brute_majority(labels, right, k)
        result = majority_at_k(labels, right, k)
        assert result.exact
        assert result.value == pytest.approx(value)
        assert result.tie_share == pytest.approx(ties)


def test_majority_at_k_monte_carlo_when_subsets_are_many() -> None:
    labels: list[int | None] = [i % 3 for i in range(16)]
    labels[0] = None
    exact = majority_at_k(labels, {1}, 8, max_exact=10**5)
    estimate = majority_at_k(labels, {1}, 8, max_exact=10_000, seed=3)
    assert exact.exact and not estimate.exact
    assert math.comb(16, 8) > 10_000 and estimate.subsets == 10_000
    assert estimate.stderr > 0
    assert abs(estimate.value - exact.value) < 4 * estimate.stderr
    again = majority_at_k(labels, {1}, 8, max_exact=10_000, seed=3)
    assert again == estimate  # seeded


def test_majority_at_k_without_answers_is_wrong_and_untied() -> None:
    result = majority_at_k([None, None, None], set(), 2)
    assert (result.value, result.tie_share) == (0.0, 0.0)


def test_majority_at_k_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="1 <= k <= n"):
        majority_at_k([0, 1], {0}, 3)


def test_mean_std_stderr() -> None:
    mean, std, se = mean_std_stderr([0.0, 0.5, 1.0])
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(0.5)
    assert se == pytest.approx(0.5 / math.sqrt(3))
    assert mean_std_stderr([0.3]) == (0.3, 0.0, 0.0)


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_more_problems() -> None:
    rng = np.random.default_rng(0)
    few = rng.random(10)
    many = rng.random(400)
    low, high = bootstrap_ci(few)
    assert low < few.mean() < high
    low2, high2 = bootstrap_ci(many)
    assert high2 - low2 < high - low
    assert bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))


def test_paired_bootstrap_sees_a_consistent_small_gain() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(60)
    b = a + 0.05  # every problem 5 points better
    paired = paired_bootstrap(a, b)
    assert paired.difference == pytest.approx(0.05)
    assert paired.ci_low == pytest.approx(0.05) and paired.ci_high == pytest.approx(0.05)
    assert paired.p_value < 0.01
    noisy = paired_bootstrap(a, a[::-1])
    assert noisy.ci_low < 0 < noisy.ci_high and noisy.p_value > 0.05
    assert paired_bootstrap(a, a).p_value == 1.0
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap(a, b[:-1])


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 8)
    assert low == 0.0 and 0.3 < high < 0.35  # not the degenerate [0, 0] of the normal interval
    low, high = wilson_interval(8, 8)
    assert high == 1.0 and 0.65 < low < 0.7
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(1 - high)
