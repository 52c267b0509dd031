"""Playing an eval's samples through the rollout engine, locally, with retries of lost ones.

Each sample is one (problem, sample index) pair; its index, not the order it runs in, seeds its
sampling, so a sample is the same whenever and wherever it is played. The engine runs the
samples as single-episode units (any number in flight, one concurrency limit, its watchdog and
its error handling); an episode the engine or env masks — lost to infrastructure, not the
model's doing — is played again, up to ``max_attempts`` times, and then reported as
:class:`~evals.sample.Lost`, never as a failure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from transformers import PreTrainedTokenizerBase

from agents.engine import RolloutEngine, RolloutError
from agents.episode_request import EpisodeFn, EpisodeRequest
from agents.policy import Policy
from agents.trajectory import Trajectory
from envs.tasks import Task
from evals.sample import EvalSample, Lost, sample_id

__all__ = ["WorkItem", "run_samples"]

_NO_STALENESS_BOUND = 1 << 30  # evaluation never updates weights


@dataclass(frozen=True)
class WorkItem:
    """One sample to play: sample ``sample_index`` of ``task``."""

    task: Task
    sample_index: int

    @property
    def id(self) -> str:
        """See :func:`evals.sample.sample_id`."""
        return sample_id(self.task.key, self.sample_index)


class _Work:
    """The engine's prompt source: every work item as a unit of its own, retried when lost.

    The engine counts samples per prompt key; each attempt gets a key of its own so the engine
    keeps no count, and the episode function is handed the item's real task and index.
    """

    def __init__(
        self,
        items: Sequence[WorkItem],
        tokenizer: PreTrainedTokenizerBase,
        max_attempts: int,
        on_sample: Callable[[EvalSample], None],
        on_lost: Callable[[Lost], None],
    ) -> None:
        self._queue: deque[tuple[WorkItem, int]] = deque((item, 0) for item in items)
        self._live: dict[str, tuple[WorkItem, int]] = {}  # attempt key -> (item, attempt)
        self._tokenizer = tokenizer
        self._max_attempts = max_attempts
        self._on_sample = on_sample
        self._on_lost = on_lost

    @property
    def unfinished(self) -> bool:
        return bool(self._queue or self._live)

    def item(self, key: str) -> WorkItem:
        return self._live[key][0]

    def take(self) -> Task | None:
        if not self._queue:
            return None
        item, tried = self._queue.popleft()
        attempt = tried + 1
        key = f"{item.id}@{attempt}"
        self._live[key] = (item, attempt)
        return replace(item.task, key=key)

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        item, attempt = self._live.pop(task.key)
        if not trajectories:  # the engine closed with it unfinished
            return
        (traj,) = trajectories
        if not traj.masked:
            response = str(
                self._tokenizer.decode(
                    [t for t, m in zip(traj.response_ids, traj.response_mask, strict=True) if m]
                )
            )
            self._on_sample(EvalSample.from_trajectory(traj, response, attempt))
        elif attempt < self._max_attempts:
            self._queue.appendleft((item, attempt))
        else:
            self._on_lost(Lost(item.task.key, item.sample_index, attempt, _reason(traj)))


def _reason(traj: Trajectory) -> str:
    return f"{traj.termination_reason}: {traj.mask_reason}"[:300]


async def run_samples(
    items: Sequence[WorkItem],
    play: EpisodeFn,
    tokenizer: PreTrainedTokenizerBase,
    *,
    on_sample: Callable[[EvalSample], None],
    on_lost: Callable[[Lost], None],
    policy: Policy | None = None,
    concurrency: int = 8,
    episode_timeout_s: float | None = None,
    max_attempts: int = 3,
) -> None:
    """Play every item; report each as a finished sample or, after ``max_attempts`` masked
    episodes, as lost — in the order they finish.

    Args:
        items: the samples to play.
        play: plays one episode (:func:`agents.episode_fn.episode_fn`).
        tokenizer: decodes the model's own text of each sample (what it answered).
        on_sample / on_lost: called as each item is settled (in the event loop's thread).
        policy: the policy ``play`` samples from.
        concurrency: episodes at once.
        episode_timeout_s: an episode's budget of active seconds (past it: masked, retried).
        max_attempts: plays of a sample before it counts as lost (>= 1).
    """
    if max_attempts < 1 or concurrency < 1:
        raise ValueError("max_attempts and concurrency must be >= 1")
    if not items:
        return
    work = _Work(items, tokenizer, max_attempts, on_sample, on_lost)

    async def play_item(request: EpisodeRequest) -> Trajectory:
        item = work.item(request.task.key)
        return await play(replace(request, task=item.task, sample_index=item.sample_index))

    engine = RolloutEngine(
        play_item,
        work,
        policy=policy,
        episode_timeout_s=episode_timeout_s,
        max_staleness=_NO_STALENESS_BOUND,
        max_concurrency=concurrency,
        max_error_rate=1.0,
        max_masked_share=1.0,
    )
    try:
        while work.unfinished:
            try:
                await engine.next_batch(1, extra=concurrency - 1)
            except RolloutError as exc:
                if exc.batch is None:  # not a masked episode: the engine itself failed
                    raise
                # a masked episode: the source has already settled it (retry or lost)
    finally:
        await engine.close()
