"""What one training step reports: a typed record for live views, JSONL and TensorBoard."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepReport:
    """One learner step's figures (means over the step's unmasked trajectories unless said).

    Attributes:
        step: steps done, this one included.
        policy_version: the rollout policy's version after this step's weight push.
        episodes: trajectories delivered so far (masked included) — the episode budget's count.
        trajectories: trajectories in this step's batch.
        masked: of those, masked (left out of loss, statistics and tracker).
        tokens: model tokens trained on.
        reward_mean: mean reward.
        loss: policy loss, mean over the optimizer steps.
        frac_zero_adv: share of trajectories with |Ã| ≤ 1e-4.
        frac_near_zero_adv: share with |Ã| ≤ 0.02.
        degenerate_share: GRPO: share of trajectories in all-equal-reward groups (else 0).
        adv_variance: unbiased variance of Ã.
        adv_raw_variance: unbiased variance of the advantage before normalisation.
        carried_share: share of trajectories holding tokens of an older policy version.
        staleness_mean / staleness_max: policy versions between a trajectory's oldest token
            and the batch.
        tracker_value_mean / tracker_neff_mean: v̂ and N_eff over all prompts, after the update.
        baseline_mean: mean pre-update v̂ of the batch's prompts (SPO).
        rho_mean: mean forgetting factor of the tracker update (SPO; 0 for GRPO).
        first_visit_share: share of the batch's prompts with no stored response (D = 0).
        behaviour_mismatch: mean |logπ_rollout − logπ_old| on current-version tokens.
        behaviour_mismatch_all: the same on every token (older versions included).
        clip_frac / dual_clip_frac: token shares where the clip / the dual clip is active.
        approx_kl: mean logπ_old − logπ over the update.
        is_weight_mean / is_truncated_frac: truncated importance weights on older-version tokens.
        grad_norm: pre-clip gradient norm, mean over the optimizer steps.
        lr: the learning rate of the step's optimizer steps (after any warm-up).
        optimizer_steps: optimizer steps taken.
        llm_s / sandbox_s / grader_s: per-episode mean seconds in generation, tool calls and
            grading.
        rollout_wait_s: seconds the learner waited for the batch.
        learner_s: seconds of learner computation (π_old, update, ρ), off the event loop.
        sync_s: seconds of the weight push (engine paused).
        generation_idle_s: seconds the rollout side waited on the learner: learner computation
            while no episode was running, plus the weight push (the engine paused).
        wall_s: the step's wall time.
        eval: the evaluation hook's figures, if it ran after this step.
        checkpoint: the checkpoint written after this step, if any.
    """

    step: int
    policy_version: int
    episodes: int
    trajectories: int
    masked: int
    tokens: int
    reward_mean: float
    loss: float
    frac_zero_adv: float
    frac_near_zero_adv: float
    degenerate_share: float
    adv_variance: float
    adv_raw_variance: float
    carried_share: float
    staleness_mean: float
    staleness_max: int
    tracker_value_mean: float
    tracker_neff_mean: float
    baseline_mean: float
    rho_mean: float
    first_visit_share: float
    behaviour_mismatch: float
    behaviour_mismatch_all: float
    clip_frac: float
    dual_clip_frac: float
    approx_kl: float
    is_weight_mean: float
    is_truncated_frac: float
    grad_norm: float
    lr: float
    optimizer_steps: int
    llm_s: float
    sandbox_s: float
    grader_s: float
    rollout_wait_s: float
    learner_s: float
    sync_s: float
    generation_idle_s: float
    wall_s: float
    eval: dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""

    @property
    def learner_wait_share(self) -> float:
        """Share of the step the learner spent waiting for rollouts."""
        return self.rollout_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def generation_idle_share(self) -> float:
        """Share of the step the rollout side spent with no episode running."""
        return self.generation_idle_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, the two shares included."""
        return {
            **asdict(self),
            "learner_wait_share": self.learner_wait_share,
            "generation_idle_share": self.generation_idle_share,
        }
