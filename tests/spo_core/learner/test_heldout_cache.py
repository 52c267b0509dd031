"""The cache of initial held-out reports: an exact round trip, a key that follows everything
that determines the report, and an unreadable entry that is re-measured, not trusted."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from agents.episode_fn import EpisodeSpec
from agents.policy import SamplingParams
from envs.tasks import Tier, tier_tasks
from spo_core.learner.heldout import HeldoutReport, TierScore, heldout_set
from spo_core.learner.heldout_cache import (
    heldout_cache_key,
    read_cached_report,
    write_cached_report,
)

SPEC = EpisodeSpec("spo_gym/ReToolNano-v0", {}, SamplingParams(max_tokens=200, seed=0))
TIERS = [Tier(1, 1), Tier(2, 1)]
HELD = heldout_set(TIERS, 4, seed=5, train=tier_tasks(TIERS, 10, seed=4))


def _report(k: int = 4) -> HeldoutReport:
    return HeldoutReport(
        n=8,
        tier_mix={"d1o1": 4, "d2o1": 4},
        greedy_accuracy=0.625,
        avg_at_k=0.40625 if k else math.nan,
        k=k,
        temperature=1.0,
        per_tier={
            "d1o1": TierScore(4, 0.75, 0.5 if k else math.nan),
            "d2o1": TierScore(4, 0.5, 0.3125 if k else math.nan),
        },
        masked=1,
        wall_s=12.5,
    )


def test_a_cached_report_reads_back_exactly(tmp_path: Path) -> None:
    report = _report()
    key = heldout_cache_key("weights-a", HELD, SPEC, 4, 1.0)
    assert read_cached_report(tmp_path, key) is None
    write_cached_report(tmp_path, key, report)
    assert read_cached_report(tmp_path, key) == report
    assert read_cached_report(tmp_path, heldout_cache_key("weights-b", HELD, SPEC, 4, 1.0)) is None


def test_a_greedy_only_report_keeps_its_nan_avg(tmp_path: Path) -> None:
    key = heldout_cache_key("weights-a", HELD, SPEC, 0, 1.0)
    write_cached_report(tmp_path, key, _report(k=0))
    back = read_cached_report(tmp_path, key)
    assert back is not None and back.k == 0 and math.isnan(back.avg_at_k)
    assert back.per_tier["d2o1"].greedy == 0.5 and math.isnan(back.per_tier["d2o1"].avg)


def test_the_key_follows_weights_problems_sampling_and_k() -> None:
    base = heldout_cache_key("w", HELD, SPEC, 4, 1.0)
    other_held = heldout_set(TIERS, 4, seed=6, train=[])
    variants = [
        heldout_cache_key("w2", HELD, SPEC, 4, 1.0),
        heldout_cache_key("w", other_held, SPEC, 4, 1.0),
        heldout_cache_key("w", HELD, SPEC.with_sampling(seed=1), 4, 1.0),
        heldout_cache_key("w", HELD, SPEC.with_sampling(max_tokens=100), 4, 1.0),
        heldout_cache_key("w", HELD, replace(SPEC, env_id="spo_gym/ReTool-v0"), 4, 1.0),
        heldout_cache_key("w", HELD, SPEC, 8, 1.0),
        heldout_cache_key("w", HELD, SPEC, 4, 0.7),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert heldout_cache_key("w", HELD, SPEC, 4, 1.0) == base  # deterministic


def test_an_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    key = heldout_cache_key("w", HELD, SPEC, 4, 1.0)
    path = write_cached_report(tmp_path, key, _report())
    path.write_text('{"n": 8, "tier_mix"')  # a torn write from an older version
    assert read_cached_report(tmp_path, key) is None
    path.write_text('{"n": 8}')  # fields missing
    assert read_cached_report(tmp_path, key) is None
