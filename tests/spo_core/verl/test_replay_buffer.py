"""SPOReplayBuffer against a real TransferQueue on Ray: a batch is the first B finished,
unmasked trajectories; masked and failed episodes never count and are replaced."""

from __future__ import annotations

import threading
import time

import pytest

from spo_core.verl.replay_buffer import (
    ReplayBufferConfigError,
    ReplayBufferStalled,
    SPOReplayBuffer,
)
from tests.spo_core.verl.queue_rows import (
    TRAIN,
    Episode,
    listed,
    put_episode,
    put_prompt,
    token_mask,
)

pytestmark = pytest.mark.usefixtures("clean_queue")


class Refills:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, n: int) -> int:
        self.calls.append(n)
        return n


def buffer(refill: Refills, strategy: str = "wait", threshold: int | None = 4) -> SPOReplayBuffer:
    return SPOReplayBuffer(
        trainer_mode="spo",
        trainer_config={},
        max_off_policy_threshold=threshold,
        max_off_policy_strategy=strategy,
        sampler_kwargs={},
        poll_interval=0.05,
        refill_fn=refill,
    )


def test_batch_is_the_first_finished_unmasked_in_finishing_order() -> None:
    # Dispatch order p0..p5; finishing order differs; p1 (finished first) is masked.
    finished_at = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0]
    for i, t in enumerate(finished_at):
        put_episode(Episode(f"p{i}", f"key{i}", 1.0, token_mask(6), masked=(i == 1), finished_at=t))
    put_prompt("failed", "key-f", "failure")  # the agent loop raised: no trajectory
    put_prompt("running", "key-r", "running")
    refill = Refills()

    batch, metrics = buffer(refill).sample(global_steps=1, partition_id=TRAIN, batch_size=3)

    assert sorted(batch.keys) == ["p2_0_0", "p3_0_0", "p4_0_0"]  # finished at 4, 2, 3
    assert sum(refill.calls) == 2  # one fresh prompt for the failure, one for the masked episode
    assert metrics["training/spo/masked_replaced"] == 1
    left = listed()
    assert "p1" not in left and "p1_0_0" not in left  # masked: gone, never trained
    assert "failed" not in left
    # The unused finished ones wait for the next step; the running prompt is untouched.
    assert {"p0", "p0_0_0", "p5", "p5_0_0", "running"} <= set(left)
    assert not {"p2", "p3", "p4"} & set(left)  # chosen prompts leave the in-flight set


def test_masked_episodes_never_count_toward_b() -> None:
    for i in range(3):
        put_episode(Episode(f"m{i}", f"mk{i}", 0.0, token_mask(4), masked=True, finished_at=i))
    put_episode(Episode("ok", "okk", 1.0, token_mask(4), finished_at=9.0))
    refill = Refills()
    done: list[object] = []

    def sample() -> None:
        done.append(buffer(refill).sample(global_steps=1, partition_id=TRAIN, batch_size=2))

    worker = threading.Thread(target=sample, daemon=True)
    worker.start()
    time.sleep(1.0)
    assert not done, "two masked episodes must not complete a batch of 2"
    put_episode(Episode("late", "latek", 0.0, token_mask(4), finished_at=10.0))
    worker.join(timeout=30)
    batch, _ = done[0]  # type: ignore[misc]
    assert sorted(batch.keys) == ["late_0_0", "ok_0_0"]
    assert sum(refill.calls) == 3


def test_wait_strategy_blocks_until_a_stale_prompt_finishes() -> None:
    for i in range(2):
        put_episode(Episode(f"f{i}", f"fk{i}", 1.0, token_mask(4), finished_at=i, global_steps=3))
    put_prompt("slow", "slowk", "running", global_steps=1)  # dispatched two steps ago
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(
            buffer(Refills(), threshold=2).sample(global_steps=3, partition_id=TRAIN, batch_size=2)
        ),
        daemon=True,
    )
    worker.start()
    time.sleep(1.0)
    assert not done, "sampling must wait for the in-flight prompt at the staleness bound"
    put_episode(Episode("slow", "slowk", 0.0, token_mask(4), finished_at=7.0, global_steps=1))
    worker.join(timeout=30)
    batch, _ = done[0]  # type: ignore[misc]
    assert sorted(batch.keys) == [
        "f0_0_0",
        "f1_0_0",
    ]  # admitted, not dropped: it waits for next step
    assert "slow_0_0" in listed()


def test_endless_failures_stop_with_a_clear_error() -> None:
    # Every episode fails (e.g. every prompt is too long): refilling would go on forever.
    refill = Refills()
    for i in range(40):
        put_prompt(f"bad{i}", f"badk{i}", "failure")
    with pytest.raises(ReplayBufferStalled, match="failed in the agent loop"):
        buffer(refill).sample(global_steps=1, partition_id=TRAIN, batch_size=2)
    for i in range(40):
        put_episode(
            Episode(f"m{i}", f"mk{i}", 0.0, token_mask(4), masked=True, finished_at=i),
            reason="no container",
        )
    with pytest.raises(ReplayBufferStalled, match=r"masked \(40× no container\)"):
        buffer(refill).sample(global_steps=1, partition_id=TRAIN, batch_size=2)


def test_replacements_below_the_limit_are_forgiven_once_a_batch_forms() -> None:
    sampler = buffer(Refills())
    for round_ in range(3):  # 3 × 20 masked, but never more than 32 since a batch
        for i in range(20):
            put_episode(
                Episode(f"m{round_}-{i}", f"mk{round_}-{i}", 0.0, token_mask(4), masked=True)
            )
        put_episode(Episode(f"ok{round_}", f"okk{round_}", 1.0, token_mask(4)))
        batch, _ = sampler.sample(global_steps=1, partition_id=TRAIN, batch_size=1)
        assert batch.keys == [f"ok{round_}_0_0"]


@pytest.mark.parametrize(
    ("mode", "strategy", "match"),
    [("spo", "drop", "max_off_policy_strategy=wait"), ("colocate_async", "wait", "trainer_mode")],
)
def test_refuses_settings_that_are_not_spo(mode: str, strategy: str, match: str) -> None:
    with pytest.raises(ReplayBufferConfigError, match=match):
        SPOReplayBuffer(
            trainer_mode=mode,
            trainer_config={},
            max_off_policy_threshold=4,
            max_off_policy_strategy=strategy,
            sampler_kwargs={},
            refill_fn=Refills(),
        )
