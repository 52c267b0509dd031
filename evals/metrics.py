"""The figures of an evaluation, from per-problem sample outcomes. Pure functions.

* avg@k: the mean success of the samples, with the standard deviation of the per-problem
  means and its standard error.
* pass@k: the unbiased estimator 1 − C(n−c, k)/C(n, k) for every k ≤ n (:func:`pass_at_k`).
* maj@k: the expected correctness of a majority vote over a *uniformly random k-subset* of a
  problem's samples, votes counted over equivalence classes of answers
  (:func:`majority_at_k`). Exact over all C(n, k) subsets when there are at most
  ``max_exact`` of them, else a seeded Monte Carlo estimate with its standard error. A tie
  between the largest classes goes to the class seen first among all the problem's samples —
  the same rule as :func:`envs.grading.majority_vote` — and the share of tied subsets is
  reported.
* Confidence intervals: percentile bootstrap over problems (:func:`bootstrap_ci`), a paired
  bootstrap for two runs on the same problems (:func:`paired_bootstrap`), and a Wilson
  interval for one problem's c of n (:func:`wilson_interval`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from envs.grading import pass_at_k

__all__ = [
    "MajorityResult",
    "PairedComparison",
    "bootstrap_ci",
    "majority_at_k",
    "mean_std_stderr",
    "paired_bootstrap",
    "pass_at_k",
    "wilson_interval",
]

MAX_EXACT_SUBSETS = 10_000
"""maj@k enumerates every k-subset up to this many; past it, Monte Carlo."""

MONTE_CARLO_SUBSETS = 10_000
"""Random k-subsets drawn per problem when maj@k is estimated."""


@dataclass(frozen=True)
class MajorityResult:
    """maj@k of one problem.

    Attributes:
        value: the share of k-subsets whose vote is correct (exact or estimated).
        stderr: the Monte Carlo standard error (0 when exact).
        tie_share: the share of subsets whose largest classes tied (broken by first
            appearance).
        exact: whether every subset was enumerated.
        subsets: subsets evaluated.
    """

    value: float
    stderr: float
    tie_share: float
    exact: bool
    subsets: int


def majority_at_k(
    labels: Sequence[int | None],
    correct_classes: Collection[int],
    k: int,
    *,
    max_exact: int = MAX_EXACT_SUBSETS,
    mc_subsets: int = MONTE_CARLO_SUBSETS,
    seed: int = 0,
) -> MajorityResult:
    """maj@k of one problem's ``n = len(labels)`` samples.

    Args:
        labels: each sample's answer class (classes numbered 0, 1, … in order of first
            appearance); ``None`` for a sample with no usable answer, which does not vote.
        correct_classes: the classes whose answer is right.
        k: the subset size, ``1 ≤ k ≤ n``.
        max_exact: enumerate every subset when there are at most this many.
        mc_subsets: subsets drawn otherwise (seeded by ``seed``).

    A subset in which no sample has an answer counts as wrong (and not as a tie).

    Raises:
        ValueError: ``k`` outside ``[1, n]`` or a negative label.
    """
    n = len(labels)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if any(c is not None and c < 0 for c in labels):
        raise ValueError("class labels must be >= 0")
    classes = 1 + max((c for c in labels if c is not None), default=-1)
    # one-hot votes; an extra last column for "no answer" keeps every row's sum at k
    onehot = np.zeros((n, classes + 1), dtype=np.int32)
    for i, c in enumerate(labels):
        onehot[i, classes if c is None else c] = 1
    right = np.zeros(classes, dtype=bool)
    right[[c for c in correct_classes if 0 <= c < classes]] = True
    total = math.comb(n, k)
    exact = total <= max_exact
    if exact:
        subsets = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n), k)),
            dtype=np.int64,
            count=total * k,
        ).reshape(total, k)
    else:
        rng = np.random.default_rng(seed)
        subsets = np.argsort(rng.random((mc_subsets, n)), axis=1)[:, :k]
    counts = onehot[subsets].sum(axis=1)[:, :classes]  # votes per class, no-answer dropped
    if classes == 0:
        return MajorityResult(0.0, 0.0, 0.0, exact, len(subsets))
    top = counts.max(axis=1)
    winner = counts.argmax(axis=1)  # argmax keeps the first: the class seen first wins a tie
    voted = top > 0
    wins = voted & right[winner]
    ties = voted & ((counts == top[:, None]).sum(axis=1) > 1)
    value = float(wins.mean())
    stderr = 0.0 if exact else float(wins.std(ddof=1) / math.sqrt(len(wins)))
    return MajorityResult(value, stderr, float(ties.mean()), exact, len(subsets))


def mean_std_stderr(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean, sample standard deviation and standard error of the mean (0 for one value)."""
    if not values:
        raise ValueError("no values")
    arr = np.asarray(values, dtype=float)
    if len(arr) == 1:
        return float(arr[0]), 0.0, 0.0
    std = float(arr.std(ddof=1))
    return float(arr.mean()), std, std / math.sqrt(len(arr))


def bootstrap_ci(
    per_problem: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean over problems (problems resampled with
    replacement)."""
    _, low, high = _bootstrap(np.asarray(per_problem, dtype=float), resamples, confidence, seed)
    return low, high


def _bootstrap(
    values: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[np.ndarray, float, float]:
    """Resampled means of ``values`` and their percentile interval."""
    if values.size == 0:
        raise ValueError("no problems")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return means, float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Run B against run A on the same problems (B − A).

    Attributes:
        difference: mean per-problem difference.
        ci_low / ci_high: its paired percentile bootstrap interval.
        p_value: two-sided bootstrap p-value of "no difference" (the share of resampled
            differences on the far side of zero, doubled, capped at 1).
        problems: problems compared.
    """

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    problems: int


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 5000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of ``mean(b − a)``: the same problems resampled for both runs."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need the same problems: {len(a)} vs {len(b)} scores")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    means, low, high = _bootstrap(diff, resamples, confidence, seed)
    observed = float(diff.mean())
    if np.all(diff == 0):
        p = 1.0
    else:
        far = (means <= 0).mean() if observed > 0 else (means >= 0).mean()
        p = float(min(1.0, 2 * far))
    return PairedComparison(observed, low, high, p, len(diff))


def wilson_interval(c: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate ``c / n`` (95% at the default ``z``)."""
    if not 0 <= c <= n or n < 1:
        raise ValueError(f"need 0 <= c <= n and n >= 1, got c={c}, n={n}")
    p = c / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
