"""Episodes end to end: the real ReTool env and Docker sandbox, a scripted token policy, a real
tokenizer. Token exactness, masking rule, budgets and the watchdog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest
import pytest_asyncio
from transformers import PreTrainedTokenizerBase

from agents.clock import ActiveClock, Deadline
from agents.episode import run_episode
from agents.episode_request import EpisodeRequest
from agents.hf_policy import HFPolicy
from agents.policy import LogProbMode, SamplingParams, TokenOutput
from agents.seeds import turn_seed
from agents.transcript import Transcript
from envs import ReToolEnv, Task
from sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker

CODE_TURN = "Let me compute.\n<code>\n```python\nx = 6 * 7\nprint(x)\n```\n</code>"
ANSWER_TURN = "The output is 42, so the answer is \\boxed{42}."


class ScriptedPolicy:
    """Returns scripted turns as token ids (with fixed log-probs), recording what it was asked.

    A turn longer than a request's ``max_tokens`` is returned in pieces ("length"), the next
    request continuing it, as a model would. ``max_context_tokens`` is enforced as a server
    would: a request that does not fit raises.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        turns: Sequence[str],
        delay_s: float = 0.0,
        *,
        max_context_tokens: int | None = None,
        log_prob_mode: LogProbMode = "tempered",
    ) -> None:
        self.tokenizer = tokenizer
        self.delay_s = delay_s
        self.version = 0
        self.max_context_tokens = max_context_tokens
        self.log_prob_mode = log_prob_mode
        self.outputs: list[TokenOutput] = []
        self.contexts: list[list[int]] = []
        self.requests: list[SamplingParams] = []
        self.pending: list[list[int]] = []
        for text in turns:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if not text.endswith("</code>"):
                ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
            self.pending.append(ids)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        limit = self.max_context_tokens
        if limit is not None and len(prompt_ids) + sampling.max_tokens > limit:
            raise ValueError("the request exceeds the model's context")
        self.contexts.append(list(prompt_ids))
        self.requests.append(sampling)
        await asyncio.sleep(self.delay_s)
        turn = self.pending[0]
        ids, rest = turn[: sampling.max_tokens], turn[sampling.max_tokens :]
        if rest:
            self.pending[0] = rest
        else:
            self.pending.pop(0)
        out = TokenOutput(
            tuple(ids),
            tuple(-0.25 for _ in ids),
            "length" if rest else "stop",
            log_prob_mode=self.log_prob_mode,
        )
        self.outputs.append(out)
        return out

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        self.version = version


class BrokenPolicy(ScriptedPolicy):
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        raise ConnectionError("inference server unreachable")


TASK = Task.create("What is 6 times 7?", "42", "test", {})


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(SandboxConfig(warm=1, memory_mb=512)) as p:
        yield p


async def test_tokens_are_exact_and_observations_masked(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
    env = ReToolEnv(pool=pool)
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert traj.reward == 1.0 and traj.termination_reason == "answered" and not traj.masked
    assert traj.turns == 2 and [r.stdout for r in traj.tool_results] == ["42\n"]
    # Model tokens are the sampled ids, byte for byte, with their log-probs.
    model_ids = [i for i, m in zip(traj.response_ids, traj.response_mask, strict=True) if m == 1]
    assert model_ids == [i for out in policy.outputs for i in out.token_ids]
    assert all(
        lp == -0.25 for lp, m in zip(traj.response_logprobs, traj.response_mask, strict=True) if m
    )
    # Observation tokens are masked, carry log-prob 0, and hold the interpreter output.
    obs_ids = [i for i, m in zip(traj.response_ids, traj.response_mask, strict=True) if m == 0]
    assert "<interpreter>\n42\n</interpreter>" in smollm2_tokenizer.decode(obs_ids)
    assert all(
        lp == 0.0 for lp, m in zip(traj.response_logprobs, traj.response_mask, strict=True) if not m
    )
    # The second call saw exactly the first call's context plus its output plus the observation.
    assert policy.contexts[1][: len(policy.contexts[0])] == policy.contexts[0]
    assert (
        policy.contexts[1]
        == traj.prompt_ids + traj.response_ids[: len(policy.contexts[1]) - len(traj.prompt_ids)]
    )
    assert traj.prompt_key == TASK.key and traj.policy_version == 0


async def test_container_killed_in_a_cell_is_scored_normally(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    slow = "Wait.\n<code>\n```python\nimport time\ntime.sleep(30)\n```\n</code>"
    policy = ScriptedPolicy(smollm2_tokenizer, [slow, ANSWER_TURN])
    env = ReToolEnv(pool=pool, tool_timeout_s=60)
    client = docker.from_env()

    async def kill_when_running() -> None:
        while env.session is None or env.session.container_id is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(client.api.kill, env.session.container_id)

    killer = asyncio.ensure_future(kill_when_running())
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    await killer
    assert [r.status.value for r in traj.tool_results] == ["sandbox_error"]
    assert not traj.masked and traj.reward == 1.0 and traj.termination_reason == "answered"


async def test_no_sandbox_obtainable_masks_the_episode(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    cfg = SandboxConfig(warm=0, max_containers=1, self_test=False)
    async with SandboxPool(cfg) as tiny, tiny.session("hog"):
        policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
        env = ReToolEnv(pool=tiny, acquire_timeout_s=0.3)
        traj = await run_episode(
            env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64)
        )
    assert traj.masked and traj.termination_reason == "masked" and traj.reward == 0.0
    assert "no sandbox became free" in traj.mask_reason


async def test_policy_failure_masks_the_episode(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    env = ReToolEnv(pool=pool)
    traj = await run_episode(
        env,
        BrokenPolicy(smollm2_tokenizer, []),
        smollm2_tokenizer,
        TASK,
        SamplingParams(max_tokens=8),
    )
    assert traj.masked and "inference server unreachable" in traj.mask_reason
    assert env.session is None  # nothing held


async def test_token_budget_truncates_with_zero_reward(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
    env = ReToolEnv(pool=pool, generation={"max_episode_tokens": 40})
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert traj.termination_reason == "token_budget" and traj.reward == 0.0
    assert len(traj.response_ids) <= 40


async def test_watchdog_ends_a_stuck_episode_and_releases_the_sandbox(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    stuck = "Hmm.\n<code>\n```python\nwhile True:\n    pass\n```\n</code>"
    policy = ScriptedPolicy(smollm2_tokenizer, [stuck, ANSWER_TURN])
    env = ReToolEnv(pool=pool, tool_timeout_s=60)
    t0 = time.monotonic()
    traj = await run_episode(
        env,
        policy,
        smollm2_tokenizer,
        EpisodeRequest(TASK, deadline=Deadline(2.0)),
        SamplingParams(max_tokens=64),
    )
    assert time.monotonic() - t0 < 8
    # The deadline is a backstop against stalls (envs/core.py's reason table): masked.
    assert traj.termination_reason == "watchdog" and traj.reward == 0.0 and traj.masked
    assert "deadline" in traj.mask_reason
    assert env.session is None


def ids_of(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


async def test_a_turn_ending_exactly_on_the_last_budget_token_is_truncated_not_run(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    # The code turn ends with its stop string on the very last token of the budget: there is
    # no room for its observation, so the cell must not run.
    budget = len(ids_of(smollm2_tokenizer, CODE_TURN))
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
    env = ReToolEnv(pool=pool, generation={"max_episode_tokens": budget})
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert policy.outputs[0].stop_reason == "stop" and len(traj.response_ids) == budget
    assert traj.termination_reason == "token_budget" and not traj.masked
    assert traj.tool_results == [] and traj.reward == 0.0
    assert env.session is None


async def test_a_context_overflow_truncates_instead_of_masking(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase, smollm2_dir: Path
) -> None:
    env = ReToolEnv(pool=pool)
    prompt = len(Transcript(smollm2_tokenizer, env.prompt(TASK)).prompt_ids)
    # The real model, with a context that holds the prompt and 6 more tokens.
    policy = HFPolicy.from_pretrained(smollm2_dir, max_context_tokens=prompt + 6)
    traj = await run_episode(
        env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64, temperature=0)
    )
    assert traj.termination_reason == "context_limit" and not traj.masked, traj.mask_reason
    assert len(traj.prompt_ids) + len(traj.response_ids) == prompt + 6
    assert traj.num_model_tokens == 6 and traj.tool_results == []
    # A prompt that does not fit at all ends the episode before any request.
    policy = HFPolicy.from_pretrained(smollm2_dir, max_context_tokens=prompt - 1)
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert traj.termination_reason == "context_limit" and not traj.masked
    assert traj.turns == 0 and traj.response_ids == []
    await policy.aclose()


async def test_a_context_limit_cuts_an_observation_and_is_reported(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    env = ReToolEnv(pool=pool)
    prompt = len(Transcript(smollm2_tokenizer, env.prompt(TASK)).prompt_ids)
    room = len(ids_of(smollm2_tokenizer, CODE_TURN)) + 3  # the cell's output does not fit
    policy = ScriptedPolicy(
        smollm2_tokenizer, [CODE_TURN, ANSWER_TURN], max_context_tokens=prompt + room
    )
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert traj.termination_reason == "context_limit" and not traj.masked
    assert len(traj.response_ids) == room and [r.stdout for r in traj.tool_results] == ["42\n"]


LONG_ANSWER = ANSWER_TURN + " Let me double-check this carefully once more before I finish."


async def test_a_turn_cut_by_the_turn_limit_is_never_graded(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    cut = len(ids_of(smollm2_tokenizer, ANSWER_TURN)) + 2  # past the \boxed{42}, before the end
    policy = ScriptedPolicy(smollm2_tokenizer, [LONG_ANSWER])
    env = ReToolEnv(pool=pool, generation={"max_turn_tokens": cut}, score_truncated=True)
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert "\\boxed{42}" in smollm2_tokenizer.decode(policy.outputs[-1].token_ids)
    assert policy.outputs[-1].stop_reason == "length"
    assert traj.termination_reason == "turn_tokens" and not traj.masked
    assert traj.reward == 0.0  # scored on its completed turns only: no answer among them


async def test_a_turn_cut_by_the_turn_limit_continues_when_the_env_says_so(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, LONG_ANSWER])
    env = ReToolEnv(pool=pool, generation={"max_turn_tokens": 5, "turn_cut": "continue"})
    traj = await run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    assert traj.termination_reason == "answered" and traj.reward == 1.0
    assert traj.turns == 2 and len(policy.outputs) > 4  # two turns, in pieces of 5 tokens
    model_ids = [i for i, m in zip(traj.response_ids, traj.response_mask, strict=True) if m]
    assert model_ids == [i for out in policy.outputs for i in out.token_ids]
    assert [r.stdout for r in traj.tool_results] == ["42\n"]


async def test_each_request_gets_its_own_seed_from_the_run_seed_and_the_sample(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    async def seeds(sample_index: int) -> list[int | None]:
        policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
        traj = await run_episode(
            ReToolEnv(pool=pool),
            policy,
            smollm2_tokenizer,
            EpisodeRequest(TASK, sample_index=sample_index),
            SamplingParams(max_tokens=64, seed=7),
        )
        assert traj.sample_index == sample_index and traj.sampling is not None
        assert traj.sampling.seed == 7 and traj.sampling.stop == ("</code>",)
        return [r.seed for r in policy.requests]

    first, second = await seeds(0), await seeds(1)
    assert first == [turn_seed(7, TASK.key, 0, 0), turn_seed(7, TASK.key, 0, 1)]
    assert len(set(first + second)) == 4  # never shared across turns or samples
    assert await seeds(0) == first  # reproducible


async def test_versions_and_log_prob_kind_are_recorded_per_turn(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN], log_prob_mode="raw")
    env = ReToolEnv(pool=pool)
    real_step = env.astep

    async def step_then_update(action: str) -> Any:
        result = await real_step(action)
        await policy.update_weights({}, 3)  # the weights change between the two turns
        return result

    env.astep = step_then_update  # type: ignore[method-assign]
    traj = await run_episode(
        env, policy, smollm2_tokenizer, EpisodeRequest(TASK, policy_version=0), SamplingParams()
    )
    assert traj.turn_versions == [0, 3] and traj.policy_version == 0 and traj.staleness(3) == 3
    assert len(traj.response_versions) == len(traj.response_ids)
    assert traj.response_versions == sorted(traj.response_versions)
    first_turn = len(policy.outputs[0].token_ids)
    assert set(traj.response_versions[:first_turn]) == {0}
    assert traj.response_versions[-1] == 3
    assert traj.log_prob_mode == "raw"


async def test_the_deadline_counts_only_active_time(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    clock = ActiveClock()  # stopped: the engine is not serving a batch call
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN], delay_s=0.6)
    traj = await run_episode(
        ReToolEnv(pool=pool),
        policy,
        smollm2_tokenizer,
        EpisodeRequest(TASK, deadline=Deadline(0.5, clock)),
        SamplingParams(max_tokens=64),
    )
    assert traj.termination_reason == "answered" and not traj.masked


async def test_a_cancelled_episode_releases_its_sandbox(
    pool: SandboxPool, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = ScriptedPolicy(smollm2_tokenizer, [CODE_TURN, ANSWER_TURN])
    env = ReToolEnv(pool=pool)
    real_generate = policy.generate

    async def hang_on_the_second_turn(prompt_ids: list[int], sampling: SamplingParams) -> Any:
        if policy.outputs:
            await asyncio.sleep(3600)
        return await real_generate(prompt_ids, sampling)

    policy.generate = hang_on_the_second_turn  # type: ignore[method-assign]
    episode = asyncio.ensure_future(
        run_episode(env, policy, smollm2_tokenizer, TASK, SamplingParams(max_tokens=64))
    )
    while env.session is None:  # the code cell holds a sandbox
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    episode.cancel()
    with pytest.raises(asyncio.CancelledError):
        await episode
    assert env.session is None
