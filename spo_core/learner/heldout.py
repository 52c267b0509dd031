"""Held-out evaluation that cannot be gamed.

The problems come from a seed of their own and share no expression with the training set
(:func:`heldout_set` checks it; the tier mix is part of the set and of every report). Each
problem is scored twice, through the same engine, env and sandbox as training:

* **greedy**: one episode at temperature 0 — the headline accuracy;
* **avg@k** (default k = 4) at temperature 1.0: the mean success rate of ``k`` sampled episodes
  per problem, averaged over problems.

Both are also given per tier. Masked episodes (infrastructure failures outside a cell) are not
the model's doing: they are left out of the figures and counted in :attr:`HeldoutReport.masked`;
a problem whose greedy episode was masked drops out of the greedy accuracy. Sample indices start
at 0 in every evaluation, so with the spec's seed the sampled episodes of two evaluations of the
same weights are the same.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.policy import Policy
from agents.trajectory import Trajectory
from envs.tasks import Task, Tier, heldout_tasks, tier_of
from sandbox import SandboxPool
from spo_core.learner.task_samples import ProgressCallback, sample_each_task

__all__ = ["HeldoutReport", "HeldoutSet", "TierScore", "evaluate_heldout", "heldout_set"]


@dataclass(frozen=True)
class HeldoutSet:
    """The held-out problems.

    Attributes:
        tasks: the problems, tier by tier.
        seed: the seed they were drawn with.
        tier_mix: problems per tier.
    """

    tasks: list[Task]
    seed: int
    tier_mix: dict[str, int]


def heldout_set(
    tiers: Sequence[Tier], n_per_tier: int, seed: int, train: Iterable[Task]
) -> HeldoutSet:
    """``n_per_tier`` problems per tier from ``seed``, sharing no expression with ``train``.

    ``train`` is every task the model learned from: the RL training prompts and the warm
    start's supervised traces alike.

    Raises:
        TierError: a bad tier mix, or a tier without enough unseen expressions.
    """
    tasks = heldout_tasks(tiers, n_per_tier, seed, exclude=train)
    return HeldoutSet(tasks, seed, dict(Counter(tier_of(t) for t in tasks)))


@dataclass(frozen=True)
class TierScore:
    """One tier's held-out figures.

    Attributes:
        n: problems of the tier.
        greedy: greedy accuracy (pass@1 at temperature 0).
        avg: avg@k at the sampling temperature (the sampled pass@1).
    """

    n: int
    greedy: float
    avg: float


@dataclass(frozen=True)
class HeldoutReport:
    """The figures of one held-out evaluation.

    Attributes:
        n: problems.
        tier_mix: problems per tier.
        greedy_accuracy: share of problems (greedy episode unmasked) answered correctly.
        avg_at_k: mean over problems of the share of their sampled episodes answered correctly.
        k: sampled episodes per problem.
        temperature: their temperature.
        per_tier: :class:`TierScore` per tier.
        masked: masked episodes left out (greedy and sampled).
        wall_s: seconds the evaluation took.
    """

    n: int
    tier_mix: dict[str, int]
    greedy_accuracy: float
    avg_at_k: float
    k: int
    temperature: float
    per_tier: dict[str, TierScore]
    masked: int
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (:meth:`from_dict` reads it back)."""
        data = asdict(self)
        data["per_tier"] = {tier: asdict(score) for tier, score in self.per_tier.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldoutReport:
        """A report from :meth:`to_dict`'s output."""
        fields = dict(data)
        fields["per_tier"] = {t: TierScore(**s) for t, s in data["per_tier"].items()}
        return cls(**fields)

    def to_metrics(self, prefix: str = "heldout/") -> dict[str, float]:
        """Flat scalars for logging: ``heldout/greedy_accuracy``, ``heldout/avg@4``,
        ``heldout/n``, ``heldout/masked``, ``heldout/wall_s`` and ``heldout/<tier>/greedy`` /
        ``heldout/<tier>/avg@4`` per tier."""
        out = {
            f"{prefix}greedy_accuracy": self.greedy_accuracy,
            f"{prefix}n": float(self.n),
            f"{prefix}masked": float(self.masked),
            f"{prefix}wall_s": self.wall_s,
        }
        if self.k:
            out[f"{prefix}avg@{self.k}"] = self.avg_at_k
        for tier, score in self.per_tier.items():
            out[f"{prefix}{tier}/greedy"] = score.greedy
            if self.k:
                out[f"{prefix}{tier}/avg@{self.k}"] = score.avg
        return out


def _success_rates(trajectories: dict[str, list[Trajectory]]) -> dict[str, float]:
    """Each prompt's share of unmasked episodes with a positive reward (prompts with none
    unmasked left out)."""
    rates: dict[str, float] = {}
    for key, trajs in trajectories.items():
        scored = [t for t in trajs if not t.masked]
        if scored:
            rates[key] = sum(t.reward > 0 for t in scored) / len(scored)
    return rates


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


async def evaluate_heldout(
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    pool: SandboxPool,
    spec: EpisodeSpec,
    heldout: HeldoutSet,
    *,
    k: int = 4,
    temperature: float = 1.0,
    episodes_in_flight: int = 32,
    episode_timeout_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> HeldoutReport:
    """Score ``policy`` on ``heldout``: greedy, then avg@``k`` at ``temperature`` (top-p 1,
    top-k off); ``k = 0`` scores greedy only (avg@k is then NaN). ``spec`` is the training
    spec; only its sampling temperature and filters are replaced.

    Raises:
        ValueError: ``k < 0`` or ``temperature <= 0``.
        RolloutError: too many episodes were masked (more than half).
    """
    if k < 0 or not temperature > 0:
        raise ValueError(f"need k >= 0 and temperature > 0, got k={k}, temperature={temperature}")
    t0 = time.monotonic()
    runs: list[dict[str, list[Trajectory]]] = []
    passes = [(spec.with_sampling(temperature=0.0, top_p=1.0, top_k=0), 1)]
    if k:
        passes.append((spec.with_sampling(temperature=temperature, top_p=1.0, top_k=0), k))
    for run_spec, samples in passes:
        runs.append(
            await sample_each_task(
                episode_fn(run_spec, policy, tokenizer, pool),
                heldout.tasks,
                samples,
                policy=policy,
                episodes_in_flight=episodes_in_flight,
                episode_timeout_s=episode_timeout_s,
                on_progress=on_progress,
            )
        )
    greedy = _success_rates(runs[0])
    sampled = _success_rates(runs[1]) if k else {}
    masked = sum(t.masked for r in runs for trajs in r.values() for t in trajs)
    per_tier: dict[str, TierScore] = {}
    for tier in heldout.tier_mix:
        keys = [t.key for t in heldout.tasks if tier_of(t) == tier]
        per_tier[tier] = TierScore(
            n=len(keys),
            greedy=_mean(greedy[x] for x in keys if x in greedy),
            avg=_mean(sampled[x] for x in keys if x in sampled) if k else math.nan,
        )
    return HeldoutReport(
        n=len(heldout.tasks),
        tier_mix=dict(heldout.tier_mix),
        greedy_accuracy=_mean(greedy.values()),
        avg_at_k=_mean(sampled.values()) if k else math.nan,
        k=k,
        temperature=temperature,
        per_tier=per_tier,
        masked=masked,
        wall_s=time.monotonic() - t0,
    )
