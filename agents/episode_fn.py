"""The episode function the rollout engine runs: a fresh env per episode, played by a policy.

Training, offline values and evaluation all build their episodes here, so the three see the
same environment, the same prompt rendering and the same token transcript.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from agents.episode import EventCallback, run_episode
from agents.episode_request import EpisodeFn, EpisodeRequest
from agents.policy import Policy, SamplingParams
from agents.trajectory import Trajectory
from envs import make
from sandbox import SandboxPool

__all__ = ["EpisodeSpec", "episode_fn"]


@dataclass(frozen=True)
class EpisodeSpec:
    """What one episode is: which env, configured how, sampled how.

    Attributes:
        env_id: a registered env id, e.g. ``"spo_gym/ReTool-v0"``.
        env_options: keyword arguments for the env's constructor (``pool`` is given
            separately).
        sampling: base sampling params (``seed`` is the run seed; per-turn seeds derive from
            it, the prompt, the sample index and the turn).
        chat_template_kwargs: extra chat-template variables.
    """

    env_id: str
    env_options: Mapping[str, Any] = field(default_factory=dict)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def with_sampling(self, **changes: Any) -> EpisodeSpec:
        """The same episode with some sampling params changed (e.g. ``temperature=0``)."""
        return replace(self, sampling=replace(self.sampling, **changes))


def episode_fn(
    spec: EpisodeSpec,
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    pool: SandboxPool,
    *,
    on_event: EventCallback | None = None,
) -> EpisodeFn:
    """An :data:`~agents.episode_request.EpisodeFn` playing ``spec`` with ``policy``.

    Each call makes its own env on ``pool`` and closes it when the episode ends, whichever way
    it ends.
    """

    async def play(request: EpisodeRequest) -> Trajectory:
        env = make(spec.env_id, pool=pool, **dict(spec.env_options))
        try:
            return await run_episode(
                env,
                policy,
                tokenizer,
                request,
                spec.sampling,
                chat_template_kwargs=dict(spec.chat_template_kwargs) or None,
                on_event=on_event,
            )
        finally:
            await env.aclose()

    return play
