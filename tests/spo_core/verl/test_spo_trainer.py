"""The ``spo`` trainer mode's hooks on real verl objects and a real TransferQueue on Ray.

The trainer is built from verl's own composed config and runs its own dataset setup. Only the
GPU actor worker group is absent here: the checkpoint test gives the trainer a stand-in that
records verl's save/load calls (FSDP workers need CUDA + NCCL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta

from spo_core.advantages import spo_advantages
from spo_core.config import AdvantageConfig
from spo_core.verl.checks import SPOConfigError
from spo_core.verl.prompt_state import PromptStateError
from spo_core.verl.trainer import SPOTrainer
from tests.spo_core.verl.queue_rows import (
    TRAIN,
    Episode,
    as_padded,
    put_episode,
    put_prompt,
    token_mask,
)

pytestmark = pytest.mark.usefixtures("clean_queue")


def build(config: Any) -> SPOTrainer:
    trainer = SPOTrainer(config)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer.global_steps = 1  # what _load_checkpoint sets on a fresh start, plus fit's first step
    return trainer


def train_on(trainer: SPOTrainer, episodes: list[Episode]) -> tuple[KVBatchMeta, dict[str, Any]]:
    keys = [put_episode(e) for e in episodes]
    batch = KVBatchMeta(partition_id=TRAIN, keys=keys, tags=[{} for _ in keys])
    metrics: dict[str, Any] = {}
    return trainer._compute_advantage(batch, metrics), metrics


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_advantage_hook_equals_spo_core_and_updates_only_trained_prompts(
    spo_config: Any, norm: str
) -> None:
    def offline(keys: list[str]) -> dict[str, list[float]]:
        return {k: [1.0, 0.0, float(i % 3 == 0)] for i, k in enumerate(keys)}

    config, keys = spo_config(extra=(f"spo_gym.advantage_norm={norm}",), offline=offline)
    trainer = build(config)
    state = trainer.prompts
    assert state is not None
    before = state.tracker.state_dict()["stats"].copy()
    trained = [keys[i] for i in (0, 4, 5, 9)]
    rewards = [1.0, 0.0, 1.0, 0.0]
    lengths = [7, 12, 5, 9]
    baselines = state.baselines(trained)

    batch, metrics = train_on(
        trainer,
        [
            Episode(f"u{i}", key, r, token_mask(n))
            for i, (key, r, n) in enumerate(zip(trained, rewards, lengths, strict=True))
        ],
    )

    width = max(lengths)
    mask = torch.tensor([token_mask(n) + [0] * (width - n) for n in lengths])
    expected = spo_advantages(rewards, baselines, mask, AdvantageConfig(norm=norm))  # type: ignore[arg-type]
    stored = tq.kv_batch_get(
        keys=batch.keys, partition_id=TRAIN, select_fields=["advantages", "rollout_is_weights"]
    )
    torch.testing.assert_close(
        as_padded(stored["advantages"], width), expected.token, rtol=0, atol=1e-6
    )
    # Truncated importance weights π_old / π_sampler (configs/verl/method/spo.yaml) on model tokens.
    weights = as_padded(stored["rollout_is_weights"], width)
    expected_w = torch.exp(torch.tensor(-0.45 + 0.5)) * mask
    torch.testing.assert_close(weights * mask, expected_w.float(), rtol=0, atol=1e-6)
    # The tracker moved exactly the trained prompts, by the Beta update with constant ρ.
    after = state.tracker.state_dict()["stats"]
    rows = state.tracker.rows(trained)
    untouched = np.setdiff1d(np.arange(len(keys)), rows)
    np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
    rho = trainer.settings.rho.constant
    np.testing.assert_allclose(after[0, rows], rho * before[0, rows] + np.array(rewards))
    np.testing.assert_allclose(after[1, rows], rho * before[1, rows] + 1 - np.array(rewards))
    assert metrics["spo/baseline_mean"] == pytest.approx(float(baselines.mean()))
    assert metrics["spo/rho_mean"] == pytest.approx(rho)


def test_prompts_in_flight_are_never_drawn(spo_config: Any) -> None:
    config, _ = spo_config(n_prompts=12)
    trainer = build(config)
    first = trainer._next_train_batch(5)
    for uid, key in zip(first["uid"], first["prompt_key"], strict=True):
        put_prompt(str(uid), str(key), "pending")
    second = trainer._next_train_batch(7)
    assert set(first["prompt_key"]).isdisjoint(second["prompt_key"])
    assert len(set(first["prompt_key"]) | set(second["prompt_key"])) == 12
    # Prompts restored from a checkpoint's queue are recognised by a fresh trainer too.
    for uid, key in zip(second["uid"], second["prompt_key"], strict=True):
        put_prompt(str(uid), str(key), "pending")
    with pytest.raises(ValueError, match="only 0 are not in flight"):
        build(config)._next_train_batch(1)


class ActorStandIn:
    """Records verl's calls to the (GPU-only) actor worker group's checkpointing."""

    def __init__(self) -> None:
        self.saved: list[str] = []
        self.loaded: list[str] = []

    def save_checkpoint(self, local_path: str, *_: Any, **__: Any) -> None:
        Path(local_path).mkdir(parents=True, exist_ok=True)
        self.saved.append(local_path)

    def load_checkpoint(self, local_path: str, **_: Any) -> None:
        self.loaded.append(local_path)


def test_tracker_and_sampler_survive_verls_checkpoint(spo_config: Any) -> None:
    config, keys = spo_config(n_prompts=12)
    trainer = build(config)
    trainer.actor_rollout_wg = ActorStandIn()
    train_on(trainer, [Episode(f"c{i}", keys[i], float(i % 2), token_mask(6)) for i in range(4)])
    trainer.global_steps = 3
    trainer._save_checkpoint()

    resumed = build(config)
    resumed.actor_rollout_wg = ActorStandIn()
    resumed._load_checkpoint()
    assert resumed.global_steps == 3
    assert resumed.actor_rollout_wg.loaded[0].endswith("global_step_3/actor")
    assert resumed.prompts is not None and trainer.prompts is not None
    np.testing.assert_array_equal(
        resumed.prompts.tracker.state_dict()["stats"], trainer.prompts.tracker.state_dict()["stats"]
    )
    # The same sampler state: both draw the same prompts next.
    np.testing.assert_array_equal(resumed.prompts.draw(6, []), trainer.prompts.draw(6, []))


def test_resume_with_another_training_set_is_refused(spo_config: Any) -> None:
    config, _ = spo_config(n_prompts=12)
    trainer = build(config)
    trainer.actor_rollout_wg = ActorStandIn()
    trainer.global_steps = 1
    trainer._save_checkpoint()
    other, _ = spo_config(n_prompts=10)
    resumed = build(other)
    resumed.actor_rollout_wg = ActorStandIn()
    with pytest.raises(PromptStateError, match="not this training set"):
        resumed._load_checkpoint()


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("spo_gym.cold_start=false", "offline_values is unset"),
        ("++spo_gym.rho.mode=kl", "rho.mode must be constant"),
        ("++spo_gym.tracker.modes=beta", "unknown setting 'modes'"),
        ("spo_gym.advantage_norm=group", "advantage_norm=group: one of"),
    ],
)
def test_bad_spo_settings_are_one_line_errors(spo_config: Any, override: str, match: str) -> None:
    config, _ = spo_config(extra=(override,))
    with pytest.raises(SPOConfigError, match=match):
        SPOTrainer(config)


def test_offline_values_that_miss_the_training_set_are_refused(spo_config: Any) -> None:
    from spo_core.offline import OfflineMatchError

    config, _ = spo_config(offline=lambda _: {"elsewhere/1": [1.0]})
    with pytest.raises(OfflineMatchError, match="matches 0/12"):
        build(config)


def test_a_training_set_with_repeated_keys_is_refused() -> None:
    from spo_core.verl.prompt_state import PromptState
    from spo_core.verl.settings import SPOSettings

    with pytest.raises(PromptStateError, match=r"repeats 1 prompt key\(s\), e.g. 'b'"):
        PromptState(["a", "b", "c", "b"], SPOSettings(cold_start=True))
