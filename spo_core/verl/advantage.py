"""The ``spo`` advantage estimator for verl (``algorithm.adv_estimator=spo``).

verl's ``compute_advantage`` hands a registered estimator the batch's ``token_level_rewards``,
``response_mask`` and, when the batch carries them, ``reward_baselines``. For SPO those are the
tracker values v̂₋₁(x) read when the batch was assembled for training (the ``spo`` trainer mode
writes them; see :mod:`spo_core.verl.trainer`). The estimator is :func:`spo_core.advantages.
spo_advantages` itself: A = r − v̂, then one global normalisation over the whole batch.
"""

from __future__ import annotations

from typing import Any, Final

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from spo_core.advantages import spo_advantages
from spo_core.config import AdvantageConfig, AdvantageNorm

ESTIMATOR: Final = "spo"
NORM_KEY: Final = "spo_advantage_norm"
"""Key of the algorithm config that picks the normalisation: ``sequence`` (default) | ``token``."""


class MissingBaselinesError(ValueError):
    """The batch reached the ``spo`` estimator without tracker baselines."""


def advantage_config(config: Any) -> AdvantageConfig:
    """The :class:`AdvantageConfig` an algorithm config asks for (``sequence`` norm by default)."""
    norm: AdvantageNorm = config.get(NORM_KEY, "sequence") if config is not None else "sequence"
    return AdvantageConfig(estimator="spo", norm=norm)


@register_adv_est(ESTIMATOR)
def compute_spo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    reward_baselines: torch.Tensor | None = None,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPO advantages (SPO_SPEC §2 steps 3–4) as verl's estimator contract returns them.

    Args:
        token_level_rewards: ``[B, T]`` outcome reward on each episode's last token.
        response_mask: ``[B, T]`` 1 on model tokens (tool output and padding are 0).
        reward_baselines: ``[B]`` tracker value of each episode's prompt, read before this
            step's tracker update.
        config: verl's algorithm config; its ``spo_advantage_norm`` picks the normalisation.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``: Ã broadcast over model tokens (SPO has no
        critic, so the returns are the advantages, as for verl's other outcome estimators).

    Raises:
        MissingBaselinesError: without ``reward_baselines`` — a batch from verl's ``sync`` or
            ``separate_async`` trainer modes, which never attach the tracker's values.
    """
    if reward_baselines is None:
        raise MissingBaselinesError(
            "adv_estimator=spo needs the tracker baselines, which only trainer.v1.trainer_mode=spo "
            "attaches (sync discards in-flight work, separate_async normalises per mini-batch)"
        )
    rewards = token_level_rewards.sum(dim=-1)
    adv = spo_advantages(rewards, reward_baselines, response_mask, advantage_config(config))
    token = adv.token.to(token_level_rewards.dtype)
    return token, token
