"""The ``spo`` estimator as verl calls it equals spo_core's own SPO advantages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

from spo_core.advantages import spo_advantages
from spo_core.config import AdvantageConfig
from spo_core.verl.advantage import (
    ESTIMATOR,
    MissingBaselinesError,
    compute_spo_outcome_advantage,
)


def batch(seed: int, rows: int = 16, width: int = 20) -> DataProto:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (rows,), generator=gen)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    mask[:, 3::4] = 0  # tool-output tokens inside the response
    rewards = (torch.rand(rows, generator=gen) < 0.5).float()
    scores = torch.zeros(rows, width)
    scores[torch.arange(rows), lengths - 1] = rewards
    return DataProto.from_dict(
        tensors={
            "token_level_rewards": scores,
            "response_mask": mask,
            "reward_baselines": torch.rand(rows, generator=gen, dtype=torch.float64),
        },
        non_tensors={"uid": np.array([f"u{i}" for i in range(rows)], dtype=object)},
    )


@pytest.mark.parametrize("norm", ["sequence", "token"])
def test_verl_compute_advantage_runs_spo_core(norm: str) -> None:
    data = batch(seed=3)
    expected = spo_advantages(
        data.batch["token_level_rewards"].sum(-1),
        data.batch["reward_baselines"],
        data.batch["response_mask"],
        AdvantageConfig(norm=norm),  # type: ignore[arg-type]
    )
    config = OmegaConf.create({"spo_advantage_norm": norm})
    out = compute_advantage(data, adv_estimator=ESTIMATOR, config=config)
    torch.testing.assert_close(out.batch["advantages"], expected.token, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.batch["returns"], expected.token, rtol=0, atol=1e-6)
    # Tool-output tokens and padding carry no advantage.
    assert out.batch["advantages"][data.batch["response_mask"] == 0].abs().max() == 0


def test_without_baselines_the_estimator_refuses() -> None:
    data = batch(seed=1)
    with pytest.raises(MissingBaselinesError, match="trainer_mode=spo"):
        compute_spo_outcome_advantage(
            data.batch["token_level_rewards"], data.batch["response_mask"], config=None
        )


def test_import_verl_registers_everything_in_a_fresh_process() -> None:
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print(get_adv_estimator_fn('spo').__module__, get_trainer_cls('spo').__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["spo_core.verl.advantage", "spo_core.verl.trainer"]
    assert get_adv_estimator_fn(ESTIMATOR) is compute_spo_outcome_advantage
