"""SPO's batch assembly inside verl: a batch is the first B finished, unmasked trajectories.

verl's agent-loop workers write every finished episode to TransferQueue as it ends. With one
sample per prompt (``rollout.n=1``) a "group" is one trajectory, so the paper's single-stream
batch (SPO_SPEC §2 step 1: no group barrier) is a replay-buffer policy:

1. Failed prompts (the agent loop raised) and masked episodes (``spo_masked``: an infrastructure
   failure, DESIGN.md's masking rule) are cleared from TransferQueue and replaced by as many fresh
   prompts; they never count toward B and never reach the tracker.
2. Staleness is bounded by admission: with ``max_off_policy_strategy=wait`` sampling blocks while
   an in-flight prompt has reached the threshold, so it finishes and is trained on. ``drop``
   (verl's default) throws long episodes away — the bias SPO_SPEC §9 warns about — and is refused.
3. The batch is the B earliest-finished of the rest (``spo_finished_at``), not verl's oldest
   dispatched; the rest wait for the next step.

Set ``trainer.v1.sampler.custom_sampler.{path,name}`` to this module and ``SPOReplayBuffer``.
Validation (``partition_id="val"``) keeps verl's own behaviour: every finished group is taken.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync

from spo_core.verl.fields import TRAINER_MODE

logger = logging.getLogger(__name__)

TRAIN = "train"


# A batch may take up to 4 replaced episodes per trained one before sampling gives up.
MIN_REPLACE_LIMIT = 32
REPLACE_FACTOR = 4


class ReplayBufferConfigError(ValueError):
    """The replay buffer was configured in a way that is not SPO."""


class ReplayBufferStalled(RuntimeError):
    """Episodes keep failing or being masked: no batch can form."""


def _listing(counts: Counter[str]) -> str:
    return ", ".join(f"{n}× {reason}" for reason, n in counts.most_common())


@dataclass(frozen=True)
class Finished:
    """What the buffer needs of one finished prompt's trajectory."""

    masked: bool
    finished_at: float
    reason: str  # why it was masked ("" if it was not)


class SPOReplayBuffer(ReplayBufferAsync):
    """verl's async replay buffer with SPO's batch assembly (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.trainer_mode != TRAINER_MODE:
            raise ReplayBufferConfigError(
                f"SPOReplayBuffer belongs to trainer.v1.trainer_mode={TRAINER_MODE}, "
                f"not {self.trainer_mode!r}"
            )
        if self.max_off_policy_threshold is not None and self.max_off_policy_strategy != "wait":
            raise ReplayBufferConfigError(
                "SPO bounds staleness by admission: set trainer.v1.sampler."
                "max_off_policy_strategy=wait ('drop' throws long episodes away)"
            )
        if self.refill_fn is None:
            raise ReplayBufferConfigError("SPOReplayBuffer needs the trainer's refill_fn")
        # Finished trajectories never change, so each prompt's flags are read once.
        self._finished: dict[str, Finished] = {}
        self._replaced = 0  # episodes failed or masked since the last batch
        self._replace_limit = MIN_REPLACE_LIMIT

    def sample(
        self, global_steps: int, partition_id: str, batch_size: int
    ) -> tuple[KVBatchMeta, dict[str, Any]]:
        """The first ``batch_size`` finished, unmasked trajectories (blocks until there are).

        Raises:
            ReplayBufferStalled: more than ``max(32, 4·batch_size)`` episodes were failed or
                masked since the last batch — every refill is failing, so waiting is endless.
        """
        if partition_id != TRAIN:
            return super().sample(global_steps, partition_id, batch_size)
        self._replace_limit = max(MIN_REPLACE_LIMIT, REPLACE_FACTOR * batch_size)
        metrics: dict[str, Any] = {}
        masked_total = 0
        waited_from = time.monotonic()
        while True:
            # 1. Failed and stale groups go (verl's eviction), each replaced by a fresh prompt.
            sampleable, evicted = self.wait_for_sampleable(global_steps, partition_id, batch_size)
            for name, value in evicted.items():
                metrics[name] = metrics.get(name, 0) + value
            # 2. Masked episodes go too, and are replaced the same way.
            masked = self._masked(partition_id, sampleable)
            if not masked:
                break
            reasons = Counter(self._finished[uid].reason for uid in masked)
            self._clear_groups(partition_id, masked)
            for uid in masked:
                self._finished.pop(uid, None)
            masked_total += len(masked)
            self._count_replaced(len(masked), f"masked ({_listing(reasons)})")
            self.refill_fn(len(masked))
        # 3. The B earliest finished.
        chosen = sorted(sampleable, key=lambda uid: (self._finished[uid].finished_at, uid))
        chosen = chosen[:batch_size]
        for uid in chosen:
            self._finished.pop(uid, None)
        self._replaced = 0
        snapshot = dict(self.partitions[partition_id])
        metrics.update(
            {
                "training/spo/masked_replaced": masked_total,
                "training/spo/sample_wait_s": time.monotonic() - waited_from,
                "training/spo/finished_unused": len(sampleable) - len(chosen),
            }
        )
        return self._materialize_batch(partition_id, chosen, snapshot), metrics

    def _evict_terminal_groups(
        self, global_steps: int, partition_id: str, eviction_reasons: Any
    ) -> tuple[set[str], int, int, dict[str, Any]]:
        evicted = super()._evict_terminal_groups(global_steps, partition_id, eviction_reasons)
        failed = eviction_reasons[2]
        if partition_id == TRAIN and failed:
            self._count_replaced(
                len(failed), "failed in the agent loop (the errors are in its workers' logs)"
            )
        return evicted

    def _count_replaced(self, n: int, why: str) -> None:
        self._replaced += n
        if self._replaced > self._replace_limit:
            raise ReplayBufferStalled(
                f"{self._replaced} episodes since the last batch were replaced instead of "
                f"trained, the last {n} {why}; stopping rather than refilling forever"
            )

    def _masked(self, partition_id: str, uids: set[str]) -> set[str]:
        """Of the finished prompts ``uids``, those whose episode was masked."""
        self._read_flags(partition_id, uids - self._finished.keys())
        return {uid for uid in uids if self._finished[uid].masked}

    def _read_flags(self, partition_id: str, uids: set[str]) -> None:
        if not uids:
            return
        keys = [key for key in self.partitions[partition_id] if key.split("_", 1)[0] in uids]
        data = tq.kv_batch_get(keys=keys, partition_id=partition_id, select_fields=["extra_fields"])
        per_uid: dict[str, list[dict[str, Any]]] = {}
        for key, extra in zip(keys, data["extra_fields"], strict=True):
            fields = getattr(extra, "data", extra)
            per_uid.setdefault(key.split("_", 1)[0], []).append(fields)
        for uid in uids:
            outputs = per_uid.get(uid, [])
            # An agent loop may write several outputs per episode; any masked one masks it.
            masked = [o for o in outputs if o.get("spo_masked", False)] or (
                [] if outputs else [{"spo_mask_reason": "no output"}]
            )
            self._finished[uid] = Finished(
                masked=bool(masked),
                finished_at=max((float(o.get("spo_finished_at", 0.0)) for o in outputs), default=0),
                reason=str(masked[0].get("spo_mask_reason", "")) if masked else "",
            )
