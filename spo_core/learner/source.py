"""The SPO sampler as the rollout engine's prompt source (SPO_SPEC §2 step 1, §6).

The engine asks for one prompt at a time (:meth:`SamplerSource.take`); drawing each one from
the whole dataset would cost O(N) per prompt. Instead the source draws the prompts of a whole
admission wave at once — ``draw_size`` rows without replacement, ∝ the sampler's weights,
excluding every prompt still in flight — and hands them out in draw order. A batch of rows drawn
at once *is* successive sampling without replacement, so this is the same distribution as B
single draws. After the tracker update the learner calls :meth:`SamplerSource.refresh`: rows
drawn under the old weights and not yet handed out are dropped, so every later draw sees the
updated tracker.

Resumption: :meth:`state_dict` holds the sampler's RNG and the prompts in flight. A resumed run
hands those prompts out again before drawing new ones: an episode lost with the old process is
re-run, so no prompt that was drawn is lost and none is ever in flight twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from agents.trajectory import Trajectory
from envs.tasks import Task
from spo_core.sampler import PromptSampler
from spo_core.tracker import ValueTracker


class SamplerSource:
    """A :class:`agents.engine.PromptSource` over a :class:`PromptSampler` and its tracker.

    Args:
        tasks: the training prompts; ``tasks[i]`` must be the tracker's row ``i`` (register the
            tasks' keys in order, as :func:`tracker_for` does).
        tracker: the value tracker whose v̂ weights the draws.
        sampler: the seeded sampler (its config chooses prioritised, Thompson or uniform).
        draw_size: prompts drawn at once when the queue runs dry (the prompts the engine keeps
            in flight: B + extra, or the groups in flight).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        tracker: ValueTracker,
        sampler: PromptSampler,
        draw_size: int,
    ) -> None:
        if draw_size < 1:
            raise ValueError(f"draw_size must be >= 1, got {draw_size}")
        if len(tasks) != len(tracker):
            raise ValueError(f"{len(tasks)} tasks but the tracker holds {len(tracker)} prompts")
        rows = tracker.rows([t.key for t in tasks])
        if not np.array_equal(rows, np.arange(len(tasks))):
            raise ValueError("tasks[i] must be the tracker's row i (register the keys in order)")
        self.tasks = list(tasks)
        self.tracker = tracker
        self.sampler = sampler
        self.draw_size = draw_size
        self._queue: deque[int] = deque()
        self._in_flight: dict[str, int] = {}  # key → row, in the order taken
        self.draws = 0  # batch draws made (each one O(N))

    @property
    def in_flight(self) -> list[str]:
        """Keys of the prompts taken and not yet released, in the order taken."""
        return list(self._in_flight)

    def take(self) -> Task | None:
        """The next prompt, now in flight; ``None`` when every prompt is in flight."""
        while self._queue:
            row = self._queue.popleft()
            task = self.tasks[row]
            if task.key not in self._in_flight:
                self._in_flight[task.key] = row
                return task
        available = len(self.tasks) - len(self._in_flight)
        if available == 0:
            return None
        exclude = np.fromiter(self._in_flight.values(), dtype=np.int64, count=len(self._in_flight))
        drawn = self.sampler.sample(self.tracker, min(self.draw_size, available), exclude)
        self.draws += 1
        self._queue.extend(int(r) for r in drawn)
        return self.take()

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        """``task`` is no longer in flight (its trajectories went to the learner, or none)."""
        self._in_flight.pop(task.key, None)

    def refresh(self) -> None:
        """Forget prompts drawn but not handed out: the tracker changed their weights."""
        self._queue.clear()

    def state_dict(self) -> dict[str, Any]:
        """The sampler's RNG, and the rows in flight followed by those drawn and not handed out
        (a resumed run hands them out first)."""
        return {
            "sampler": self.sampler.state_dict(),
            "pending": [*self._in_flight.values(), *self._queue],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a source with nothing in flight."""
        if self._in_flight:
            raise RuntimeError("load_state_dict needs a source with nothing in flight")
        pending = [int(r) for r in state["pending"]]
        if any(not 0 <= r < len(self.tasks) for r in pending):
            raise ValueError("the saved source lists prompts outside this task set")
        self.sampler.load_state_dict(state["sampler"])
        self._queue = deque(pending)


def tracker_for(tasks: Sequence[Task], tracker: ValueTracker) -> ValueTracker:
    """Register ``tasks``' keys in ``tracker`` in order; fails on a duplicate key."""
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("the task set holds the same prompt twice (duplicate keys)")
    if len(tracker):
        raise ValueError("tracker_for needs an empty tracker")
    tracker.add(keys)
    return tracker
