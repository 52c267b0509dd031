"""The contract between the agent loop, the replay buffer and the trainer inside verl.

verl stores each finished trajectory in TransferQueue with the dataset row's columns and the
agent loop's ``AgentLoopOutput.extra_fields``. These names are what spo-gym's three parts read
and write there; nothing else is shared between them.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

AGENT_NAME: Final = "spo_gym_tool_agent"
"""The agent loop's registered name (the dataset's ``agent_name`` column)."""

PROMPT_KEY: Final = "prompt_key"
"""Dataset column: the stable per-prompt key the SPO tracker is indexed by."""

TRAINER_MODE: Final = "spo"
"""``trainer.v1.trainer_mode`` of the single-stream trainer."""

Termination = Literal["answer", "no_answer", "max_turns", "token_budget", "masked"]


class SPOExtraFields(TypedDict):
    """What the agent loop puts in ``AgentLoopOutput.extra_fields`` (beside verl's own keys).

    Attributes:
        spo_masked: an infrastructure failure (no container, ungradeable answer, backend
            failure; DESIGN.md's masking rule). Never trained on, never counted toward B, never
            shown to the tracker.
        spo_finished_at: ``time.time()`` when the episode ended; the replay buffer takes the
            first B finished trajectories in this order.
        spo_prompt_key: the row's :data:`PROMPT_KEY` (also readable as a top-level field).
        spo_turns: model turns taken.
        spo_termination: why the episode ended.
        spo_policy_versions: the policy version (verl global step) of each model turn.
        spo_timings: seconds spent in the LLM, the sandbox and the grader.
    """

    spo_masked: bool
    spo_finished_at: float
    spo_prompt_key: str
    spo_turns: int
    spo_termination: str
    spo_policy_versions: list[int]
    spo_timings: dict[str, float]
