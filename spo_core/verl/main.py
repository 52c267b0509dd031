"""The launch entry of SPO and GRPO on verl::

    python -m spo_core.verl.main --config-path <repo>/configs/verl --config-name spo_qwen3_8b \\
        [hydra overrides ...]

verl's own entry with spo-gym's checks in front: Hydra composes the config, then, before Ray
starts, verl's ``validate_config`` and :func:`~spo_core.verl.checks.validate_spo_config` check
it and every input file is checked to exist; then verl's ``run_ppo`` runs ``TaskRunnerV1``,
whose trainer mode (``spo`` or ``sync``) the config names. A refusal is one line on stderr and
exit status 2. ``--config-path`` defaults to this source tree's ``configs/verl``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spo_core.verl.checks import validate_spo_config
from spo_core.verl.launch import (
    LaunchError,
    absolute_inputs,
    check_inputs,
    config_dir,
    one_line,
)

__all__ = ["check_config", "main"]


def check_config(config: DictConfig) -> None:
    """Everything checked before Ray starts: verl's checks, spo-gym's, the files (made absolute
    against the launching directory first), the device. Runs inside Hydra's main.

    Raises:
        SPOConfigError: the configuration cannot run SPO as specified.
        LaunchError: not the V1 trainer, an input file is missing, or no accelerator.
        AssertionError, ValueError, hydra.errors.HydraException: verl's ``validate_config``
            refuses the configuration.
    """
    from hydra.utils import get_original_cwd
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device, is_device_available

    if not config.trainer.use_v1:
        raise LaunchError("spo-gym runs verl's V1 trainer: set trainer.use_v1=true")
    with warnings.catch_warnings():
        # need_critic warns that a non-GAE estimator disables the critic: intended here.
        warnings.simplefilter("ignore", UserWarning)
        use_critic = need_critic(config)
    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=use_critic
    )
    validate_spo_config(config)
    absolute_inputs(config, Path(get_original_cwd()))
    check_inputs(config)
    # Last, so a configuration can be checked on a machine without GPUs. verl names "cuda"
    # as the device even where none is present; availability is the real test.
    if not is_device_available():
        raise LaunchError("no CUDA or NPU device is available: verl's trainer needs GPUs")
    auto_set_device(config)


@hydra.main(config_path=str(config_dir()), config_name=None, version_base=None)
def main(config: DictConfig) -> None:
    """Check ``config`` and run verl's trainer with it."""
    from hydra.errors import HydraException
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo

    try:
        check_config(config)
    except (AssertionError, ValueError, HydraException) as exc:  # SPOConfigError, LaunchError too
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    run_ppo(config, task_runner_class=TaskRunnerV1)


if __name__ == "__main__":
    main()
