"""One evaluated sample — a finished, scored episode — as ``samples.jsonl`` stores it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.trajectory import Trajectory
from envs.grading import extract_boxed

__all__ = ["EvalSample", "Lost", "sample_id"]


def sample_id(problem_key: str, sample_index: int) -> str:
    """The id of sample ``sample_index`` of a problem; unique within a run."""
    return f"{problem_key}#{sample_index}"


@dataclass(frozen=True)
class EvalSample:
    r"""A finished sample: what the model answered and how it got there.

    Attributes:
        problem_key: the task's canonical key.
        sample_index: which of the problem's ``k`` samples (it seeds the sampling).
        answer: the last ``\boxed{}`` of the model's own text (observations excluded), the
            answer it votes with; ``None`` if it boxed nothing.
        correct: the env's verdict (reward > 0).
        reward: the env's reward.
        score_status: how the verdict was reached (:data:`envs.core.ScoreStatus`, or
            "unscored" for an episode cut short before it answered).
        grade_detail: the grader's explanation.
        termination_reason: how the episode ended.
        turns: model turns.
        tool_calls: code cells run.
        tool_statuses: each cell's sandbox status ("ok", "error", "timeout", …).
        model_tokens: tokens the model sampled.
        observation_tokens: tokens of tool output in the context.
        llm_s / sandbox_s / grader_s / total_s: where the episode's time went.
        attempts: tries it took (more than 1 after infrastructure failures).
        response: the model's own text, turns joined (what the grader reads).
        transcript: the whole response as the model saw it, tool output included.
    """

    problem_key: str
    sample_index: int
    answer: str | None
    correct: bool
    reward: float
    score_status: str
    grade_detail: str
    termination_reason: str
    turns: int
    tool_calls: int
    tool_statuses: list[str] = field(default_factory=list)
    model_tokens: int = 0
    observation_tokens: int = 0
    llm_s: float = 0.0
    sandbox_s: float = 0.0
    grader_s: float = 0.0
    total_s: float = 0.0
    attempts: int = 1
    response: str = ""
    transcript: str = ""

    @property
    def id(self) -> str:
        """See :func:`sample_id`."""
        return sample_id(self.problem_key, self.sample_index)

    @classmethod
    def from_trajectory(cls, traj: Trajectory, response: str, attempts: int) -> EvalSample:
        """The sample of an unmasked trajectory whose model text is ``response``.

        Raises:
            ValueError: the trajectory is masked (an infrastructure loss is not a sample).
        """
        if traj.masked:
            raise ValueError(f"a masked episode is not a sample: {traj.mask_reason}")
        t = traj.timings
        return cls(
            problem_key=traj.prompt_key,
            sample_index=traj.sample_index,
            answer=extract_boxed(response),
            correct=traj.reward > 0,
            reward=traj.reward,
            score_status=traj.score_status,
            grade_detail=traj.grade_detail,
            termination_reason=traj.termination_reason,
            turns=traj.turns,
            tool_calls=len(traj.tool_results),
            tool_statuses=[r.status.value for r in traj.tool_results],
            model_tokens=traj.num_model_tokens,
            observation_tokens=traj.num_observation_tokens,
            llm_s=t.llm_s,
            sandbox_s=t.sandbox_s,
            grader_s=t.grader_s,
            total_s=t.total_s,
            attempts=attempts,
            response=response,
            transcript=traj.text,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON line of this sample (with its ``id``)."""
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSample:
        """Read :meth:`to_dict`'s output (``id`` is derived, so ignored).

        Raises:
            ValueError: a field is missing or unknown.
        """
        fields = {k: v for k, v in data.items() if k != "id"}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ValueError(f"not an eval sample: {exc}") from None


@dataclass(frozen=True)
class Lost:
    """A sample every attempt of which was lost to infrastructure (masked episodes).

    It is neither a failure nor a finished sample: it stays out of every rate's denominator,
    is counted and shown on its own, and a resumed run tries it again.

    Attributes:
        problem_key / sample_index: which sample.
        attempts: tries made in the run that gave up.
        reason: the last attempt's mask reason.
    """

    problem_key: str
    sample_index: int
    attempts: int
    reason: str

    @property
    def id(self) -> str:
        """See :func:`sample_id`."""
        return sample_id(self.problem_key, self.sample_index)

    def to_dict(self) -> dict[str, Any]:
        """The JSON line of this loss."""
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Lost:
        """Read :meth:`to_dict`'s output."""
        return cls(
            problem_key=str(data["problem_key"]),
            sample_index=int(data["sample_index"]),
            attempts=int(data["attempts"]),
            reason=str(data["reason"]),
        )
