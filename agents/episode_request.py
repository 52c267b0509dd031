"""What the rollout engine asks an episode function to play: one typed request per episode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agents.clock import Deadline
from agents.trajectory import Trajectory
from envs.tasks import Task


@dataclass(frozen=True)
class EpisodeRequest:
    """One episode to play.

    Attributes:
        task: what to solve.
        sample_index: which sample of ``task`` this is in the run (0 for its first episode);
            with the run seed and the turn it determines every sampling seed of the episode
            (:func:`agents.seeds.turn_seed`), so a resumed run regenerates the same samples.
        policy_version: the policy version when the episode was admitted; recorded as the
            trajectory's version if it samples no token.
        deadline: the episode's budget of active seconds (see :mod:`agents.clock`); when it
            runs out the episode ends with reason "watchdog" and is masked. ``None``: none.
        group_id: shared by the episodes of one GRPO group; ``None`` in single-stream mode.
    """

    task: Task
    sample_index: int = 0
    policy_version: int = 0
    deadline: Deadline | None = None
    group_id: str | None = None


EpisodeFn = Callable[[EpisodeRequest], Awaitable[Trajectory]]
"""Plays one episode and returns its trajectory (see :func:`agents.episode.run_episode`)."""
