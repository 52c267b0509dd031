"""Which task tiers to train on, from the initial policy's per-tier pass@1 and pass@8.

A tier teaches the learner something when the policy solves it sometimes but not reliably, and
when solving it is within reach by sampling: pass@1 between 20% and 60%, and pass@8 well above
pass@1 (by default at least 15 points). pass@k is the unbiased estimator
``1 − C(n−c, k) / C(n, k)`` over each prompt's ``n`` samples with ``c`` successes, averaged over
the tier's prompts; the samples are the offline values' (:mod:`spo_core.learner.offline_values`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb

from envs.tasks import Task, tier_of

__all__ = ["TierChoiceError", "TierPassRates", "choose_tiers", "pass_at_k", "tier_pass_rates"]


class TierChoiceError(ValueError):
    """No tier meets the rule of :func:`choose_tiers`."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt: ``1 − C(n−c, k) / C(n, k)``.

    Raises:
        ValueError: not ``0 <= c <= n`` or not ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got n={n}")
    return 1.0 - comb(n - c, k) / comb(n, k)


@dataclass(frozen=True)
class TierPassRates:
    """pass@1 and pass@k of one tier.

    Attributes:
        tier: the tier name (e.g. ``"d3o2"``).
        prompts: prompts with at least ``k`` samples (those averaged).
        skipped: prompts with fewer (masked samples); left out of both figures.
        pass1: mean unbiased pass@1 (the mean success rate).
        passk: mean unbiased pass@k.
        k: the ``k`` of :attr:`passk`.
    """

    tier: str
    prompts: int
    skipped: int
    pass1: float
    passk: float
    k: int


def tier_pass_rates(
    tasks: Sequence[Task], scores: Mapping[str, Sequence[float]], k: int = 8
) -> dict[str, TierPassRates]:
    """Per-tier pass@1 and pass@k from each prompt's sample scores (success: score > 0).

    Tiers in the order they first appear in ``tasks``; prompts missing from ``scores`` count as
    skipped.

    Raises:
        TierError: a task is not from the arithmetic tiers.
        ValueError: ``k < 1``, or a tier has no prompt with ``k`` samples.
    """
    if k < 1:
        raise ValueError(f"need k >= 1, got {k}")
    per_tier: dict[str, list[tuple[int, int]]] = {}
    skipped: dict[str, int] = {}
    for task in tasks:
        tier = tier_of(task)
        per_tier.setdefault(tier, [])
        skipped.setdefault(tier, 0)
        samples = scores.get(task.key, ())
        if len(samples) < k:
            skipped[tier] += 1
            continue
        per_tier[tier].append((len(samples), sum(s > 0 for s in samples)))
    out: dict[str, TierPassRates] = {}
    for tier, counts in per_tier.items():
        if not counts:
            raise ValueError(f"tier {tier}: no prompt has {k} unmasked samples")
        out[tier] = TierPassRates(
            tier=tier,
            prompts=len(counts),
            skipped=skipped[tier],
            pass1=sum(pass_at_k(n, c, 1) for n, c in counts) / len(counts),
            passk=sum(pass_at_k(n, c, k) for n, c in counts) / len(counts),
            k=k,
        )
    return out


def choose_tiers(
    rates: Mapping[str, TierPassRates],
    *,
    pass1_range: tuple[float, float] = (0.2, 0.6),
    min_gain: float = 0.15,
) -> list[str]:
    """The tiers to train on: ``pass1_range[0] <= pass@1 <= pass1_range[1]`` and
    ``pass@k >= pass@1 + min_gain``, in the order of ``rates``.

    Raises:
        TierChoiceError: no tier qualifies (the message lists every tier's figures).
    """
    low, high = pass1_range
    chosen = [
        name
        for name, r in rates.items()
        if low <= r.pass1 <= high and r.passk >= r.pass1 + min_gain
    ]
    if not chosen:
        figures = ", ".join(
            f"{name} pass@1 {r.pass1:.0%} pass@{r.k} {r.passk:.0%}" for name, r in rates.items()
        )
        raise TierChoiceError(
            f"no tier has pass@1 in {low:.0%}-{high:.0%} with pass@k at least "
            f"{min_gain * 100:.0f} points above it: {figures or 'no tiers measured'}"
        )
    return chosen
