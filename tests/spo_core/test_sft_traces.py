"""Ideal traces are token for token what a rollout of the same actions produces through the
real env, chat template and Docker sandbox."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from fractions import Fraction
from typing import Any

import pytest
import pytest_asyncio
from transformers import PreTrainedTokenizerBase

import envs
from agents.episode_fn import EpisodeSpec, episode_fn
from agents.episode_request import EpisodeRequest
from agents.nano import build_tokenizer
from agents.policy import SamplingParams, TokenOutput
from envs.tasks import Task, Tier
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner.traces import TraceError, ideal_actions, ideal_code, render_trace

ENV_ID = "spo_gym/ReToolNano-v0"


class IdealPolicy:
    """Samples the ideal actions of a task as a policy would: the code turn ends at the stop
    string, the answer turn with the end-of-turn token."""

    max_context_tokens = 768

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task) -> None:
        code, answer = ideal_actions(task)
        eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        self.turns = [
            tokenizer.encode(code, add_special_tokens=False),
            [*tokenizer.encode(answer, add_special_tokens=False), eos],
        ]
        self.version = 0

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        ids = self.turns.pop(0)
        return TokenOutput(tuple(ids), tuple(-0.5 for _ in ids), "stop")

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        self.version = version


def test_ideal_code_is_exact_fraction_arithmetic() -> None:
    code = ideal_code("914 + (591 / 801)")
    printed: list[object] = []
    exec(code, {"print": printed.append})  # the code a trace teaches, run on the host
    assert printed == [Fraction(244235, 267)] and '"914 + (591 / 801)"' in code
    with pytest.raises(TraceError, match="not an arithmetic expression"):
        ideal_code('1"); import os; ("')
    task = Tier.parse("d3o2").tasks(5, seed=0)[4]
    assert task.extra["expression"] == "914 + (591 / 801)"
    assert str(Fraction(914) + Fraction(591, 801)) == task.answer == "244235/267"
    code_turn, answer_turn = ideal_actions(task)
    assert code_turn.startswith("<code>\n```python\n") and code_turn.endswith("</code>")
    assert answer_turn == "\\boxed{244235/267}"


def test_a_task_without_an_expression_has_no_trace() -> None:
    with pytest.raises(TraceError, match="no arithmetic expression"):
        ideal_actions(Task.create("What is 2 + 2?", "4", "test", {}))


def test_a_trace_masks_everything_but_the_model_turns() -> None:
    tokenizer = build_tokenizer()
    env = envs.make(ENV_ID)
    task = Tier.parse("d2o1").tasks(1, seed=0)[0]
    trace = render_trace(task, env, tokenizer, max_context_tokens=768)
    env.close()
    trained = tokenizer.decode(
        [i for i, m in zip(trace.input_ids, trace.loss_mask, strict=True) if m]
    )
    code, answer = ideal_actions(task)
    assert trained == code + answer + "<|im_end|>"
    assert set(trace.loss_mask[: trace.prompt_len]) == {0}
    context = tokenizer.decode(list(trace.input_ids))
    assert f"</code><interpreter>\n{task.answer}\n</interpreter>\n\n\\boxed{{" in context


def test_a_trace_that_does_not_fit_the_context_is_refused() -> None:
    env = envs.make(ENV_ID)
    with pytest.raises(TraceError, match="does not fit"):
        render_trace(
            Tier.parse("d3o2").tasks(1, seed=0)[0], env, build_tokenizer(), max_context_tokens=320
        )
    env.close()


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(SandboxConfig(warm=1, memory_mb=512, reuse=True)) as p:
        yield p


@pytest.mark.docker
@pytest.mark.parametrize("tier", ["d2o1", "d3o2", "d4o3"])
async def test_a_trace_is_token_identical_to_a_real_rollout_of_its_actions(
    pool: SandboxPool, tier: str
) -> None:
    tokenizer = build_tokenizer()
    env = envs.make(ENV_ID)
    # Every operator, fractions and negative results among them.
    tasks = Tier.parse(tier).tasks(8, seed=3)
    try:
        for task in tasks:
            trace = render_trace(task, env, tokenizer, max_context_tokens=768)
            policy = IdealPolicy(tokenizer, task)
            play = episode_fn(EpisodeSpec(ENV_ID), policy, tokenizer, pool)
            traj = await play(EpisodeRequest(task))
            assert traj.reward == 1.0 and traj.drift == [] and traj.turns == 2
            assert tuple(traj.prompt_ids + traj.response_ids) == trace.input_ids
            assert (0,) * len(traj.prompt_ids) + tuple(traj.response_mask) == trace.loss_mask
            assert len(traj.prompt_ids) == trace.prompt_len
    finally:
        env.close()
    answers = " ".join(t.answer for t in tasks)
    assert "/" in answers or tier == "d2o1"
