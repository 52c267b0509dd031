"""spo_core: the SPO algorithm (Single-stream Policy Optimization) as small, pure modules.

Depends on torch, numpy and the standard library only; the training loop that drives the rollout
engine is the separate subpackage :mod:`spo_core.learner`, which ``import spo_core`` never loads.
One training step, in order (SPO_SPEC §2):

1. :class:`PromptSampler` draws B prompts not in flight, ∝ sqrt(v̂(1 − v̂)) + ε.
2. (agents) one episode per prompt, reward r.
3. :meth:`ValueTracker.baseline` gives the pre-update v̂₋₁; A = r − v̂₋₁.
4. :func:`compute_advantages` normalises A over the batch (sequence or token weighted).
5. :func:`policy_loss`: PPO-Clip with clip-higher, dual-clip and decoupled importance weights.
6. :func:`forgetting_factor` (from :func:`logprob_drift`), then :meth:`ValueTracker.update`.
7. (learner) the new weights reach the rollout policy: pause, update_weights, resume.
"""

from spo_core.advantages import (
    Advantages,
    AdvantageStats,
    SmallBatchWarning,
    compute_advantages,
    grpo_advantages,
    normalise,
    spo_advantages,
)
from spo_core.config import (
    AdvantageConfig,
    LossConfig,
    OfflineConfig,
    RhoConfig,
    SamplerConfig,
    SPOConfig,
    TrackerConfig,
)
from spo_core.index import PromptIndex, hash_keys
from spo_core.losses import PolicyLoss, policy_loss
from spo_core.offline import (
    OfflineMatchError,
    OfflineReport,
    OfflineScores,
    beta_prior,
    ema_prior,
    read_authors_json,
    read_offline_jsonl,
    read_offline_table,
    write_offline_jsonl,
)
from spo_core.rho import forgetting_factor, logprob_drift, rho_from_drift
from spo_core.sampler import PromptSampler
from spo_core.tracker import ValueTracker

__all__ = [
    "AdvantageConfig",
    "AdvantageStats",
    "Advantages",
    "LossConfig",
    "OfflineConfig",
    "OfflineMatchError",
    "OfflineReport",
    "OfflineScores",
    "PolicyLoss",
    "PromptIndex",
    "PromptSampler",
    "RhoConfig",
    "SPOConfig",
    "SamplerConfig",
    "SmallBatchWarning",
    "TrackerConfig",
    "ValueTracker",
    "beta_prior",
    "compute_advantages",
    "ema_prior",
    "forgetting_factor",
    "grpo_advantages",
    "hash_keys",
    "logprob_drift",
    "normalise",
    "policy_loss",
    "read_authors_json",
    "read_offline_jsonl",
    "read_offline_table",
    "rho_from_drift",
    "spo_advantages",
    "write_offline_jsonl",
]
