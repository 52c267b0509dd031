"""Unbiased pass@k against hand-computed values; per-tier figures; the tier chooser's rule."""

from __future__ import annotations

import pytest

from envs.tasks import Task, Tier, TierError, tier_tasks
from spo_core.learner.tier_choice import (
    TierChoiceError,
    TierPassRates,
    choose_tiers,
    pass_at_k,
    tier_pass_rates,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (8, 0, 1, 0.0),
        (8, 8, 8, 1.0),
        (8, 1, 1, 1 / 8),
        (8, 3, 1, 3 / 8),
        (8, 1, 8, 1.0),  # one success among exactly k samples: always drawn
        (8, 2, 4, 1 - 15 / 70),  # 1 - C(6,4)/C(8,4)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (5, 0, 5, 0.0),
        (7, 4, 4, 1.0),  # n - c < k: every draw of k holds a success
    ],
)
def test_pass_at_k_matches_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 8), (8, 9, 1), (8, -1, 1), (8, 2, 0)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_tier_pass_rates_average_per_tier_and_skip_short_prompts() -> None:
    easy, hard = Tier(1, 1), Tier(2, 2)
    tasks = tier_tasks([easy, hard], 3, seed=5)
    e, h = tasks[:3], tasks[3:]
    scores = {
        e[0].key: [1.0] * 8,
        e[1].key: [1.0, 0.0] * 4,  # c = 4
        e[2].key: [0.0] * 8,
        h[0].key: [1.0] + [0.0] * 7,  # c = 1
        h[1].key: [0.0] * 8,
        h[2].key: [1.0] * 5,  # n = 5 < 8: masked samples, skipped
    }
    rates = tier_pass_rates(tasks, scores, k=8)
    assert list(rates) == ["d1o1", "d2o2"]
    assert rates["d1o1"] == TierPassRates("d1o1", 3, 0, (1 + 0.5 + 0) / 3, 2 / 3, 8)
    assert rates["d2o2"].prompts == 2 and rates["d2o2"].skipped == 1
    assert rates["d2o2"].pass1 == pytest.approx(1 / 16)
    assert rates["d2o2"].passk == pytest.approx(0.5)
    k2 = tier_pass_rates(tasks, scores, k=2)["d1o1"]
    assert k2.passk == pytest.approx((1 + (1 - 6 / 28) + 0) / 3)  # c=4: 1 - C(4,2)/C(8,2)


def test_tier_pass_rates_errors() -> None:
    tasks = tier_tasks([Tier(1, 1)], 2, seed=1)
    with pytest.raises(ValueError, match="no prompt has 8"):
        tier_pass_rates(tasks, {tasks[0].key: [1.0] * 3}, k=8)
    with pytest.raises(TierError):
        tier_pass_rates([Task.create("What is 1+1?", "2", "x")], {}, k=1)


def _rates(**figures: tuple[float, float]) -> dict[str, TierPassRates]:
    return {n: TierPassRates(n, 10, 0, p1, p8, 8) for n, (p1, p8) in figures.items()}


def test_choose_tiers_keeps_learnable_tiers_in_order() -> None:
    rates = _rates(
        d1o1=(0.9, 1.0),  # too easy
        d2o1=(0.6, 0.75),  # upper edge, gain exactly 15 points: in
        d2o2=(0.4, 0.5),  # gain too small
        d3o2=(0.2, 0.7),  # lower edge: in
        d3o3=(0.19, 0.8),  # just too hard
        d4o3=(0.0, 0.0),
    )
    assert choose_tiers(rates) == ["d2o1", "d3o2"]
    assert choose_tiers(rates, pass1_range=(0.1, 0.95), min_gain=0.05) == [
        "d1o1",
        "d2o1",
        "d2o2",
        "d3o2",
        "d3o3",
    ]


def test_choose_tiers_says_why_when_nothing_qualifies() -> None:
    with pytest.raises(TierChoiceError, match=r"d1o1 pass@1 95% pass@8 100%"):
        choose_tiers(_rates(d1o1=(0.95, 1.0), d4o4=(0.01, 0.05)))
    with pytest.raises(TierChoiceError, match="no tiers measured"):
        choose_tiers({})
