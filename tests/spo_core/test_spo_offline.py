"""Offline initialisation (§5): the corrected formulas, the prior, file formats, match rate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spo_core import (
    OfflineConfig,
    OfflineMatchError,
    OfflineScores,
    TrackerConfig,
    ValueTracker,
    beta_prior,
    read_authors_json,
    read_offline_jsonl,
    read_offline_table,
    write_offline_jsonl,
)


def counts(tracker: ValueTracker, key: str) -> tuple[float, float]:
    alpha, beta = tracker.beta_counts_at(tracker.rows([key]))
    return float(alpha[0]), float(beta[0])


@pytest.mark.parametrize(
    ("s", "n", "alpha", "beta"),
    [
        (6, 8, 8 * 6.5 / 9, 8 * 2.5 / 9),  # n = n₀: v̂₀ = 6.5/9, α₀ + β₀ = N₀ = 8
        (0, 8, 8 * 0.5 / 9, 8 * 8.5 / 9),
        (1, 2, 1.0, 1.0),  # n < n₀: v̂₀ = 1.5/3 = 0.5, α₀ + β₀ = 8·2/8 = 2
        (0, 1, 0.25, 0.75),  # one failure: v̂₀ = 0.5/2, one pseudo-count, not N₀
        (3, 4, 4 * 3.5 / 5, 4 * 1.5 / 5),
    ],
)
def test_beta_prior_hand_computed(s: int, n: int, alpha: float, beta: float) -> None:
    a, b = beta_prior(np.array([float(s)]), np.array([float(n)]))
    assert (a[0], b[0]) == pytest.approx((alpha, beta), abs=1e-15)


def test_fewer_samples_fix_the_authors_denominator() -> None:
    # The authors' code divides by n₀ + 1 = 9 even for n = 2: v̂₀ = 1.5/9 = 0.167 (too low).
    a, b = beta_prior(np.array([1.0]), np.array([2.0]))
    assert a[0] / (a[0] + b[0]) == pytest.approx(0.5)
    assert a[0] / (a[0] + b[0]) != pytest.approx(1.5 / 9)


def test_init_offline_sets_sampled_prompts_and_keeps_the_prior_for_the_rest() -> None:
    keys = [f"q{i}" for i in range(10)]
    tracker = ValueTracker(keys, TrackerConfig(prior_count=2.0))
    table: dict[str, list[float]] = {k: [1.0] * 6 + [0.0] * 2 for k in keys[:8]}
    table["q8"] = []  # listed but never sampled: the prior
    table["q1"] = [1.0, 0.0]
    table["elsewhere"] = [1.0] * 8  # not a training prompt: ignored
    report = tracker.init_offline(
        OfflineScores.from_lists(table), OfflineConfig(min_match_rate=0.8)
    )
    assert (report.n_train, report.n_offline, report.matched) == (10, 9, 8)
    assert report.match_rate == pytest.approx(0.8)
    assert counts(tracker, "q0") == pytest.approx((8 * 6.5 / 9, 8 * 2.5 / 9))
    assert counts(tracker, "q1") == pytest.approx((1.0, 1.0))
    assert counts(tracker, "q8") == (1.0, 1.0)  # prior α = β = 0.5·N_prior
    assert counts(tracker, "q9") == (1.0, 1.0)


def test_more_than_n0_samples_are_subsampled_to_n0() -> None:
    scores = OfflineScores.from_lists({"a": [1.0] * 10 + [0.0] * 10})
    assert scores.counts.tolist() == [8]
    again = OfflineScores.from_lists({"a": [1.0] * 10 + [0.0] * 10})
    assert again.sums.tolist() == scores.sums.tolist()  # seeded
    tracker = ValueTracker(["a"])
    tracker.init_offline(scores)
    alpha, beta = counts(tracker, "a")
    assert alpha + beta == pytest.approx(8.0)
    assert alpha / 8 == pytest.approx((scores.sums[0] + 0.5) / 9)


def test_low_match_rate_fails_and_leaves_the_tracker_untouched() -> None:
    keys = [f"q{i}" for i in range(20)]
    tracker = ValueTracker(keys)
    table = {k: [1.0] * 8 for k in keys[:17]}  # 85% < 90%
    with pytest.raises(OfflineMatchError, match="17/20"):
        tracker.init_offline(OfflineScores.from_lists(table))
    assert tracker.baseline(keys).tolist() == [0.5] * 20
    table["q17"] = [0.0]
    table["q18"] = [0.0]  # 95%
    assert tracker.init_offline(OfflineScores.from_lists(table)).matched == 19


def test_pseudo_count_zero_is_the_no_offline_ablation() -> None:
    tracker = ValueTracker(["a"])
    report = tracker.init_offline(
        OfflineScores.from_lists({"a": [1.0] * 8}), OfflineConfig(pseudo_count=0)
    )
    assert report.matched == 1
    assert counts(tracker, "a") == (0.5, 0.5)


def test_ema_offline_equals_beta_offline_on_binary_scores() -> None:
    table = {"a": [1.0, 1.0, 0.0], "b": [0.0] * 8, "c": [1.0] * 12}
    beta = ValueTracker(table, TrackerConfig())
    ema = ValueTracker(table, TrackerConfig(mode="ema"))
    scores = OfflineScores.from_lists(table)
    beta.init_offline(scores)
    ema.init_offline(scores)
    rows = beta.rows(list(table))
    np.testing.assert_allclose(ema.baseline(list(table)), beta.baseline(list(table)), atol=1e-15)
    np.testing.assert_allclose(ema.n_eff_at(rows), beta.n_eff_at(rows), atol=1e-15)
    np.testing.assert_allclose(ema.reward_std_at(rows), beta.reward_std_at(rows), atol=1e-12)


def test_authors_json_binarises_and_converts_keys(tmp_path) -> None:
    path = tmp_path / "authors.json"
    path.write_text(
        json.dumps({"What is 2+2?": [1.0, 0.5, 0.0, -1.0], "what is 2+2? ": [1.0], "Other": [0.0]})
    )
    scores = read_authors_json(path, key_fn=lambda text: "k:" + text.strip().lower())
    by_key = dict(
        zip(
            scores.keys, zip(scores.counts.tolist(), scores.sums.tolist(), strict=True), strict=True
        )
    )
    # scores > 0 count as successes; the two texts with one canonical key are merged
    assert by_key == {"k:what is 2+2?": (5, 3.0), "k:other": (1, 0.0)}


def test_authors_json_must_be_an_object(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_authors_json(path, key_fn=str)


def test_project_jsonl_round_trip_keeps_fractional_scores(tmp_path) -> None:
    path = tmp_path / "offline.jsonl"
    write_offline_jsonl(path, {"a": [0.25, 1.0], "b": []})
    scores = read_offline_jsonl(path)
    assert scores.keys == ["a", "b"]
    assert scores.counts.tolist() == [2, 0]
    assert scores.sums.tolist() == [1.25, 0.0]
    assert scores.sq_sums.tolist() == [0.0625 + 1.0, 0.0]
    assert [p.name for p in tmp_path.iterdir()] == ["offline.jsonl"]


def test_offline_table_keeps_every_sample_and_merges_repeated_keys(tmp_path) -> None:
    path = tmp_path / "offline.jsonl"
    write_offline_jsonl(path, {"a": [1.0] * 12, "b": []})
    with open(path, "a") as f:
        f.write(json.dumps({"key": "a", "scores": [0]}) + "\n")
    table = read_offline_table(path)
    assert table == {"a": [1.0] * 12 + [0.0], "b": []}  # not subsampled to n0
    assert read_offline_jsonl(path).counts.tolist() == [8, 0]


def test_project_jsonl_rejects_malformed_lines(tmp_path) -> None:
    path = tmp_path / "offline.jsonl"
    path.write_text('{"key": "a", "scores": [1]}\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_offline_jsonl(path)
