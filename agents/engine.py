"""The rollout engine: many episodes in flight, trajectories out in batches.

Two ways to assemble a training batch from the stream of finished episodes:

* **single-stream** (SPO): keep ``B + extra`` episodes in flight and take the first ``B`` to
  finish. Episodes still running carry over into later batches with their behaviour
  log-probs and the policy versions that sampled them.
* **group** (GRPO): ``G`` episodes per prompt; a group is taken only when all ``G`` have
  finished; the first ``k`` complete groups form the batch, the others carry over.

What a batch takes whole — one episode, or one group — is a *unit* below.

**Prompts.** Prompts come from a :class:`PromptSource`. A prompt is in flight from the moment it
is taken until its unit is handed to the learner in a batch; only then is it released. A
finished episode waiting for a later batch therefore keeps its prompt, so the source cannot hand
the prompt out again meanwhile and no prompt is ever twice in one batch.

**Staleness is bounded by admission, never by dropping work.** With ``max_staleness = η`` and
batches of ``B`` units, the engine starts a new unit only while fewer than ``(η + 1)·B`` units
are outstanding (running, or finished and not yet taken) — AReaL's admission rule; ``extra``
beyond that is not started. A unit admitted at policy version ``u`` is *due* once the current
version reaches ``u + η``: a batch takes every due unit first, waiting for it if it still runs,
then fills up with the units that finished first. If the learner advances the version once per
batch, at most ``B`` units are ever due at once, so every trajectory in a batch taken at version
``V`` has staleness ``V − (its oldest token's version) ≤ η``. Nothing finished is dropped. (A
learner that advances several versions per batch can exceed the bound; such episodes still go to
the learner, oldest first, counted in :attr:`BatchStats.over_bound`.)

**Sample indices.** Every episode is the k-th sample of its prompt in the run (group members get
consecutive indices); the index reaches the episode function in its :class:`EpisodeRequest` and
fixes its sampling seeds (:mod:`agents.seeds`). :meth:`RolloutEngine.state_dict` holds the counts
so that a resumed run continues them.

**Weight updates.** ``await engine.pause()``, ``await policy.update_weights(state, version)``,
``engine.resume()``: while paused no new decode step starts and no episode is admitted; running
episodes continue after the resume (see :mod:`agents.policy`).

**The deadline clock.** ``episode_timeout_s`` bounds an episode's *own work*, counted on an
:class:`~agents.clock.ActiveClock` that runs only while a ``next_batch`` / ``next_group_batch``
call is being served and the engine is not paused. Each episode's budget starts when it holds a
concurrency slot. It counts everything the episode does while the clock runs — generation
(including waiting inside the policy's batcher), tool calls, grading — and nothing else: not
the wait for a concurrency slot, not a pause for a weight update, not the learner's time between
batch calls. An episode past its deadline ends with reason "watchdog" and is masked (a deadline
is a backstop against infrastructure stalls: token budgets and cell timeouts already bound what
the model can cause); an episode function that ignores its deadline is cancelled
``watchdog_grace_s`` active seconds later and masked the same way.

**Failures are loud.** An episode function that raises yields a masked trajectory with reason
"error"; a batch whose share of such episodes exceeds ``max_error_rate``, whose masked share
exceeds ``max_masked_share``, or that is entirely masked raises :class:`RolloutError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import statistics
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agents.clock import ActiveClock, Deadline
from agents.episode_request import EpisodeFn, EpisodeRequest
from agents.policy import Policy
from agents.trajectory import EpisodeTimings, Trajectory
from envs.core import TerminationReason
from envs.tasks import Task

log = logging.getLogger(__name__)

_REASON_CHARS = 160


class RolloutError(RuntimeError):
    """The rollout cannot go on: a batch is mostly failures, or no prompt is left to start.

    Attributes:
        batch: the batch that failed the checks, if one was assembled (its prompts have been
            released to the source).
    """

    def __init__(self, message: str, batch: Batch | None = None) -> None:
        super().__init__(message)
        self.batch = batch


class PromptSource(Protocol):
    """Hands out prompts; never one that is still in flight."""

    def take(self) -> Task | None:
        """The next prompt to start, now marked in flight; ``None`` if none is available."""
        ...

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        """``task`` is no longer in flight.

        Called when its trajectories are handed to the learner in a batch (``trajectories``
        are they), or with none when the engine closes before handing them out.
        """
        ...


class TaskCycle:
    """Cycles through tasks in seeded shuffled epochs, skipping prompts in flight."""

    def __init__(self, tasks: Sequence[Task], seed: int = 0) -> None:
        if not tasks:
            raise ValueError("TaskCycle needs at least one task")
        self.tasks = list(tasks)
        self._rng = np.random.default_rng(seed)
        self._order: deque[int] = deque()
        self.in_flight: set[str] = set()

    def take(self) -> Task | None:
        """See :meth:`PromptSource.take`."""
        for _ in range(2 * len(self.tasks)):
            if not self._order:
                self._order.extend(int(i) for i in self._rng.permutation(len(self.tasks)))
            task = self.tasks[self._order.popleft()]
            if task.key not in self.in_flight:
                self.in_flight.add(task.key)
                return task
        return None

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        """See :meth:`PromptSource.release`."""
        self.in_flight.discard(task.key)


@dataclass
class BatchStats:
    """Telemetry of one assembled batch.

    Attributes:
        size: trajectories in the batch.
        wall_s: wall time of the batch call.
        in_flight_after: episodes started and not yet handed out, after this batch.
        masked: masked trajectories (see ``mask_reasons``).
        errors: trajectories of episode functions that raised.
        carried_in: trajectories of units started before the previous batch was assembled.
        watchdog: trajectories ended by the deadline.
        termination: trajectories per termination reason.
        mask_reasons: masked trajectories per reason.
        mean_timings: mean of each :class:`EpisodeTimings` field.
        tokens_per_turn: model tokens per model turn.
        lengths_taken: model-token lengths of the batch's episodes.
        lengths_carried: those of its carried-in episodes. Taking the first ``B`` to finish
            favours short episodes; these make that bias visible.
        staleness: each trajectory's staleness (current version minus its oldest token's).
        over_bound: trajectories staler than ``max_staleness`` (only when the learner advances
            the version more than once per batch).
    """

    size: int
    wall_s: float
    in_flight_after: int
    masked: int
    errors: int
    carried_in: int
    watchdog: int
    termination: dict[str, int]
    mask_reasons: dict[str, int]
    mean_timings: dict[str, float]
    tokens_per_turn: float
    lengths_taken: list[int] = field(default_factory=list)
    lengths_carried: list[int] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    over_bound: int = 0


@dataclass
class Batch:
    """Trajectories for one learner step, with telemetry.

    Attributes:
        trajectories: single-stream: in the order chosen (due units first, then by finish);
            group mode: each group's members together, in member order.
        stats: see :class:`BatchStats`.
        policy_version: the policy version when the batch was assembled.
    """

    trajectories: list[Trajectory]
    stats: BatchStats
    policy_version: int


class _WatchdogExpired(Exception):
    """An episode function ran past its deadline and the grace after it."""


@dataclass(eq=False)
class _Unit:
    """What a batch takes whole: one single-stream episode, or one group."""

    task: Task
    version: int  # the policy version at admission
    batch_index: int  # batches assembled before it started
    first_sample: int
    gid: str | None
    trajectories: list[Trajectory | None]
    handles: list[asyncio.Task[Trajectory]] = field(default_factory=list)
    pending: int = 0
    finish_order: int | None = None  # set when its last episode finishes

    @property
    def finished(self) -> bool:
        return self.finish_order is not None

    def done(self) -> list[Trajectory]:
        assert all(t is not None for t in self.trajectories), "the unit has not finished"
        return [t for t in self.trajectories if t is not None]


class RolloutEngine:
    """Runs episodes concurrently and assembles batches from whichever finish first.

    See the module docstring for the rules (prompts in flight, staleness by admission, sample
    indices, weight updates, the deadline clock, failures).

    Args:
        episode_fn: plays one episode (see :data:`~agents.episode_request.EpisodeFn`).
        source: the prompt source.
        policy: the policy the episodes sample from; :meth:`pause` pauses it. Without one,
            :meth:`pause` stops only admission and the deadline clock, and
            :attr:`policy_version` is set by hand.
        episode_timeout_s: active-time budget of one episode; ``None``: none.
        max_staleness: ``η``: policy versions a trajectory may lag the version of the batch
            that takes it.
        max_concurrency: episodes running at once (the rest wait for a slot, counted as queue
            wait); ``None``: as many as are in flight.
        max_error_rate: share of a batch that may be episodes that raised.
        max_masked_share: share of a batch that may be masked (an all-masked batch always
            fails).
        watchdog_grace_s: active seconds past its deadline an episode function that ignores
            the deadline may run before it is cancelled.
    """

    def __init__(
        self,
        episode_fn: EpisodeFn,
        source: PromptSource,
        *,
        policy: Policy | None = None,
        episode_timeout_s: float | None = None,
        max_staleness: int = 1,
        max_concurrency: int | None = None,
        max_error_rate: float = 0.5,
        max_masked_share: float = 0.5,
        watchdog_grace_s: float = 30.0,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        if episode_timeout_s is not None and not episode_timeout_s > 0:
            raise ValueError(f"episode_timeout_s must be > 0 or None, got {episode_timeout_s}")
        for name, share in (
            ("max_error_rate", max_error_rate),
            ("max_masked_share", max_masked_share),
        ):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1 or None, got {max_concurrency}")
        self.episode_fn = episode_fn
        self.source = source
        self.policy = policy
        self.episode_timeout_s = episode_timeout_s
        self.max_staleness = max_staleness
        self.max_error_rate = max_error_rate
        self.max_masked_share = max_masked_share
        self.watchdog_grace_s = watchdog_grace_s
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._clock = ActiveClock()
        self._serving = 0
        self._paused = False
        self._version = 0
        self._units: list[_Unit] = []
        self._grouped = False
        self._samples: Counter[str] = Counter()
        self._finished = 0
        self._batch_index = 0
        self._wake = asyncio.Event()

    # -- state --------------------------------------------------------------------------------

    @property
    def policy_version(self) -> int:
        """The current policy version: the policy's, or the one set by hand without a policy."""
        return self.policy.version if self.policy is not None else self._version

    @policy_version.setter
    def policy_version(self, version: int) -> None:
        if self.policy is not None:
            raise AttributeError(
                "the engine reads the version from its policy: use policy.update_weights"
            )
        self._version = version

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in effect."""
        return self._paused

    @property
    def active_time_s(self) -> float:
        """Seconds the deadline clock has run (see the module docstring)."""
        return self._clock.now()

    @property
    def in_flight(self) -> int:
        """Episodes started and not yet handed out in a batch."""
        return sum(len(u.trajectories) for u in self._units)

    @property
    def running(self) -> int:
        """Episodes started and not yet finished (in flight minus those waiting for a batch)."""
        return sum(u.pending for u in self._units)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the sample indices: samples started per prompt."""
        return {"sample_counts": dict(self._samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (before any episode is started)."""
        if self._units:
            raise RuntimeError("load_state_dict needs an engine with nothing in flight")
        self._samples = Counter({str(k): int(v) for k, v in state["sample_counts"].items()})

    # -- batches ------------------------------------------------------------------------------

    async def next_batch(self, batch_size: int, extra: int = 0) -> Batch:
        """Single-stream: the first ``batch_size`` episodes to finish of ``batch_size + extra``
        in flight (fewer if the staleness bound allows fewer), due episodes first.

        Raises:
            RolloutError: the batch fails the error or masking checks, or the prompt source
                ran dry before the batch could be filled.
        """
        if batch_size < 1 or extra < 0:
            raise ValueError(f"need batch_size >= 1 and extra >= 0, got {batch_size}, {extra}")
        return await self._next(batch_size, batch_size + extra, 1, grouped=False)

    async def next_group_batch(self, groups: int, group_size: int, groups_in_flight: int) -> Batch:
        """Group mode: the first ``groups`` complete groups of ``group_size`` out of
        ``groups_in_flight`` groups running (fewer if the staleness bound allows fewer), due
        groups first.

        Raises:
            RolloutError: as :meth:`next_batch`.
        """
        if not 1 <= groups <= groups_in_flight or group_size < 1:
            raise ValueError("need 1 <= groups <= groups_in_flight and group_size >= 1")
        return await self._next(groups, groups_in_flight, group_size, grouped=True)

    # -- the weight-update protocol -----------------------------------------------------------

    async def pause(self) -> None:
        """Stop admitting episodes and the deadline clock, then wait until the policy has
        paused: no new decode step starts until :meth:`resume`."""
        self._paused = True
        self._sync_clock()
        if self.policy is not None:
            await self.policy.pause()

    def resume(self) -> None:
        """Undo :meth:`pause`: decoding, admission and the deadline clock go on."""
        self._paused = False
        if self.policy is not None:
            self.policy.resume()
        self._sync_clock()
        self._wake.set()

    async def close(self) -> None:
        """Cancel every running episode, wait for them to end, and release every prompt in
        flight (episodes finished but not handed out are discarded)."""
        units, self._units = self._units, []
        handles = [h for u in units for h in u.handles if not h.done()]
        for handle in handles:
            handle.cancel()
        await asyncio.gather(*handles, return_exceptions=True)
        for unit in units:
            self.source.release(unit.task, [])

    # -- internals ----------------------------------------------------------------------------

    async def _next(self, count: int, window: int, size: int, *, grouped: bool) -> Batch:
        if self._units and (self._grouped != grouped or len(self._units[0].trajectories) != size):
            raise ValueError("episodes of another batch mode or group size are still in flight")
        self._grouped = grouped
        t0 = time.monotonic()
        self._serving += 1
        self._sync_clock()
        try:
            while True:
                self._wake.clear()
                self._admit(count, window, size, grouped)
                chosen = self._choose(count)
                if chosen is not None:
                    break
                if not self._paused and not any(u.pending for u in self._units):
                    finished = sum(u.finished for u in self._units)
                    raise RolloutError(
                        f"cannot fill a batch of {count}: {finished} finished, none running, "
                        "and the prompt source has no prompt to start"
                    )
                await self._wake.wait()
        finally:
            self._serving -= 1
            self._sync_clock()
        return self._deliver(chosen, t0)

    def _sync_clock(self) -> None:
        if self._serving and not self._paused:
            self._clock.start()
        else:
            self._clock.stop()

    def _admit(self, count: int, window: int, size: int, grouped: bool) -> None:
        limit = min(window, (self.max_staleness + 1) * count)
        while not self._paused and len(self._units) < limit:
            task = self.source.take()
            if task is None:
                return
            self._start(task, size, grouped)

    def _start(self, task: Task, size: int, grouped: bool) -> None:
        first = self._samples[task.key]
        self._samples[task.key] += size
        unit = _Unit(
            task=task,
            version=self.policy_version,
            batch_index=self._batch_index,
            first_sample=first,
            gid=uuid.uuid4().hex[:12] if grouped else None,
            trajectories=[None] * size,
        )
        for member in range(size):
            handle = asyncio.ensure_future(self._play(unit, member))
            handle.add_done_callback(functools.partial(self._on_done, unit, member))
            unit.handles.append(handle)
            unit.pending += 1
        self._units.append(unit)

    def _choose(self, count: int) -> list[_Unit] | None:
        """The units of the next batch, or ``None`` if it cannot be assembled yet."""
        version = self.policy_version
        due = sorted(
            (u for u in self._units if version - u.version >= self.max_staleness),
            key=lambda u: (u.version, u.finish_order if u.finish_order is not None else np.inf),
        )[:count]
        if not all(u.finished for u in due):
            return None
        taken = set(due)
        rest = sorted(
            (u for u in self._units if u.finished and u not in taken),
            key=lambda u: u.finish_order if u.finish_order is not None else np.inf,
        )
        chosen = due + rest[: count - len(due)]
        return chosen if len(chosen) == count else None

    async def _play(self, unit: _Unit, member: int) -> Trajectory:
        scheduled = time.monotonic()
        if self._slots is not None:
            await self._slots.acquire()
        queued = time.monotonic() - scheduled
        try:
            timeout = self.episode_timeout_s
            deadline = Deadline(timeout, self._clock) if timeout is not None else None
            request = EpisodeRequest(
                task=unit.task,
                sample_index=unit.first_sample + member,
                policy_version=unit.version,
                deadline=deadline,
                group_id=unit.gid,
            )
            traj = await self._backstop(asyncio.ensure_future(self.episode_fn(request)), deadline)
        finally:
            if self._slots is not None:
                self._slots.release()
        traj.timings.queue_wait_s = queued
        return traj

    async def _backstop(
        self, play: asyncio.Future[Trajectory], deadline: Deadline | None
    ) -> Trajectory:
        """Await ``play``; cancel it once it runs ``watchdog_grace_s`` past ``deadline``."""
        try:
            if deadline is None:
                return await play
            while True:
                left = deadline.remaining() + self.watchdog_grace_s
                if left <= 0:
                    break
                done, _ = await asyncio.wait({play}, timeout=left)
                if done:
                    return play.result()
        finally:
            if not play.done():
                play.cancel()
                await asyncio.wait({play})
        if not play.cancelled() and play.exception() is None:
            return play.result()  # it finished as it was being cancelled
        raise _WatchdogExpired(
            f"the episode ignored its {deadline.budget_s:g} s deadline for another "
            f"{self.watchdog_grace_s:g} s"
        )

    def _on_done(self, unit: _Unit, member: int, handle: asyncio.Task[Trajectory]) -> None:
        unit.trajectories[member] = self._outcome(unit, member, handle)
        unit.pending -= 1
        if unit.pending == 0:
            unit.finish_order = self._finished
            self._finished += 1
        self._wake.set()

    def _outcome(self, unit: _Unit, member: int, handle: asyncio.Task[Trajectory]) -> Trajectory:
        exc = handle.exception() if not handle.cancelled() else asyncio.CancelledError()
        if exc is None:
            return handle.result()
        reason: TerminationReason
        if isinstance(exc, _WatchdogExpired):
            reason = "watchdog"
        elif isinstance(exc, asyncio.CancelledError):
            reason = "cancelled"
        else:
            reason = "error"
            log.error("episode on %s raised", unit.task.key, exc_info=exc)
        return Trajectory(
            prompt_key=unit.task.key,
            episode_id=uuid.uuid4().hex[:16],
            prompt_ids=[],
            response_ids=[],
            response_mask=[],
            response_logprobs=[],
            reward=0.0,
            score_status="unscored",
            grade_detail="",
            turns=0,
            tool_results=[],
            termination_reason=reason,
            masked=True,
            mask_reason=f"episode {reason}: {type(exc).__name__}: {exc}",
            policy_version=unit.version,
            timings=EpisodeTimings(),
            data_source=unit.task.data_source,
            group_id=unit.gid,
            answer=unit.task.answer,
            sample_index=unit.first_sample + member,
        )

    def _deliver(self, chosen: list[_Unit], t0: float) -> Batch:
        version = self.policy_version
        trajs: list[Trajectory] = []
        carried: list[Trajectory] = []
        for unit in chosen:
            self._units.remove(unit)
            done = unit.done()
            trajs.extend(done)
            if unit.batch_index < self._batch_index:
                carried.extend(done)
            self.source.release(unit.task, done)
        staleness = [t.staleness(version) for t in trajs]
        over_bound = sum(s > self.max_staleness for s in staleness)
        if over_bound:
            log.warning(
                "%d trajectories are staler than max_staleness=%d: the policy version advanced "
                "more than once per batch",
                over_bound,
                self.max_staleness,
            )
        turns = sum(t.turns for t in trajs)
        masked = [t for t in trajs if t.masked]
        stats = BatchStats(
            size=len(trajs),
            wall_s=time.monotonic() - t0,
            in_flight_after=self.in_flight,
            masked=len(masked),
            errors=sum(t.termination_reason == "error" for t in trajs),
            carried_in=len(carried),
            watchdog=sum(t.termination_reason == "watchdog" for t in trajs),
            termination=dict(Counter(t.termination_reason for t in trajs)),
            mask_reasons=dict(Counter(_mask_reason(t) for t in masked)),
            mean_timings={
                k: statistics.fmean(getattr(t.timings, k) for t in trajs)
                for k in ("queue_wait_s", "llm_s", "sandbox_s", "grader_s", "total_s")
            },
            tokens_per_turn=sum(t.num_model_tokens for t in trajs) / max(turns, 1),
            lengths_taken=[t.num_model_tokens for t in trajs],
            lengths_carried=[t.num_model_tokens for t in carried],
            staleness=staleness,
            over_bound=over_bound,
        )
        self._batch_index += 1
        batch = Batch(trajs, stats, version)
        self._check(batch)
        return batch

    def _check(self, batch: Batch) -> None:
        trajs, stats = batch.trajectories, batch.stats
        if stats.errors / stats.size > self.max_error_rate:
            first = next(t.mask_reason for t in trajs if t.termination_reason == "error")
            raise RolloutError(
                f"{stats.errors} of {stats.size} episodes in the batch raised "
                f"(max_error_rate {self.max_error_rate:g}); first: {first}",
                batch,
            )
        if stats.masked and (
            stats.masked == stats.size or stats.masked / stats.size > self.max_masked_share
        ):
            reasons = "; ".join(
                f"{n}x {reason}" for reason, n in Counter(stats.mask_reasons).most_common()
            )
            raise RolloutError(
                f"{stats.masked} of {stats.size} episodes in the batch are masked "
                f"(max_masked_share {self.max_masked_share:g}): {reasons}",
                batch,
            )


def _mask_reason(traj: Trajectory) -> str:
    return f"{traj.termination_reason}: {traj.mask_reason}"[:_REASON_CHARS]
