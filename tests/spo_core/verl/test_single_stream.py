"""Single-stream SPO inside verl on the CPU, end to end but for the actor's update.

The ``spo`` trainer draws prompts and dispatches them through verl's own submit path to
``AgentLoopManagerTQ``'s Ray workers, which play them with the agent loop against the Docker
sandbox (the CI nano model served by ``LocalLLMServerClient``) and write each finished episode
to TransferQueue. The replay buffer then takes the first B to finish, verl's old-log-prob step
runs in bypass mode (the rollout's log-probs stand in for the actor's, which needs a GPU), and
the advantage hook trains exactly those prompts' tracker entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
import transfer_queue as tq
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ

from envs.tasks import Tier
from spo_core.advantages import spo_advantages
from spo_core.config import AdvantageConfig
from spo_core.verl.data import verl_rows
from spo_core.verl.launch import compose_config
from spo_core.verl.local_server import LocalLLMServerClient
from spo_core.verl.trainer import SPOTrainer
from tests.spo_core.verl.queue_rows import TRAIN, as_padded, listed

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("clean_queue")]

N_PROMPTS, DISPATCHED, B = 10, 6, 4


def training_set(path: Path) -> list[str]:
    tasks = Tier.parse("d2o1").tasks(N_PROMPTS, seed=5)
    pq.write_table(pa.Table.from_pylist(verl_rows(tasks, split="train", env="retoolnano")), path)
    return [t.key for t in tasks]


def test_first_b_finished_episodes_train_exactly_their_prompts(
    ci_nano: Path, tmp_path: Path
) -> None:
    train = tmp_path / "train.parquet"
    keys = training_set(train)
    config = compose_config(
        "spo_smoke",
        [
            f"actor_rollout_ref.model.path={ci_nano}",
            f"data.train_files={train}",
            f"data.val_files={train}",
            f"data.train_batch_size={B}",
            "data.dataloader_num_workers=0",
            "data.max_prompt_length=192",
            "data.max_response_length=320",
            "actor_rollout_ref.rollout.agent.num_workers=1",
            # No actor here: the old-log-prob step takes the rollout's log-probs.
            "algorithm.rollout_correction.bypass_mode=true",
            "spo_gym.env=retoolnano",
            "spo_gym.max_turns=3",
            "spo_gym.sandbox_pool=2",
            "++spo_gym.sandbox.memory_mb=512",
            "~spo_gym.env_kwargs.demonstrations",
            f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        ],
    )
    trainer = SPOTrainer(config)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer.global_steps = 1
    state = trainer.prompts
    assert state is not None
    before = state.tracker.state_dict()["stats"].copy()
    server = LocalLLMServerClient.from_pretrained(ci_nano, config, num_threads=1, seed=0)
    trainer.agent_loop_manager = AgentLoopManagerTQ.create(config, llm_client=server)
    try:
        # 1. Prompts by priority through verl's own dispatch (one per refill in a real run).
        trainer._add_prompts_to_generate(DISPATCHED)
        dispatched = trainer.in_flight_keys()
        assert len(dispatched) == DISPATCHED

        # 2. The first B to finish form the batch.
        batch, metrics = trainer.replay_buffer.sample(
            global_steps=1, partition_id=TRAIN, batch_size=B
        )
        assert len(batch.keys) == B
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=TRAIN,
            select_fields=["prompt_key", "extra_fields", "rm_scores", "response_mask"],
        )
        trained = [str(data[i]["prompt_key"]) for i in range(B)]
        extras = [data[i]["extra_fields"] for i in range(B)]
        assert set(trained) <= dispatched and not any(e["spo_masked"] for e in extras)
        finished_at = sorted(e["spo_finished_at"] for e in extras)
        waiting = dispatched - set(trained)
        # Nothing still queued finished before the batch's last episode.
        for uid, tag in listed().items():
            if tag.get("is_prompt") and tag["status"] == "finished":
                extra = tq.kv_batch_get(
                    keys=[f"{uid}_0_0"], partition_id=TRAIN, select_fields=["extra_fields"]
                )[0]["extra_fields"]
                assert extra["spo_finished_at"] >= finished_at[-1]
        baselines = state.baselines(trained)

        # 3.-6. verl's old-log-prob step (bypass), then SPO's advantages and tracker update.
        trainer._compute_old_log_prob(batch, metrics)
        trainer._compute_advantage(batch, metrics)

        width = max(len(m) for m in data["response_mask"])
        mask = as_padded(data["response_mask"], width)
        rewards = torch.stack([r.sum() for r in data["rm_scores"]])
        expected = spo_advantages(rewards, baselines, mask, AdvantageConfig())
        stored = tq.kv_batch_get(keys=batch.keys, partition_id=TRAIN, select_fields=["advantages"])
        torch.testing.assert_close(
            as_padded(stored["advantages"], width), expected.token, rtol=0, atol=1e-6
        )
        after = state.tracker.state_dict()["stats"]
        rows = state.tracker.rows(trained)
        untouched = np.setdiff1d(np.arange(len(keys)), rows)
        np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
        assert not np.array_equal(after[:, rows], before[:, rows])

        # The episodes not trained stay in flight and are never drawn again meanwhile.
        assert trainer.in_flight_keys() == waiting
        drawn = trainer._next_train_batch(N_PROMPTS - len(waiting))
        assert set(drawn["prompt_key"]).isdisjoint(waiting)
    finally:
        for worker in trainer.agent_loop_manager.agent_loop_workers:
            ray.wait([worker.__ray_terminate__.remote()], timeout=60)
