"""Episodes end to end: the real ReTool env and Docker sandbox, a scripted token policy, a real
tokenizer. Token exactness, masking rule, budgets and the watchdog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import docker
import pytest
import pytest_asyncio
from transformers import PreTrainedTokenizerBase

from agents.episode import run_episode
from agents.policy import SamplingParams, TokenOutput
from envs import ReToolEnv, Task
from sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker

CODE_TURN = "Let me compute.\n<code>\n```python\nx = 6 * 7\nprint(x)\n```\n</code>"
ANSWER_TURN = "The output is 42, so the answer is \\boxed{42}."


class ScriptedPolicy:
    """Returns scripted turns as token ids (with fixed log-probs), recording what it was asked."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, turns: Sequence[str], delay_s: float = 0.0
    ) -> None:
        self.tokenizer = tokenizer
        self.turns = list(turns)
        self.delay_s = delay_s
        self.outputs: list[TokenOutput] = []
        self.contexts: list[list[int]] = []

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        self.contexts.append(list(prompt_ids))
        await asyncio.sleep(self.delay_s)
        text = self.turns[len(self.outputs)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not text.endswith("</code>"):
            ids.append(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        out = TokenOutput(tuple(ids), tuple(-0.25 for _ in ids), "stop")
        self.outputs.append(out)
        return out


class BrokenPolicy:
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
        env, BrokenPolicy(), smollm2_tokenizer, TASK, SamplingParams(max_tokens=8)
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
        TASK,
        SamplingParams(max_tokens=64),
        deadline=time.monotonic() + 2.0,
    )
    assert time.monotonic() - t0 < 8
    # The deadline is a backstop against stalls (envs/core.py's reason table): masked.
    assert traj.termination_reason == "watchdog" and traj.reward == 0.0 and traj.masked
    assert "deadline" in traj.mask_reason
    assert env.session is None
