"""The eval-throughput bench's figures: playing window, steady rate, time shares, the delayed
scripted policy, and one real measurement through ``run_eval`` and the sandbox."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.policy import SamplingParams
from agents.policy_spec import PolicySpec, PolicySpecError
from bench.eval_throughput import SCRIPTED, measure, play_window, shares, steady_rate
from evals import EvalConfig
from evals.sample import EvalSample


def _sample(index: int, total_s: float) -> EvalSample:
    return EvalSample(
        problem_key="p",
        sample_index=index,
        answer=None,
        correct=False,
        reward=0.0,
        score_status="graded",
        grade_detail="",
        termination_reason="answered",
        turns=1,
        tool_calls=0,
        total_s=total_s,
    )


def test_play_window_starts_at_the_earliest_episode_start() -> None:
    # Finished at 10, 11, 14; they took 3, 5, 2 s: the second started first, at 6.
    samples = [_sample(0, 3.0), _sample(1, 5.0), _sample(2, 2.0)]
    assert play_window([10.0, 11.0, 14.0], samples) == pytest.approx(8.0)
    assert play_window([], []) == 0.0


def test_steady_rate_counts_the_second_half() -> None:
    # Six completions; the second half (three) came between t=3 and t=9.
    assert steady_rate([0.0, 1.0, 3.0, 5.0, 7.0, 9.0]) == pytest.approx(3 / 6)
    assert steady_rate([2.0]) == 0.0


def test_shares_split_the_summed_episode_time() -> None:
    got = shares({"llm": 2.0, "sandbox": 5.0, "grader": 1.0, "episode": 10.0})
    assert got == pytest.approx({"llm": 0.2, "sandbox": 0.5, "grader": 0.1, "other": 0.2})
    assert shares({"llm": 0, "sandbox": 0, "grader": 0, "episode": 0})["other"] == 0.0


def test_delayed_factory_sleeps_per_call() -> None:
    policy, tokenizer = PolicySpec(factory="bench.eval_throughput:scripted_delay_120ms").build()
    prompt = tokenizer.encode("Compute the exact value of 3 + 4", add_special_tokens=False)
    t0 = time.monotonic()
    out = asyncio.run(policy.generate(prompt, SamplingParams(max_tokens=64, seed=1)))
    assert time.monotonic() - t0 >= 0.12
    assert "print(3 + 4)" in tokenizer.decode(list(out.token_ids))
    with pytest.raises(PolicySpecError, match="cannot import"):
        PolicySpec(factory="bench.eval_throughput:scripted_delay_fast").build()


@pytest.mark.docker
def test_measure_times_a_real_eval() -> None:
    config = EvalConfig(
        dataset="tiers:d1o1:2",
        policy=PolicySpec(factory=SCRIPTED),
        k=3,
        sampling=SamplingParams(max_tokens=64, seed=0),
        concurrency=2,
    )
    m = asyncio.run(measure(config, "local"))
    assert (m.episodes, m.lost, m.concurrency) == (6, 0, 2)
    assert 0 < m.play_s < m.full_s
    assert m.eps_full == pytest.approx(6 / m.full_s)
    assert m.sandbox_share > 0  # every scripted episode runs a cell
    assert m.llm_share + m.sandbox_share + m.grader_share + m.other_share == pytest.approx(1.0)
    # The window's start is estimated from the episode's own clock, a few ms late at most.
    assert 0 < m.slot_use <= 1.05
