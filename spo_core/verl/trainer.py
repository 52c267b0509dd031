"""The ``spo`` trainer mode: Single-stream Policy Optimization inside verl's V1 trainer.

A subclass of verl's ``PPOTrainerColocateAsync`` (partial rollouts, colocated engines) that adds
SPO's three pieces through V1's own hooks, each numbered as in SPO_SPEC §2:

1. Prompts (``_next_train_batch``): drawn one at a time by the prioritised sampler over the
   value tracker (§6), never a prompt that is still in flight. verl refills one prompt per
   finished or replaced episode (``data.gen_batch_size=1``).
2. Batches: :class:`spo_core.verl.replay_buffer.SPOReplayBuffer` takes the first B finished,
   unmasked trajectories (set as ``trainer.v1.sampler.custom_sampler``).
3.–4. Advantages (``_compute_advantage``): the tracker's v̂₋₁ of each trained prompt is read
   *now*, when the batch is trained — a baseline attached at dispatch would be several steps
   stale in an async trainer — and verl's ``compute_advantage`` runs the registered ``spo``
   estimator over the whole batch (global normalisation, never per mini-batch).
6. The tracker then folds in exactly the trained prompts' rewards (constant ρ; see
   :mod:`spo_core.verl.settings`).
Tracker and sampler are written into every ``global_step_N`` checkpoint before verl marks it
the latest, and restored on resume.

verl's ``sync`` mode (exactly B prompts per step, in-flight requests discarded) and
``separate_async`` (advantages normalised per PPO mini-batch) are not SPO and are refused by
:func:`spo_core.verl.checks.validate_spo_config`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, register_trainer
from verl.utils import tensordict_utils as tu
from verl.utils.dataset.rl_dataset import collate_fn
from verl.workers.utils.padding import response_to_nested

from spo_core.verl.advantage import ESTIMATOR, NORM_KEY
from spo_core.verl.checks import validate_spo_config
from spo_core.verl.fields import PROMPT_KEY, TRAINER_MODE
from spo_core.verl.prompt_state import PromptState
from spo_core.verl.settings import SPOSettings

TRAIN = "train"


class SPOTrainerError(RuntimeError):
    """The training data broke an assumption of single-stream SPO."""


def dataset_prompt_keys(dataset: Any) -> list[str]:
    """The ``prompt_key`` column of a verl RL dataset, in dataset order."""
    frame = getattr(dataset, "dataframe", None)
    if frame is not None and PROMPT_KEY in getattr(frame, "column_names", ()):
        return [str(k) for k in frame[PROMPT_KEY]]
    keys = []
    for i in range(len(dataset)):
        row = dataset[i]
        if PROMPT_KEY not in row:
            raise SPOTrainerError(
                f"training row {i} has no {PROMPT_KEY!r} column; write the data with "
                "`spo-gym data prepare`"
            )
        keys.append(str(row[PROMPT_KEY]))
    return keys


def checkpoint_folder(config: DictConfig, global_steps: int) -> Path:
    """The ``global_step_N`` folder verl saves step ``global_steps`` to or resumes it from."""
    trainer = config.trainer
    if trainer.resume_mode == "resume_path" and global_steps > 0 and trainer.resume_from_path:
        folder = str(trainer.resume_from_path)
    else:
        folder = os.path.join(str(trainer.default_local_dir), f"global_step_{global_steps}")
    return Path(folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder))


@register_trainer(TRAINER_MODE)
class SPOTrainer(PPOTrainerColocateAsync):
    """verl's colocated async trainer with SPO's prompt choice, batch assembly and baseline."""

    def __init__(self, config: DictConfig) -> None:
        validate_spo_config(config)
        self.settings = SPOSettings.from_config(config)
        self.prompts: PromptState | None = None
        self._uid_keys: dict[str, str] = {}
        super().__init__(config)

    def on_train_begin(self) -> None:
        # The colocated parent reads its own block (trainer.v1.colocate_async); this mode's
        # prefetch window is trainer.v1.spo.num_warmup_batches.
        self._add_async_warmup_batches(self.config.trainer.v1[TRAINER_MODE].num_warmup_batches)

    # ------------------------------------------------------------------ §6: prompt choice
    def _init_dataloader(self) -> None:
        super()._init_dataloader()
        self.prompts = PromptState(dataset_prompt_keys(self.train_dataset), self.settings)

    def _state(self) -> PromptState:
        if self.prompts is None:
            raise SPOTrainerError("the SPO state is built with the training set (init() first)")
        return self.prompts

    def in_flight_keys(self) -> set[str]:
        """Prompt keys dispatched and not yet trained (pending, running or finished)."""
        listing = tq.kv_list(TRAIN) or {}
        uids = [k for k, tag in listing.get(TRAIN, {}).items() if tag.get("is_prompt", False)]
        unknown = [uid for uid in uids if uid not in self._uid_keys]
        if unknown:  # prompts restored from a checkpoint's TransferQueue state
            stored = tq.kv_batch_get(keys=unknown, partition_id=TRAIN, select_fields=[PROMPT_KEY])
            for uid, key in zip(unknown, stored[PROMPT_KEY], strict=True):
                self._uid_keys[uid] = str(getattr(key, "data", key))
        live = set(uids)
        self._uid_keys = {uid: key for uid, key in self._uid_keys.items() if uid in live}
        return set(self._uid_keys.values())

    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        """``num_prompts`` prompts by priority (§6), none of them in flight."""
        n = num_prompts if num_prompts is not None else self.config.data.train_batch_size
        rows = self._state().draw(n, self.in_flight_keys())
        batch_dict = collate_fn([self.train_dataset[int(i)] for i in rows])
        uids = [str(uuid.uuid4()) for _ in range(len(rows))]
        batch_dict["uid"] = np.array(uids, dtype=object)
        for uid, key in zip(uids, batch_dict[PROMPT_KEY], strict=True):
            self._uid_keys[uid] = str(key)
        batch = tu.get_tensordict(batch_dict)
        tu.assign_non_tensor_data(batch, "global_steps", self.global_steps)
        return batch

    # ------------------------------------------------------------- §2 steps 3, 4 and 6
    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict[str, Any]) -> KVBatchMeta:
        """SPO advantages over the whole training batch, then the tracker update."""
        fields = ["uid", PROMPT_KEY, "response_mask", "rm_scores", "rollout_log_probs"]
        fields += ["old_log_probs"]
        raw = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=fields
        )
        response_mask = raw["response_mask"]
        data = DataProto(batch=raw.to_padded_tensor())
        uids = [str(u) for u in data.batch.pop("uid").tolist()]
        keys = [str(k) for k in data.batch.pop(PROMPT_KEY).tolist()]
        if len(set(uids)) != len(uids):
            raise SPOTrainerError(
                "a training batch holds several outputs of one episode; SPO trains one "
                "trajectory per prompt (rollout.n=1, one AgentLoopOutput per episode)"
            )
        data.non_tensor_batch["uid"] = np.array(uids, dtype=object)
        data.batch["token_level_scores"] = data.batch["rm_scores"]
        data.batch["token_level_rewards"] = data.batch["rm_scores"]
        rewards = data.batch["rm_scores"].sum(dim=-1).double()

        # 3. Baselines v̂₋₁(x), read now (not when the prompt was dispatched).
        state = self._state()
        data.batch["reward_baselines"] = torch.as_tensor(state.baselines(keys))

        # Truncated importance weights for tokens sampled by an older policy (carried over).
        rollout_config = self.config.algorithm.get("rollout_correction", None)
        correction = (
            rollout_config is not None
            and "rollout_log_probs" in data.batch
            and not rollout_config.get("bypass_mode", False)
        )
        if correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(data, rollout_config)
            metrics.update(is_metrics)

        # 4. The registered estimator over the whole batch: one global normalisation.
        algorithm = OmegaConf.merge(
            OmegaConf.to_container(self.config.algorithm, resolve=True),
            {NORM_KEY: self.settings.advantage_norm},
        )
        data = compute_advantage(data, adv_estimator=ESTIMATOR, config=algorithm)  # type: ignore[arg-type]

        # 6. The tracker learns exactly the trained prompts' rewards.
        update = state.update(keys, rewards.numpy())
        per_episode = data.batch["advantages"].abs().amax(dim=-1)
        metrics.update(
            {
                "spo/baseline_mean": update.baseline_mean,
                "spo/value_mean": update.value_mean,
                "spo/n_eff_mean": update.n_eff_mean,
                "spo/rho_mean": update.rho_mean,
                "spo/reward_mean": float(rewards.mean()),
                "spo/frac_zero_adv": float((per_episode <= 1e-4).double().mean()),
            }
        )

        out = ["advantages", "returns"]
        if correction:
            out.append("response_mask")
            if "rollout_is_weights" in data.batch:
                out.append("rollout_is_weights")
        nested = {name: response_to_nested(data.batch[name], response_mask) for name in out}
        return tq.kv_batch_put(
            keys=batch.keys,
            partition_id=batch.partition_id,
            fields=TensorDict(nested, batch_size=len(batch)),
        )

    # ------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self) -> None:
        # Written before verl records this step as the latest, so a resumable step has it.
        self._state().save(checkpoint_folder(self.config, self.global_steps))
        super()._save_checkpoint()

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if self.global_steps > 0:
            self._state().load(checkpoint_folder(self.config, self.global_steps))
