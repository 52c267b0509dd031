"""A dataset row, as verl hands it to an agent loop, read as the task an env plays.

``spo-gym data prepare`` writes rows with ``data_source``, ``prompt`` (chat messages holding the
bare question), ``ability``, ``reward_model.ground_truth``, ``agent_name``, ``prompt_key`` and
``extra_info`` (``index``, ``question``, ``answer``, ``env``, ``split``). verl's ``RLHFDataset``
passes every column to ``AgentLoopBase.run`` as a keyword argument, adds ``raw_prompt`` (the
prompt messages, multimodal placeholders resolved), ``index`` and ``tools_kwargs``, and the V1
trainer adds ``uid``, ``global_steps`` and ``session_id`` (which of the prompt's ``rollout.n``
samples this is).

The question is taken from those messages; the env renders its own prompt around it (system
prompt, tool instructions, demonstrations), so training sees exactly the conversation that
``spo-gym run`` and evaluation see. The row's ``prompt_key`` is kept as the task's key: it is
the SPO tracker's index, and it must not change with the prompt template.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.tasks import ChatMessage, Task
from envs.tasks.task import ANSWER_ORDERS
from spo_core.verl.fields import PROMPT_KEY

__all__ = ["EpisodeRow", "RowError"]


class RowError(ValueError):
    """A dataset row the agent loop cannot play; the message names the field."""


@dataclass(frozen=True)
class EpisodeRow:
    """What one agent-loop call plays.

    Attributes:
        task: the problem, keyed by the row's ``prompt_key``.
        env: the row's ``extra_info.env`` (``None``: the config's default env).
        sample_index: which sample of its prompt this is (verl's ``session_id``; 0 without).
        global_steps: the trainer step the row was dispatched at (V1 trainer), if given.
    """

    task: Task
    env: str | None
    sample_index: int
    global_steps: int | None

    @classmethod
    def parse(cls, row: Mapping[str, Any]) -> EpisodeRow:
        """Reads the keyword arguments verl passes to ``run``.

        Raises:
            RowError: a missing or malformed field.
        """
        extra = _plain(row.get("extra_info"))
        if extra is None:
            extra = {}
        if not isinstance(extra, Mapping):
            raise RowError("dataset row: field 'extra_info' must be an object")
        messages = _messages(row)
        reward_model = _plain(row.get("reward_model"))
        if not isinstance(reward_model, Mapping) or reward_model.get("ground_truth") is None:
            raise RowError("dataset row: field 'reward_model.ground_truth' is missing")
        answer = reward_model["ground_truth"]
        if isinstance(answer, bool) or not isinstance(answer, str | int) or not str(answer).strip():
            raise RowError(
                "dataset row: field 'reward_model.ground_truth' must be a non-empty string"
            )
        source = row.get("data_source") or "verl"
        if not isinstance(source, str):
            raise RowError("dataset row: field 'data_source' must be a string")
        order = extra.get("answer_order") or "notation"
        if order not in ANSWER_ORDERS:
            raise RowError(
                f"dataset row: field 'extra_info.answer_order' must be one of "
                f"{', '.join(ANSWER_ORDERS)}, got {order!r}"
            )
        task = Task.create(messages, str(answer).strip(), source, extra, answer_order=order)
        key = row.get(PROMPT_KEY)
        if key is not None:
            if not isinstance(key, str) or not key:
                raise RowError(f"dataset row: field '{PROMPT_KEY}' must be a non-empty string")
            task = dataclasses.replace(task, key=key)
        env = extra.get("env")
        if env is not None and (not isinstance(env, str) or not env):
            raise RowError("dataset row: field 'extra_info.env' must be a non-empty string")
        return cls(
            task=task,
            env=env,
            sample_index=_int(row.get("session_id"), "session_id") or 0,
            global_steps=_int(row.get("global_steps"), "global_steps"),
        )


def _plain(value: Any) -> Any:
    """A numpy scalar or array (how verl's batches carry non-tensor columns) as Python."""
    if isinstance(value, np.ndarray):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _messages(row: Mapping[str, Any]) -> tuple[ChatMessage, ...]:
    field = "raw_prompt" if row.get("raw_prompt") is not None else "prompt"
    value = _plain(row.get(field))
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, Sequence) or not value:
        raise RowError(f"dataset row: field '{field}' must be a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise RowError(f"dataset row: field '{field}[{i}]' must have a text 'content'")
        messages.append(ChatMessage(str(message.get("role", "")), message["content"]))
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise RowError(f"dataset row: field '{field}' has no non-empty user message")
    return tuple(messages)


def _int(value: Any, field: str) -> int | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"dataset row: field '{field}' must be an integer, got {value!r}")
    return value
