"""The nano model plays real ReToolNano episodes through the episode function and the Docker
sandbox, with no transcript drift."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.episode_request import EpisodeRequest
from agents.hf_policy import HFPolicy
from agents.nano import CI_CONFIG, build_tokenizer, save_nano
from agents.policy import SamplingParams, TokenOutput
from agents.transcript import DriftCause
from envs.tasks import Tier
from sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(SandboxConfig(warm=1, memory_mb=512, reuse=True)) as p:
        yield p


async def test_non_ascii_tool_output_and_truncation_marks_do_not_drift(pool: SandboxPool) -> None:
    tokenizer = build_tokenizer()
    code = "<code>\n```python\nprint('é→' + 'x' * 300)\n```\n</code>"
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    turns = [tokenizer.encode(code), [*tokenizer.encode("\\boxed{1}"), eos]]

    class Scripted:
        version = 0
        max_context_tokens = 1024

        async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
            ids = turns.pop(0)
            return TokenOutput(tuple(ids), (0.0,) * len(ids), "stop")

    play = episode_fn(EpisodeSpec("spo_gym/ReToolNano-v0"), Scripted(), tokenizer, pool)  # type: ignore[arg-type]
    traj = await play(EpisodeRequest(Tier.parse("d2o1").tasks(1, seed=0)[0]))
    assert traj.turns == 2 and traj.drift == []
    assert "é→" in traj.text and "characters truncated" in traj.text


async def test_a_random_nano_plays_whole_episodes_without_drift(
    pool: SandboxPool, tmp_path: Path
) -> None:
    policy = HFPolicy.from_pretrained(save_nano(tmp_path, CI_CONFIG), num_threads=1)
    spec = EpisodeSpec("spo_gym/ReToolNano-v0", sampling=SamplingParams(temperature=1.0, seed=3))
    play = episode_fn(spec, policy, policy.tokenizer, pool)
    try:
        for task in Tier.parse("d3o1").tasks(3, seed=0):
            traj = await play(EpisodeRequest(task))
            assert not traj.masked
            # A random model samples byte tokens that split characters; nothing else drifts.
            assert {d.cause for d in traj.drift} <= {DriftCause.INVALID_UTF8}
            assert len(traj.prompt_ids) + len(traj.response_ids) <= CI_CONFIG.context
            assert traj.turns >= 1
    finally:
        await policy.aclose()
