"""What one episode leaves for the learner: tokens, mask, log-probs, reward, and how it went."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from agents.policy import LogProbMode, SamplingParams
from agents.transcript import Drift
from envs.core import ScoreStatus, TerminationReason
from sandbox import RunResult


@dataclass
class EpisodeTimings:
    """Where an episode's wall time went (seconds).

    Attributes:
        queue_wait_s: from the engine scheduling the prompt to the episode starting.
        llm_s: inside ``policy.generate`` (includes waiting for a batch slot).
        sandbox_s: inside tool calls (``env.astep`` minus grading).
        grader_s: scoring the final answer.
        total_s: the whole episode, queue wait excluded.
    """

    queue_wait_s: float = 0.0
    llm_s: float = 0.0
    sandbox_s: float = 0.0
    grader_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Trajectory:
    """One finished episode, token for token.

    ``response_ids`` interleaves the model's sampled tokens (``response_mask`` 1, with their
    behaviour log-probs) and observation tokens (mask 0, log-prob 0.0), exactly as the policy
    saw them. ``masked`` episodes were lost to infrastructure outside a cell (no sandbox, the
    policy backend failed): learners leave them out of statistics, loss and tracker.

    Policy versions. Weights may be updated while an episode runs, so its tokens can come from
    several versions. ``response_versions[i]`` is the version that sampled response token
    ``i``; an observation token carries the version of the last sampled token before it, so the
    array is non-decreasing and a learner can use ``current - response_versions`` as each
    token's staleness directly (under the mask). ``policy_version`` is the oldest version in
    the episode — its staleness is ``current - policy_version``.

    Attributes:
        prompt_key: the task's canonical key (opaque to the learner).
        episode_id: unique id of this episode.
        prompt_ids: the rendered opening conversation.
        response_ids / response_mask / response_logprobs: see above.
        reward: the env's reward (0 for masked episodes).
        score_status: the verdict's :data:`envs.core.ScoreStatus`, or "unscored" (truncated
            and not scored, or masked).
        grade_detail: the grader's explanation.
        turns: model turns taken.
        tool_results: the sandbox results of the episode's code cells, in order.
        termination_reason: how it ended (see :data:`envs.core.TerminationReason`; the
            engine adds "error" and "cancelled" for episode functions that raised or were
            cancelled).
        masked: see above; ``mask_reason`` says why.
        policy_version: the oldest policy version among the episode's sampled tokens (the
            version at admission if it sampled none).
        timings: where the time went.
        drift: transcript drift records (empty when the tokens match the chat template).
        data_source: the task's data source.
        group_id: set in group (GRPO) mode: the episodes of one prompt share it.
        text: the model-visible response text (for display and debugging).
        answer: the task's reference answer.
        sample_index: which sample of its prompt this episode is in the run (the k-th episode
            started on that prompt; within a group, consecutive for its members).
        response_versions: see above (same length as ``response_ids``).
        turn_versions: for each model turn, the version that sampled its first token.
        log_prob_mode: the kind of ``response_logprobs`` (see
            :data:`~agents.policy.LogProbMode`); a learner must reject any kind but
            ``"tempered"`` for the PPO ratio.
        sampling: the episode's sampling params (stop strings and per-turn ``max_tokens`` as
            the env set them; ``seed`` is the run seed, from which request ``k``'s seed is
            ``turn_seed(seed, prompt_key, sample_index, k)``); ``None`` if it never sampled.
    """

    prompt_key: str
    episode_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    reward: float
    score_status: ScoreStatus | Literal["unscored"]
    grade_detail: str
    turns: int
    tool_results: list[RunResult]
    termination_reason: TerminationReason
    masked: bool
    policy_version: int
    timings: EpisodeTimings = field(default_factory=EpisodeTimings)
    drift: list[Drift] = field(default_factory=list)
    data_source: str = ""
    group_id: str | None = None
    mask_reason: str = ""
    text: str = ""
    answer: str = ""
    sample_index: int = 0
    response_versions: list[int] = field(default_factory=list)
    turn_versions: list[int] = field(default_factory=list)
    log_prob_mode: LogProbMode = "tempered"
    sampling: SamplingParams | None = None

    def staleness(self, current_version: int) -> int:
        """Policy versions between the episode's oldest token and ``current_version``."""
        return current_version - self.policy_version

    @property
    def num_model_tokens(self) -> int:
        """Tokens the policy sampled (mask 1)."""
        return sum(self.response_mask)

    @property
    def num_observation_tokens(self) -> int:
        """Tokens of tool output and other observations (mask 0)."""
        return len(self.response_mask) - self.num_model_tokens

    @property
    def used_tool(self) -> bool:
        """Whether any code cell ran."""
        return bool(self.tool_results)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (token arrays included)."""
        return {
            "prompt_key": self.prompt_key,
            "episode_id": self.episode_id,
            "prompt_ids": self.prompt_ids,
            "response_ids": self.response_ids,
            "response_mask": self.response_mask,
            "response_logprobs": self.response_logprobs,
            "reward": self.reward,
            "score_status": self.score_status,
            "grade_detail": self.grade_detail,
            "turns": self.turns,
            "tool_statuses": [r.status.value for r in self.tool_results],
            "termination_reason": self.termination_reason,
            "masked": self.masked,
            "mask_reason": self.mask_reason,
            "policy_version": self.policy_version,
            "timings": vars(self.timings),
            "drift": [vars(d) | {"cause": d.cause.value} for d in self.drift],
            "data_source": self.data_source,
            "group_id": self.group_id,
            "text": self.text,
            "answer": self.answer,
            "sample_index": self.sample_index,
            "response_versions": self.response_versions,
            "turn_versions": self.turn_versions,
            "log_prob_mode": self.log_prob_mode,
            "sampling": self.sampling.to_dict() if self.sampling is not None else None,
        }
