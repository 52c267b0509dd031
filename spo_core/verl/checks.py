"""Refuse verl configurations that would run something other than SPO under SPO's name.

verl accepts ``algorithm.adv_estimator=spo`` in any trainer mode, with any number of responses
per prompt and any staleness policy; most of those combinations train, just not with the
paper's algorithm. :func:`validate_spo_config` turns each into a one-line error that says why.
The launch entry (:mod:`spo_core.verl.main`) calls it before Ray starts, and the ``spo``
trainer mode calls it again when it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from omegaconf import DictConfig, OmegaConf

from spo_core.verl.fields import AGENT_NAME, TRAINER_MODE
from spo_core.verl.gym_config import GymConfigError, SPOGymConfig
from spo_core.verl.settings import SPOSettings, SPOSettingsError

__all__ = ["REPLAY_BUFFER_NAME", "REPLAY_BUFFER_PATH", "SPOConfigError", "validate_spo_config"]

REPLAY_BUFFER_PATH: Final = "pkg://spo_core.verl.replay_buffer"
"""``trainer.v1.sampler.custom_sampler.path``: verl's ``load_module`` imports ``pkg://`` paths
as modules (a file path would load a second copy of the module under another name)."""

REPLAY_BUFFER_NAME: Final = "SPOReplayBuffer"
"""``trainer.v1.sampler.custom_sampler.name``."""

_WHY_NOT_MODE: Final = {
    "sync": "it submits exactly train_batch_size prompts per step and discards the requests "
    "still in flight, so a batch is never the first B episodes to finish",
    "separate_async": "it normalises advantages per PPO mini-batch, not over the whole batch "
    "(SPO_SPEC §2 step 4)",
    "colocate_async": "it has no value tracker, prioritised sampler or SPO batch assembly",
}


class SPOConfigError(ValueError):
    """A verl configuration that cannot run SPO (or claims SPO's trainer mode without SPO)."""


def _get(config: Any, dotted: str) -> Any:
    return OmegaConf.select(config, dotted, default=None)


def validate_spo_config(config: DictConfig) -> None:
    """Check that ``config`` runs SPO as specified, or does not claim to.

    With ``algorithm.adv_estimator=spo``: the V1 trainer in mode ``spo``, one response per
    prompt, prompts refilled one at a time, staleness bounded by waiting (never by dropping),
    spo-gym's replay buffer, offline values or an explicit cold start, and valid ``spo_gym``
    settings. With any other estimator, mode ``spo`` is refused.

    Raises:
        SPOConfigError: the first problem found, in one line naming the key and why.
    """
    estimator = _get(config, "algorithm.adv_estimator")
    mode = _get(config, "trainer.v1.trainer_mode")
    if estimator != "spo":
        if mode == TRAINER_MODE:
            raise SPOConfigError(
                f"trainer.v1.trainer_mode={TRAINER_MODE} needs algorithm.adv_estimator=spo, "
                f"got {estimator!r}: the spo mode computes SPO advantages from its tracker; "
                "run GRPO with trainer_mode=sync"
            )
        return
    if not _get(config, "trainer.use_v1"):
        raise SPOConfigError(
            "algorithm.adv_estimator=spo needs trainer.use_v1=true: SPO runs in the V1 "
            f"trainer's {TRAINER_MODE!r} mode"
        )
    if mode != TRAINER_MODE:
        why = _WHY_NOT_MODE.get(str(mode), "it is not spo-gym's single-stream trainer")
        raise SPOConfigError(
            f"trainer.v1.trainer_mode={mode} cannot run SPO: {why}; "
            f"set trainer.v1.trainer_mode={TRAINER_MODE}"
        )
    _check_sampling(config)
    _check_spo_gym(config)


def _check_sampling(config: DictConfig) -> None:
    n = _get(config, "actor_rollout_ref.rollout.n")
    if n != 1:
        raise SPOConfigError(
            f"actor_rollout_ref.rollout.n={n}: SPO samples one response per prompt per visit "
            "(groups of n > 1 are GRPO's); set it to 1"
        )
    gen_batch_size = _get(config, "data.gen_batch_size")
    if gen_batch_size not in (None, 1):
        raise SPOConfigError(
            f"data.gen_batch_size={gen_batch_size}: SPO refills prompts one at a time so the "
            "sampler can weigh each and skip prompts in flight; set it to 1 or leave it unset"
        )
    strategy = _get(config, "trainer.v1.sampler.max_off_policy_strategy")
    if strategy != "wait":
        raise SPOConfigError(
            f"trainer.v1.sampler.max_off_policy_strategy={strategy}: SPO bounds staleness by "
            "admission with 'wait'; 'drop' throws finished long episodes away, starving slow, "
            "hard prompts (SPO_SPEC §9)"
        )
    threshold = _get(config, "trainer.v1.sampler.max_off_policy_threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise SPOConfigError(
            f"trainer.v1.sampler.max_off_policy_threshold={threshold}: give the staleness "
            "bound in policy versions (an integer >= 1; null would leave staleness unbounded)"
        )
    path = _get(config, "trainer.v1.sampler.custom_sampler.path")
    name = _get(config, "trainer.v1.sampler.custom_sampler.name")
    if (path, name) != (REPLAY_BUFFER_PATH, REPLAY_BUFFER_NAME):
        raise SPOConfigError(
            f"trainer.v1.sampler.custom_sampler is {path}:{name}: SPO batches are the first B "
            f"finished, unmasked episodes, formed by path={REPLAY_BUFFER_PATH} "
            f"name={REPLAY_BUFFER_NAME}"
        )
    loop = _get(config, "actor_rollout_ref.rollout.agent.default_agent_loop")
    if loop != AGENT_NAME:
        raise SPOConfigError(
            f"actor_rollout_ref.rollout.agent.default_agent_loop={loop}: rows without an "
            f"agent_name would run outside the sandboxed env; set it to {AGENT_NAME}"
        )


def _check_spo_gym(config: DictConfig) -> None:
    block = _get(config, "spo_gym")
    if not isinstance(block, Mapping):
        raise SPOConfigError(
            "no spo_gym block: compose from configs/verl (e.g. --config-name spo_qwen3_8b)"
        )
    try:
        # The agent loop's part of the block, then the trainer's (whose files are checked where
        # they are read: by the trainer, on the cluster).
        SPOGymConfig.from_verl(config)
        SPOSettings.from_config(config, check_files=False)
    except (GymConfigError, SPOSettingsError) as exc:
        raise SPOConfigError(str(exc)) from None
