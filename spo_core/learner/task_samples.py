"""Every task of a set sampled exactly ``k`` times through the rollout engine.

Offline values and held-out evaluation both need a fixed number of episodes per prompt, each
prompt once. The engine runs them in group mode — single-stream mode keeps a prompt to one
episode in flight — from a prompt source that hands out each task once, so nothing is sampled
twice or skipped. The policy version does not move during such a pass, so the staleness bound
is set wide enough never to hold admission back.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agents.engine import RolloutEngine, RolloutError
from agents.episode_request import EpisodeFn
from agents.policy import Policy
from agents.trajectory import Trajectory
from envs.tasks import Task

__all__ = ["SamplingProgress", "sample_each_task"]

_MIN_JUDGED = 32  # episodes finished before the masked share can fail a pass


@dataclass(frozen=True)
class SamplingProgress:
    """How far a pass over a task set has come.

    Attributes:
        prompts_done: prompts whose ``k`` episodes have all finished.
        prompts_total: prompts in the pass.
        episodes: episodes finished (masked ones included).
        masked: masked episodes among them.
        elapsed_s: wall seconds since the pass started.
    """

    prompts_done: int
    prompts_total: int
    episodes: int
    masked: int
    elapsed_s: float


ProgressCallback = Callable[[SamplingProgress], None]


class _EachOnce:
    """A prompt source that hands out every task exactly once."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self._pending = list(reversed(tasks))

    def take(self) -> Task | None:
        return self._pending.pop() if self._pending else None

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        return None


async def sample_each_task(
    episode_fn: EpisodeFn,
    tasks: Sequence[Task],
    k: int,
    *,
    policy: Policy | None = None,
    episodes_in_flight: int = 32,
    episode_timeout_s: float | None = None,
    max_masked_share: float = 0.5,
    on_progress: ProgressCallback | None = None,
) -> dict[str, list[Trajectory]]:
    """Play ``k`` episodes of every task; their trajectories by task key, in task order.

    Masked trajectories are included (callers leave them out of their figures). Episodes get
    sample indices ``0 … k−1`` of their prompt, so the same call with the same sampling seed
    samples the same episodes.

    Args:
        episode_fn: plays one episode (:func:`agents.episode_fn.episode_fn`).
        tasks: the prompts, each key once.
        k: episodes per prompt.
        policy: the policy the episodes sample from (its version is recorded).
        episodes_in_flight: about how many episodes run at once (whole groups of ``k``, at
            least one group).
        episode_timeout_s: active-time budget of one episode (see :class:`RolloutEngine`).
        max_masked_share: share of the episodes that may be masked; judged once
            ``min(len(tasks)·k, 32)`` episodes have finished and after every prompt since, it
            fails the pass with :class:`~agents.engine.RolloutError` when exceeded.
        on_progress: called after each prompt's episodes have finished.

    Raises:
        ValueError: ``k < 1``, no tasks, or a task key listed twice.
        RolloutError: too many episodes were masked (see ``max_masked_share``).
    """
    if k < 1:
        raise ValueError(f"need k >= 1 samples per prompt, got {k}")
    if not tasks:
        raise ValueError("no tasks to sample")
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("the task set lists a prompt key twice")
    groups_in_flight = max(1, min(len(tasks), episodes_in_flight // k))
    # The engine's masking checks judge one batch; here a batch is one group, possibly of one
    # episode, so the share is judged over the pass instead (below).
    engine = RolloutEngine(
        episode_fn,
        _EachOnce(tasks),
        policy=policy,
        episode_timeout_s=episode_timeout_s,
        max_staleness=groups_in_flight,
        max_error_rate=1.0,
        max_masked_share=1.0,
    )
    out: dict[str, list[Trajectory]] = {}
    episodes = masked = 0
    reasons: Counter[str] = Counter()
    judge_after = min(len(tasks) * k, _MIN_JUDGED)
    t0 = time.monotonic()
    try:
        while len(out) < len(tasks):
            try:
                batch = await engine.next_group_batch(1, k, groups_in_flight)
            except RolloutError as exc:  # an all-masked group: counted like any other
                if exc.batch is None:
                    raise
                batch = exc.batch
            for traj in batch.trajectories:
                out.setdefault(traj.prompt_key, []).append(traj)
            episodes += batch.stats.size
            masked += batch.stats.masked
            reasons.update(batch.stats.mask_reasons)
            if episodes >= judge_after and masked > max_masked_share * episodes:
                summary = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
                raise RolloutError(
                    f"{masked} of {episodes} episodes masked "
                    f"(max_masked_share {max_masked_share:g}): {summary}"
                )
            if on_progress is not None:
                on_progress(
                    SamplingProgress(len(out), len(tasks), episodes, masked, time.monotonic() - t0)
                )
    finally:
        await engine.close()
    return {key: out[key] for key in keys}
