"""The sandbox-latency bench's episode modes: what each configures, and one small real run."""

from __future__ import annotations

import pytest

from bench.sandbox_latency import EPISODE_MODES, compare_episode_modes
from sandbox import SandboxConfig


def test_the_safe_mode_is_the_default_and_the_others_differ_in_one_switch() -> None:
    default = SandboxConfig()
    assert SandboxConfig(**EPISODE_MODES["safe"]) == default
    assert SandboxConfig(**EPISODE_MODES["unverified"]) == default.model_copy(
        update={"verify_scrub": False}
    )
    assert SandboxConfig(**EPISODE_MODES["single_use"]) == default.model_copy(
        update={"reuse": False}
    )


@pytest.mark.docker
@pytest.mark.slow
async def test_the_modes_are_measured_in_paired_rounds() -> None:
    figures = await compare_episode_modes(rounds=2, episodes=8, single_use_rounds=1)
    assert len(figures["episodes_per_s_safe_runs"]) == 2
    assert len(figures["episodes_per_s_unverified_runs"]) == 2
    assert len(figures["episodes_per_s_single_use_runs"]) == 1
    assert len(figures["ratio_safe_over_unverified_runs"]) == 2
    assert all(figures[f"episodes_per_s_{mode}"] > 0 for mode in EPISODE_MODES)
    assert figures["ratio_safe_over_single_use"] > 0
