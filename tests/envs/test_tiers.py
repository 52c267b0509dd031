"""Arithmetic tiers: names, train mixes and held-out sets that never repeat a training problem."""

import pytest

from envs.tasks import Tier, TierError, heldout_tasks, tier_of, tier_tasks


def test_names_round_trip() -> None:
    for name in ["d3o2", "d4o1n", "d12o3"]:
        assert Tier.parse(name).name == name
    assert Tier.parse("d4o1n") == Tier(4, 1, division=False)


@pytest.mark.parametrize("bad", ["", "3o2", "d0o1", "d3o0", "d3o2x", "d-1o2"])
def test_bad_names_are_one_line_errors(bad: str) -> None:
    with pytest.raises(TierError, match="tier"):
        Tier.parse(bad)


def test_mix_is_tier_by_tier_and_tasks_know_their_tier() -> None:
    tiers = [Tier.parse("d2o1"), Tier.parse("d3o2n")]
    tasks = tier_tasks(tiers, 5, seed=1)
    assert [tier_of(t) for t in tasks] == ["d2o1"] * 5 + ["d3o2n"] * 5
    assert all("/" not in t.extra["expression"] for t in tasks[5:])


def test_heldout_shares_no_expression_with_training() -> None:
    # d1o1 has few distinct expressions, so a second seed overlaps the first a lot.
    tiers = [Tier.parse("d1o1n")]
    train = tier_tasks(tiers, 40, seed=0)
    held = heldout_tasks(tiers, 20, seed=1, exclude=train)
    train_expr = {t.extra["expression"] for t in train}
    held_expr = [t.extra["expression"] for t in held]
    assert len(held) == 20 and len(set(held_expr)) == 20
    assert not train_expr & set(held_expr)
    # Without the exclusion the same seed does repeat training problems: the check bites.
    assert train_expr & {t.extra["expression"] for t in tier_tasks(tiers, 20, seed=1)}


def test_heldout_too_small_a_tier_is_an_error() -> None:
    with pytest.raises(TierError, match="d1o1n"):
        heldout_tasks([Tier.parse("d1o1n")], 500, seed=1)


def test_mix_errors() -> None:
    with pytest.raises(TierError, match="at least one"):
        tier_tasks([], 3, seed=0)
    with pytest.raises(TierError, match="twice"):
        tier_tasks([Tier(2, 1), Tier(2, 1)], 3, seed=0)
