"""What a tool env declares to the agent that drives it: its generation controls.

The env has no tokenizer and does not sample; the agent does both. So the env *declares*
how it must be driven — where to stop a turn, how tool calls are written, how an answer
enters the conversation, how long an episode may run — and the agent honours it. Token
limits are enforced by the agent's transcript, which reports an exhausted budget back with
:meth:`envs.core.ToolEnv.truncate`; the env itself cuts observations by characters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from envs.formats import ToolFormat

__all__ = [
    "GenerationSpec",
    "ObservationPlacement",
    "ObservationRole",
    "TruncationSide",
    "TurnCut",
]

ObservationPlacement = Literal["inline", "message"]
"""Where an observation goes: "inline" — appended raw to the assistant's own stream, no new chat
turn (ReTool's ``<interpreter>`` block); "message" — a new chat message after the assistant's
turn (a hermes ``tool`` message, or a ``user`` turn)."""
ObservationRole = Literal["tool", "user"]
"""The chat role of "message" observations."""
TruncationSide = Literal["head", "middle", "tail"]
TurnCut = Literal["truncate", "continue"]
"""What a turn cut by ``max_turn_tokens`` means: "truncate" — the episode ends (reason
"turn_tokens") and the cut turn is never run nor graded; "continue" — the agent keeps generating
the same turn until it stops by itself or a budget ends the episode."""

_FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "retool": {"stop": ("</code>",), "observation_placement": "inline"},
    "hermes": {"stop": ("</tool_call>",), "observation_placement": "message"},
}


@dataclass(frozen=True)
class GenerationSpec:
    """Generation controls an agent must honour when driving an env.

    Attributes:
        tool_format: how the model writes a tool call: "retool" (``<code>`` blocks) or
            "hermes" (``<tool_call>`` JSON). See :mod:`envs.formats`.
        stop: stop sequences that end an assistant turn (``</code>`` for ReTool, so a turn
            ends where its code does and the observation follows at once).
        include_stop: whether the matched stop sequence stays in the action text (it must
            for the parsers, which look for the closing tag).
        observation_placement: see :data:`ObservationPlacement`.
        observation_role: the chat role of "message" observations (hermes: "tool").
        max_turns: assistant turns per episode. The env ends the episode with
            ``truncated=True`` (reason "max_turns") when the last allowed turn still calls a
            tool.
        max_turn_tokens: tokens one assistant turn may generate (``None``: no limit beyond
            the episode budget).
        turn_cut: what a turn cut by ``max_turn_tokens`` means; see :data:`TurnCut`. A cut
            turn is never handed to ``step``: a ``\boxed{}`` written mid-reasoning is not a
            final answer.
        max_episode_tokens: tokens of the whole response — generated *and* observation
            tokens, as in the SPO paper — after the prompt. ``None``: no budget. When it
            runs out the agent calls ``env.truncate("token_budget", unfinished_turn)``.
        max_observation_chars: observations longer than this are cut by the env.
        truncation_side: where a long observation is cut: "middle" keeps both ends,
            "tail" keeps the beginning, "head" keeps the end.
    """

    tool_format: ToolFormat = "retool"
    stop: tuple[str, ...] = ("</code>",)
    include_stop: bool = True
    observation_placement: ObservationPlacement = "inline"
    observation_role: ObservationRole = "tool"
    max_turns: int = 8
    max_turn_tokens: int | None = None
    turn_cut: TurnCut = "truncate"
    max_episode_tokens: int | None = None
    max_observation_chars: int = 4096
    truncation_side: TruncationSide = "middle"

    def __post_init__(self) -> None:
        if self.tool_format not in _FORMAT_DEFAULTS:
            raise ValueError(f"tool_format must be 'retool' or 'hermes', got {self.tool_format!r}")
        for name, allowed in (
            ("observation_placement", ("inline", "message")),
            ("observation_role", ("tool", "user")),
            ("turn_cut", ("truncate", "continue")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.truncation_side not in ("head", "middle", "tail"):
            raise ValueError(f"unknown truncation_side {self.truncation_side!r}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        for name in ("max_turn_tokens", "max_episode_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.max_observation_chars < 1:
            raise ValueError(
                f"max_observation_chars must be >= 1, got {self.max_observation_chars}"
            )
        object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def for_format(cls, tool_format: ToolFormat, **overrides: Any) -> GenerationSpec:
        """A spec with the stop sequences and placement that go with ``tool_format``."""
        return cls(tool_format=tool_format, **{**_FORMAT_DEFAULTS[tool_format], **overrides})

    def updated(self, overrides: Mapping[str, Any]) -> GenerationSpec:
        """A copy with ``overrides`` applied; a new ``tool_format`` brings its own defaults."""
        fmt = overrides.get("tool_format", self.tool_format)
        if fmt != self.tool_format:
            base = dataclasses.asdict(self)
            base.update(_FORMAT_DEFAULTS[fmt])
            return GenerationSpec(**{**base, **overrides})
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (e.g. to log with a run or send to a remote agent)."""
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data
