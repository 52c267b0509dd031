"""Engine semantics with scripted episode functions: ordering, carry-over, groups, admission and
staleness, sample indices, the deadline clock, pausing, and loud failures."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agents.engine import Batch, RolloutEngine, RolloutError, TaskCycle
from agents.episode_request import EpisodeRequest
from agents.trajectory import Trajectory
from envs.tasks import Task


def make_tasks(n: int) -> list[Task]:
    return [
        Task(key=f"k{i}", prompt=f"problem {i}", answer=str(i), data_source="test", extra={})
        for i in range(n)
    ]


def traj(
    request: EpisodeRequest,
    tokens: int,
    *,
    masked: bool = False,
    reason: str = "answered",
    mask_reason: str = "",
) -> Trajectory:
    return Trajectory(
        prompt_key=request.task.key,
        episode_id=f"e-{request.task.key}-{request.sample_index}",
        prompt_ids=[1],
        response_ids=[2] * tokens,
        response_mask=[1] * tokens,
        response_logprobs=[-0.5] * tokens,
        reward=0.0 if masked else 1.0,
        score_status="ok",
        grade_detail="",
        turns=1,
        tool_results=[],
        termination_reason=reason,
        masked=masked,
        mask_reason=mask_reason,
        policy_version=request.policy_version,
        group_id=request.group_id,
        sample_index=request.sample_index,
    )


class Scripted:
    """Episode durations by prompt key (seconds); records what was started and returned."""

    def __init__(self, durations: dict[str, float], default: float = 0.01) -> None:
        self.durations = durations
        self.default = default
        self.requests: list[EpisodeRequest] = []
        self.returned: list[Trajectory] = []

    @property
    def started(self) -> list[str]:
        return [r.task.key for r in self.requests]

    async def __call__(self, request: EpisodeRequest) -> Trajectory:
        self.requests.append(request)
        duration = self.durations.get(request.task.key, self.default)
        await asyncio.sleep(duration)
        out = traj(request, tokens=int(duration * 1000))
        self.returned.append(out)
        return out


class RecordingCycle(TaskCycle):
    """A TaskCycle that asserts it never hands out a prompt in flight."""

    def take(self) -> Task | None:
        before = set(self.in_flight)
        task = super().take()
        assert task is None or task.key not in before
        return task

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        assert task.key in self.in_flight
        super().release(task, trajectories)


class InOrder:
    """Hands out tasks in the given order (each once)."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.queue = list(tasks)
        self.released: list[str] = []

    def take(self) -> Task | None:
        return self.queue.pop(0) if self.queue else None

    def release(self, task: Task, trajectories: Sequence[Trajectory]) -> None:
        self.released.append(task.key)


async def test_single_stream_takes_the_first_to_finish_and_carries_the_rest() -> None:
    tasks = make_tasks(6)
    fn = Scripted({"k0": 0.5, "k1": 0.5}, default=0.02)
    engine = RolloutEngine(fn, RecordingCycle(tasks, seed=1), max_staleness=2)
    first = await engine.next_batch(4, extra=2)
    assert sorted(t.prompt_key for t in first.trajectories) == ["k2", "k3", "k4", "k5"]
    assert engine.in_flight == 2  # k0 and k1 carry over, still running
    assert engine.running == 2
    engine.policy_version = 1
    second = await engine.next_batch(4, extra=2)
    # The free prompts restart under version 1 and finish before the slow carried ones.
    assert sorted(t.prompt_key for t in second.trajectories) == ["k2", "k3", "k4", "k5"]
    assert [t.policy_version for t in second.trajectories] == [1, 1, 1, 1]
    await asyncio.sleep(0.6)  # k0 and k1 finish, unclaimed: in flight but no longer running
    assert (engine.in_flight, engine.running) == (2, 0)
    third = await engine.next_batch(2)
    assert sorted(t.prompt_key for t in third.trajectories) == ["k0", "k1"]
    assert [t.policy_version for t in third.trajectories] == [0, 0]  # behaviour version kept
    assert third.stats.carried_in == 2 and third.stats.staleness == [1, 1]
    await engine.close()


async def test_first_batch_is_the_fastest_and_stats_show_the_length_bias() -> None:
    tasks = make_tasks(6)
    durations = {f"k{i}": 0.05 * (i + 1) for i in range(6)}
    fn = Scripted(durations)
    engine = RolloutEngine(fn, RecordingCycle(tasks, seed=0))
    batch = await engine.next_batch(3, extra=3)
    assert sorted(t.prompt_key for t in batch.trajectories) == ["k0", "k1", "k2"]
    nxt = await engine.next_batch(3, extra=0)
    assert sorted(t.prompt_key for t in nxt.trajectories) == ["k3", "k4", "k5"]
    assert nxt.stats.carried_in == 3
    assert min(nxt.stats.lengths_carried) > max(batch.stats.lengths_taken)
    await engine.close()


async def test_prompt_in_flight_is_never_handed_out_twice() -> None:
    tasks = make_tasks(3)
    fn = Scripted({"k0": 0.3}, default=0.01)
    source = RecordingCycle(tasks, seed=3)
    engine = RolloutEngine(fn, source)
    for _ in range(4):
        await engine.next_batch(2, extra=1)
    # k0 is slow: while it ran, it was never started again.
    assert fn.started.count("k0") <= 2
    await engine.close()


class RandomDurations:
    """Random episode durations with stragglers; records every trajectory it returns."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.returned: dict[str, Trajectory] = {}

    async def __call__(self, request: EpisodeRequest) -> Trajectory:
        slow = self.rng.random() < 0.2
        await asyncio.sleep(self.rng.uniform(0.004, 0.012) if slow else self.rng.uniform(0, 0.003))
        out = traj(request, tokens=3)
        out.episode_id = f"{request.task.key}/{request.sample_index}"
        self.returned[out.episode_id] = out
        return out


@pytest.mark.parametrize("group_size", [None, 2])
@pytest.mark.parametrize("max_staleness", [0, 1, 2])
async def test_random_durations_never_duplicate_lose_or_overstale(
    max_staleness: int, group_size: int | None
) -> None:
    """Many batches with random durations: no prompt twice in a batch, nothing finished lost,
    staleness within the bound, and the version advanced once per batch."""
    fn = RandomDurations(seed=max_staleness)
    source = RecordingCycle(make_tasks(6), seed=4)
    engine = RolloutEngine(fn, source, max_staleness=max_staleness)
    delivered: list[str] = []
    batches: list[Batch] = []
    for _ in range(150):
        if group_size is None:
            batch = await engine.next_batch(3, extra=2)
        else:
            batch = await engine.next_group_batch(1, group_size, groups_in_flight=2)
        keys = [t.prompt_key for t in batch.trajectories]
        assert len(set(keys)) == len(keys) // (group_size or 1), keys
        assert all(
            batch.policy_version - t.policy_version <= max_staleness for t in batch.trajectories
        )
        batches.append(batch)
        delivered.extend(t.episode_id for t in batch.trajectories)
        engine.policy_version += 1
    assert all(max(b.stats.staleness) <= max_staleness for b in batches)
    assert not any(b.stats.over_bound for b in batches)
    assert len(delivered) == len(set(delivered))
    # Every finished episode was handed out, or is still in flight with its prompt.
    waiting = set(fn.returned) - set(delivered)
    assert len(waiting) <= engine.in_flight
    assert {fn.returned[e].prompt_key for e in waiting} <= source.in_flight
    await engine.close()
    assert not source.in_flight


async def test_admission_keeps_the_staleness_bound_and_waits_for_due_episodes() -> None:
    tasks = make_tasks(8)
    fn = Scripted({"k0": 0.3}, default=0.01)
    engine = RolloutEngine(fn, InOrder(tasks), max_staleness=1)
    first = await engine.next_batch(2, extra=10)
    # (η + 1)·B = 4 admitted, not B + extra = 12.
    assert len(fn.requests) == 4 and engine.in_flight == 2
    assert "k0" not in [t.prompt_key for t in first.trajectories]
    engine.policy_version = 1
    second = await engine.next_batch(2, extra=10)
    # k0 (admitted at version 0) is due at version 1: the batch waits for it.
    assert "k0" in [t.prompt_key for t in second.trajectories]
    assert second.stats.staleness.count(1) >= 1 and max(second.stats.staleness) == 1
    await engine.close()


async def test_group_mode_emits_only_complete_groups() -> None:
    tasks = make_tasks(6)
    durations = {"k0": 0.4}
    fn = Scripted(durations, default=0.02)
    engine = RolloutEngine(fn, RecordingCycle(tasks, seed=2))
    batch = await engine.next_group_batch(groups=2, group_size=4, groups_in_flight=3)
    groups: dict[str | None, list[Trajectory]] = {}
    for t in batch.trajectories:
        groups.setdefault(t.group_id, []).append(t)
    assert len(groups) == 2 and all(len(g) == 4 for g in groups.values())
    assert all(len({t.prompt_key for t in g}) == 1 for g in groups.values())
    await engine.close()


async def test_group_mode_carries_groups_over_and_counts_them() -> None:
    tasks = make_tasks(4)
    fn = Scripted({"k0": 0.2}, default=0.01)
    engine = RolloutEngine(fn, InOrder(tasks), max_staleness=1)
    first = await engine.next_group_batch(groups=1, group_size=2, groups_in_flight=2)
    assert {t.prompt_key for t in first.trajectories} == {"k1"}
    second = await engine.next_group_batch(groups=1, group_size=2, groups_in_flight=1)
    assert {t.prompt_key for t in second.trajectories} == {"k0"}
    assert second.stats.carried_in == 2 and second.stats.lengths_carried == [200, 200]
    await engine.close()


async def test_sample_indices_count_samples_per_prompt_and_resume() -> None:
    tasks = make_tasks(2)
    fn = Scripted({}, default=0.001)
    engine = RolloutEngine(fn, TaskCycle(tasks, seed=0))
    for _ in range(3):
        await engine.next_group_batch(groups=2, group_size=3, groups_in_flight=2)
    by_key: dict[str, list[int]] = {}
    for request in fn.requests:
        by_key.setdefault(request.task.key, []).append(request.sample_index)
    # Each prompt's samples are 0, 1, 2, ... in order; group members are consecutive.
    assert {k: sorted(v) for k, v in by_key.items()} == {"k0": list(range(9)), "k1": list(range(9))}
    state = engine.state_dict()
    await engine.close()
    resumed_fn = Scripted({}, default=0.001)
    resumed = RolloutEngine(resumed_fn, TaskCycle(tasks, seed=0))
    resumed.load_state_dict(state)
    await resumed.next_batch(2)
    assert sorted(r.sample_index for r in resumed_fn.requests) == [9, 9]
    await resumed.close()


async def test_close_releases_every_prompt_in_flight() -> None:
    tasks = make_tasks(5)
    fn = Scripted({"k0": 5.0, "k1": 5.0}, default=0.01)
    source = RecordingCycle(tasks, seed=0)
    engine = RolloutEngine(fn, source, max_staleness=2)
    await engine.next_batch(2, extra=3)
    assert source.in_flight  # running and finished-but-not-taken episodes hold their prompts
    await engine.close()
    assert not source.in_flight and engine.in_flight == 0


async def test_watchdog_backstop_masks_an_episode_that_ignores_its_deadline() -> None:
    tasks = make_tasks(2)

    async def stuck(request: EpisodeRequest) -> Trajectory:
        assert request.deadline is not None
        if request.task.key == "k0":
            await asyncio.sleep(3600)
        return traj(request, 3)

    engine = RolloutEngine(
        stuck,
        TaskCycle(tasks),
        episode_timeout_s=0.1,
        watchdog_grace_s=0.1,
        max_masked_share=0.5,
    )
    batch = await asyncio.wait_for(engine.next_batch(2), 5)
    by_key = {t.prompt_key: t for t in batch.trajectories}
    assert by_key["k0"].masked and by_key["k0"].termination_reason == "watchdog"
    assert not by_key["k1"].masked
    assert batch.stats.watchdog == 1 and batch.stats.masked == 1
    await engine.close()


async def test_deadline_counts_neither_the_learner_nor_a_pause() -> None:
    """An episode runs 0.6 s of wall time with a 0.3 s deadline, but most of that wall time the
    learner spends between batch calls or the engine is paused: it is not cut."""
    tasks = make_tasks(2)
    fn = Scripted({"k0": 0.6}, default=0.01)
    engine = RolloutEngine(
        fn, InOrder(tasks), episode_timeout_s=0.3, watchdog_grace_s=0.01, max_staleness=1
    )
    first = await engine.next_batch(1, extra=1)
    assert [t.prompt_key for t in first.trajectories] == ["k1"]
    active = engine.active_time_s
    await asyncio.sleep(0.3)  # the learner trains: the clock stands still
    assert engine.active_time_s == active
    await engine.pause()
    waiting = asyncio.ensure_future(engine.next_batch(1))
    await asyncio.sleep(0.2)
    assert engine.active_time_s == active and not waiting.done()
    engine.resume()
    second = await waiting
    assert [t.prompt_key for t in second.trajectories] == ["k0"]
    assert not second.trajectories[0].masked
    assert engine.active_time_s - active < 0.3
    await engine.close()


class GatedPolicy:
    """A scripted policy: each decode step takes 10 ms and waits while paused."""

    def __init__(self) -> None:
        self.version = 0
        self.max_context_tokens: int | None = None
        self.steps = 0
        self._open = asyncio.Event()
        self._open.set()

    async def step(self) -> None:
        await self._open.wait()
        await asyncio.sleep(0.01)
        self.steps += 1

    async def pause(self) -> None:
        self._open.clear()
        await asyncio.sleep(0.02)  # a step in progress ends

    def resume(self) -> None:
        self._open.set()

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        self.version = version


async def test_pause_holds_decoding_and_admission_and_episodes_continue_after() -> None:
    policy = GatedPolicy()
    started: list[str] = []

    async def episode(request: EpisodeRequest) -> Trajectory:
        started.append(request.task.key)
        for _ in range(10):
            await policy.step()
        return traj(request, 10)

    engine = RolloutEngine(episode, InOrder(make_tasks(6)), policy=policy, max_staleness=2)
    waiting = asyncio.ensure_future(engine.next_batch(2, extra=1))
    await asyncio.sleep(0.03)
    await engine.pause()
    steps, count = policy.steps, len(started)
    await asyncio.sleep(0.1)
    assert policy.steps == steps and not waiting.done()
    await policy.update_weights({}, 1)
    engine.resume()
    batch = await waiting
    assert len(batch.trajectories) == 2 and len(started) == count
    assert engine.policy_version == 1
    with pytest.raises(AttributeError, match="update_weights"):
        engine.policy_version = 2
    await engine.close()


async def test_errors_are_masked_and_too_many_stop_the_run() -> None:
    tasks = make_tasks(4)

    async def broken(request: EpisodeRequest) -> Trajectory:
        raise RuntimeError(f"bug on {request.task.key}")

    engine = RolloutEngine(broken, TaskCycle(tasks))
    with pytest.raises(RolloutError, match="bug on") as info:
        await engine.next_batch(2)
    assert info.value.batch is not None and info.value.batch.stats.errors == 2
    await engine.close()


async def test_error_rate_counts_only_the_errors_in_the_taken_batch() -> None:
    tasks = make_tasks(2)

    async def one_breaks(request: EpisodeRequest) -> Trajectory:
        if request.task.key == "k1":
            raise RuntimeError("bug on k1")
        return traj(request, 3)

    engine = RolloutEngine(one_breaks, InOrder(tasks), max_error_rate=0.5)
    # Both episodes end at once; the batch of one takes k0, whose batch holds no error.
    batch = await engine.next_batch(1, extra=1)
    assert [t.prompt_key for t in batch.trajectories] == ["k0"] and batch.stats.errors == 0
    with pytest.raises(RolloutError, match="1 of 1 episodes in the batch raised"):
        await engine.next_batch(1)
    await engine.close()


def masking_fn(masked_keys: set[str]) -> Any:
    async def episode(request: EpisodeRequest) -> Trajectory:
        if request.task.key in masked_keys:
            return traj(
                request,
                0,
                masked=True,
                reason="masked",
                mask_reason="policy backend failed: Generator on the wrong device",
            )
        return traj(request, 3)

    return episode


async def test_masked_share_over_the_limit_is_a_loud_error_naming_the_reason() -> None:
    tasks = make_tasks(4)
    engine = RolloutEngine(masking_fn({"k0", "k1", "k2"}), InOrder(tasks))
    with pytest.raises(RolloutError, match=r"3 of 4 .* masked .*3x masked: policy backend failed"):
        await engine.next_batch(4)
    await engine.close()
    engine = RolloutEngine(masking_fn({"k0"}), InOrder(tasks))
    batch: Batch = await engine.next_batch(4)
    assert batch.stats.masked == 1
    assert batch.stats.mask_reasons == Counter(
        {"masked: policy backend failed: Generator on the wrong device": 1}
    )
    await engine.close()


async def test_an_all_masked_batch_always_fails() -> None:
    tasks = make_tasks(2)
    engine = RolloutEngine(masking_fn({"k0", "k1"}), InOrder(tasks), max_masked_share=1.0)
    with pytest.raises(RolloutError, match="2 of 2 episodes in the batch are masked"):
        await engine.next_batch(2)
    await engine.close()
