"""An eval worker: a policy client, a sandbox pool and the episode function, ready to play.

:class:`WorkerSpec` describes one and pickles, so local mode and every Ray actor
(:mod:`evals.ray_runner`) build the same worker from the same description.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.passing_thread import in_passing_thread
from agents.policy import Policy
from agents.policy_spec import PolicySpec
from evals.runner import WorkItem, run_samples
from evals.sample import EvalSample, Lost
from sandbox import SandboxConfig, SandboxPool

__all__ = ["Worker", "WorkerSpec", "open_worker"]


@dataclass(frozen=True)
class WorkerSpec:
    """What an eval worker is.

    Attributes:
        policy: the policy client to build.
        episode: the env and sampling of every episode.
        sandbox: the worker's own sandbox pool.
        concurrency: episodes at once on this worker.
        episode_timeout_s: an episode's active-time budget (past it: masked, retried).
        max_attempts: plays of a sample before it counts as lost.
    """

    policy: PolicySpec
    episode: EpisodeSpec
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    concurrency: int = 8
    episode_timeout_s: float | None = 600.0
    max_attempts: int = 3


@dataclass
class Worker:
    """A built worker (see :func:`open_worker`)."""

    spec: WorkerSpec
    policy: Policy
    tokenizer: PreTrainedTokenizerBase
    pool: SandboxPool

    async def run(
        self,
        items: Sequence[WorkItem],
        on_sample: Callable[[EvalSample], None],
        on_lost: Callable[[Lost], None],
    ) -> None:
        """Play ``items`` (see :func:`evals.runner.run_samples`)."""
        await run_samples(
            items,
            episode_fn(self.spec.episode, self.policy, self.tokenizer, self.pool),
            self.tokenizer,
            on_sample=on_sample,
            on_lost=on_lost,
            policy=self.policy,
            concurrency=self.spec.concurrency,
            episode_timeout_s=self.spec.episode_timeout_s,
            max_attempts=self.spec.max_attempts,
        )


@asynccontextmanager
async def open_worker(spec: WorkerSpec) -> AsyncIterator[Worker]:
    """Build the policy and start the sandbox pool; close both on exit.

    Raises:
        whatever :meth:`PolicySpec.build` raises, and
        :class:`sandbox.SandboxUnavailable` when the pool cannot start.
    """
    policy, tokenizer = await in_passing_thread(spec.policy.build)
    try:
        async with SandboxPool(spec.sandbox) as pool:
            yield Worker(spec, policy, tokenizer, pool)
    finally:
        close = getattr(policy, "aclose", None)
        if close is not None:
            await close()
