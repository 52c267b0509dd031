"""configs/verl: every config composes on verl's own ``ppo_trainer`` and verl's checks accept it;
the paper's numbers are the configs' numbers; SPO's checks refuse what is not SPO."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from spo_core.verl.checks import (
    REPLAY_BUFFER_NAME,
    REPLAY_BUFFER_PATH,
    SPOConfigError,
    validate_spo_config,
)
from spo_core.verl.fields import AGENT_NAME, TRAINER_MODE
from spo_core.verl.launch import compose_config, config_dir

CONFIGS = sorted(p.stem for p in config_dir().glob("*.yaml"))
MODEL = ["actor_rollout_ref.model.path=/models/any"]


@pytest.fixture(scope="module")
def composed() -> dict[str, DictConfig]:
    """Every launchable config, composed once (a model path for the smoke configs' env var)."""
    return {name: compose_config(name, MODEL) for name in CONFIGS}


def _verl_validate(config: DictConfig) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_config(
            config=config,
            use_reference_policy=need_reference_policy(config),
            use_critic=need_critic(config),
        )


def _with(config: DictConfig, **updates: Any) -> DictConfig:
    changed = copy.deepcopy(config)
    for key, value in updates.items():
        OmegaConf.update(changed, key.replace("__", "."), value, force_add=True)
    return changed


def test_the_four_launchable_configs_are_there() -> None:
    assert CONFIGS == ["grpo_qwen3_8b", "grpo_smoke", "spo_qwen3_8b", "spo_smoke"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_composes_and_verl_accepts_it(
    name: str, composed: dict[str, DictConfig]
) -> None:
    from verl.utils.config import omega_conf_to_dataclass

    config = composed[name]
    _verl_validate(config)
    # The typed configs verl builds from these sections at start-up.
    algorithm = omega_conf_to_dataclass(config.algorithm)
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert algorithm.adv_estimator == name.split("_")[0]
    assert rollout.agent.default_agent_loop == AGENT_NAME
    assert rollout.multi_turn.max_assistant_turns == config.spo_gym.max_turns
    assert config.trainer.use_v1 is True
    OmegaConf.to_container(config, resolve=True)  # every interpolation resolves


def test_the_spo_paper_setting(composed: dict[str, DictConfig]) -> None:
    c = composed["spo_qwen3_8b"]
    actor, rollout = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout
    assert (c.data.train_batch_size, rollout.n, actor.ppo_mini_batch_size) == (2048, 1, 256)
    assert c.data.gen_batch_size == 1
    assert c.trainer.v1.trainer_mode == TRAINER_MODE
    assert c.trainer.v1.spo.num_warmup_batches >= 1
    sampler = c.trainer.v1.sampler
    assert sampler.max_off_policy_strategy == "wait" and sampler.max_off_policy_threshold >= 1
    assert (sampler.custom_sampler.path, sampler.custom_sampler.name) == (
        REPLAY_BUFFER_PATH,
        REPLAY_BUFFER_NAME,
    )
    assert c.spo_gym.offline_values is None and c.spo_gym.cold_start is False
    assert c.spo_gym.env == "retool" and c.spo_gym.max_turns == 8
    assert c.spo_gym.advantage_norm == "sequence"
    assert c.actor_rollout_ref.model.path == "/models/any"  # the override; default Qwen3-8B
    assert compose_config("spo_qwen3_8b", []).actor_rollout_ref.model.path == "Qwen/Qwen3-8B"


@pytest.mark.parametrize("name", ["spo_qwen3_8b", "grpo_qwen3_8b"])
def test_both_paper_configs_share_loss_sampling_and_lengths(
    name: str, composed: dict[str, DictConfig]
) -> None:
    c = composed[name]
    actor, rollout = c.actor_rollout_ref.actor, c.actor_rollout_ref.rollout
    assert actor.optim.lr == 1e-6 and actor.optim.weight_decay == 0.01 and actor.grad_clip == 1.0
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert actor.loss_agg_mode == "token-mean" and actor.entropy_coeff == 0
    assert actor.use_kl_loss is False and c.algorithm.use_kl_in_reward is False
    assert (rollout.temperature, rollout.top_p) == (1.0, 1.0)
    assert c.data.max_response_length == 16384
    val = rollout.val_kwargs
    assert (val.temperature, val.top_p, val.top_k, val.n, val.do_sample) == (
        0.6,
        0.95,
        20,
        32,
        True,
    )
    # verl counts the mini-batch in prompts and multiplies it by n: 256 episodes per update.
    assert actor.ppo_mini_batch_size * rollout.n == 256
    assert c.data.train_batch_size * rollout.n // 256 == 8  # updates per step
    assert c.transfer_queue.backend.SimpleStorage.num_data_storage_units == 2 * c.trainer.nnodes


def test_the_grpo_paper_setting(composed: dict[str, DictConfig]) -> None:
    c = composed["grpo_qwen3_8b"]
    assert (c.data.train_batch_size, c.actor_rollout_ref.rollout.n) == (256, 8)
    assert c.algorithm.adv_estimator == "grpo" and c.trainer.v1.trainer_mode == "sync"
    assert c.trainer.v1.sampler.custom_sampler.path is None  # verl's own buffer


@pytest.mark.parametrize("name", ["spo_smoke", "grpo_smoke"])
def test_smoke_configs_fit_one_gpu_and_read_their_model_from_the_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPO_GYM_MODEL_PATH", "/models/smollm2")
    c = compose_config(name, [])
    assert (c.trainer.nnodes, c.trainer.n_gpus_per_node) == (1, 1)
    assert c.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    assert c.actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size == 1
    assert c.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    assert c.actor_rollout_ref.model.path == "/models/smollm2"
    assert c.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert c.trainer.total_training_steps == 3
    _verl_validate(c)


def test_the_replay_buffer_path_is_the_module_form_verl_loads() -> None:
    from verl.utils.import_utils import load_module

    # `pkg://` imports the module by name: the buffer verl builds is our module's class, not a
    # second copy of the module (a file path would execute it again under another name).
    module = load_module(REPLAY_BUFFER_PATH.replace("replay_buffer", "fields"))
    assert module is sys.modules["spo_core.verl.fields"]
    assert REPLAY_BUFFER_PATH.startswith("pkg://") and Path(config_dir()).is_dir()


def test_the_spo_configs_pass_spo_checks_once_offline_values_or_cold_start_are_given(
    composed: dict[str, DictConfig],
) -> None:
    validate_spo_config(composed["spo_smoke"])  # cold start
    validate_spo_config(composed["grpo_qwen3_8b"])
    validate_spo_config(composed["grpo_smoke"])
    with pytest.raises(SPOConfigError, match=r"spo_gym\.offline_values is unset"):
        validate_spo_config(composed["spo_qwen3_8b"])
    validate_spo_config(_with(composed["spo_qwen3_8b"], spo_gym__offline_values="/x.jsonl"))


REFUSALS = [
    ({"trainer__v1__trainer_mode": "sync"}, "discards the requests still in flight"),
    ({"trainer__v1__trainer_mode": "separate_async"}, "normalises advantages per PPO mini-batch"),
    ({"trainer__v1__trainer_mode": "colocate_async"}, "no value tracker"),
    ({"trainer__use_v1": False}, "needs trainer.use_v1=true"),
    ({"actor_rollout_ref__rollout__n": 8}, "rollout.n=8: SPO samples one response"),
    ({"data__gen_batch_size": 64}, "data.gen_batch_size=64"),
    ({"trainer__v1__sampler__max_off_policy_strategy": "drop"}, "throws finished long episodes"),
    ({"trainer__v1__sampler__max_off_policy_threshold": None}, "staleness unbounded"),
    ({"trainer__v1__sampler__custom_sampler__path": None}, "first B finished"),
    ({"actor_rollout_ref__rollout__agent__default_agent_loop": "tool_agent"}, AGENT_NAME),
    ({"spo_gym__offline_values": "/x.jsonl"}, "contradict each other"),
    ({"spo_gym__cold_start": False}, "offline_values is unset"),
    ({"spo_gym__advantage_norm": "group"}, "advantage_norm=group"),
    ({"spo_gym__max_turns": 0}, "max_turns must be an integer >= 1, got 0"),
    ({"spo_gym__sampler": {"mode": "greedy"}}, "sampling mode must be"),
    (
        {"spo_gym__sampler": {"temperature": 1.0}},
        "spo_gym.sampler: unknown setting 'temperature'",
    ),
    ({"spo_gym__tracker": {"prior_count": 0}}, "prior_count must be > 0"),
]


@pytest.mark.parametrize(("updates", "message"), REFUSALS)
def test_spo_checks_refuse_what_is_not_spo(
    updates: dict[str, Any], message: str, composed: dict[str, DictConfig]
) -> None:
    with pytest.raises(SPOConfigError) as caught:
        validate_spo_config(_with(composed["spo_smoke"], **updates))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_spo_mode_is_refused_for_another_estimator(composed: dict[str, DictConfig]) -> None:
    config = _with(composed["grpo_smoke"], trainer__v1__trainer_mode=TRAINER_MODE)
    with pytest.raises(SPOConfigError, match=r"needs algorithm\.adv_estimator=spo, got 'grpo'"):
        validate_spo_config(config)


def test_spo_settings_the_trainer_reads_are_accepted(composed: dict[str, DictConfig]) -> None:
    validate_spo_config(
        _with(
            composed["spo_smoke"],
            spo_gym__advantage_norm="token",
            spo_gym__sampler={"mode": "uniform", "eps": 0.1},
            spo_gym__tracker={"mode": "ema"},
        )
    )
