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
from agents.nano import CI_CONFIG, save_nano
from agents.policy import SamplingParams
from envs.tasks import Tier
from sandbox import SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(SandboxConfig(warm=1, memory_mb=512, reuse=True)) as p:
        yield p


async def test_a_random_nano_plays_whole_episodes_without_drift(
    pool: SandboxPool, tmp_path: Path
) -> None:
    policy = HFPolicy.from_pretrained(save_nano(tmp_path, CI_CONFIG), num_threads=1)
    spec = EpisodeSpec("spo_gym/ReToolNano-v0", sampling=SamplingParams(temperature=1.0, seed=3))
    play = episode_fn(spec, policy, policy.tokenizer, pool)
    try:
        for task in Tier.parse("d3o1").tasks(3, seed=0):
            traj = await play(EpisodeRequest(task))
            assert not traj.masked and traj.drift == []
            assert len(traj.prompt_ids) + len(traj.response_ids) <= CI_CONFIG.context
            assert traj.turns >= 1
    finally:
        await policy.aclose()
