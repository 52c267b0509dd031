"""``Task``: one problem, as every task source (files, generators) hands it to an environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envs.grading import AnswerOrder
from envs.tasks.keys import prompt_key

__all__ = ["ANSWER_ORDERS", "AnswerOrder", "ChatMessage", "Task"]

ANSWER_ORDERS: tuple[AnswerOrder, ...] = ("notation", "ordered", "unordered")
"""The values of :attr:`Task.answer_order`."""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat prompt (``role`` is e.g. "system", "user", "assistant")."""

    role: str
    content: str


@dataclass(frozen=True)
class Task:
    r"""One problem: what the policy is asked, and what its answer is checked against.

    Attributes:
        key: the canonical prompt key of :attr:`problem` (see :mod:`envs.tasks.keys`).
        prompt: the problem text, or a chat prompt (as in verl datasets).
        answer: the gold answer, as the grader receives it. Empty only for task families that
            are scored by their own scorer (some reasoning-gym datasets).
        data_source: where the task comes from (verl's ``data_source``, or the file name).
        extra: anything else the source carried (verl's ``extra_info``, generator settings).
        answer_order: whether the order of a list answer matters, as the grader reads it
            (:data:`envs.grading.AnswerOrder`): "notation" (the default: a set ``\{…\}`` is
            unordered, a tuple or a list of values ordered), or "ordered" / "unordered" when
            the problem says ("enter all solutions" is unordered).
    """

    key: str
    prompt: str | tuple[ChatMessage, ...]
    answer: str
    data_source: str
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    answer_order: AnswerOrder = "notation"

    @classmethod
    def create(
        cls,
        prompt: str | tuple[ChatMessage, ...],
        answer: str,
        data_source: str,
        extra: Mapping[str, Any] | None = None,
        *,
        answer_order: AnswerOrder = "notation",
    ) -> Task:
        """Build a task, deriving its key from the problem text.

        Raises:
            ValueError: ``answer_order`` is not one of :data:`ANSWER_ORDERS`.
        """
        if answer_order not in ANSWER_ORDERS:
            raise ValueError(
                f"answer_order must be one of {', '.join(ANSWER_ORDERS)}, got {answer_order!r}"
            )
        task = cls("", prompt, answer, data_source, dict(extra or {}))
        key = prompt_key(task.problem)
        return cls(key, prompt, answer, data_source, task.extra, answer_order)

    @property
    def problem(self) -> str:
        """The problem text: the prompt itself, or the content of its last user message.

        System and template messages are left out so that a key survives a prompt-template
        change.
        """
        if isinstance(self.prompt, str):
            return self.prompt
        users = [m.content for m in self.prompt if m.role == "user"]
        return users[-1] if users else ""

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a text prompt becomes one user message)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": m.role, "content": m.content} for m in self.prompt]
