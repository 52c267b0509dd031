"""Task files: JSONL / JSON / parquet rows in verl's schema or a plain problem–answer form.

Two row forms are accepted:

* **verl**: ``prompt`` (a string or a list of ``{role, content}`` messages),
  ``reward_model.ground_truth``, optional ``data_source`` and ``extra_info`` (an object). Further
  columns (``ability``, ``agent_name``, …) are kept in :attr:`Task.extra` next to ``extra_info``.
* **plain**: the problem in ``problem``, ``question``, ``input`` or ``prompt``; the answer in
  ``answer``, ``output`` or ``final_answer`` (like the AIME files: ``{"input", "output"}``). Other
  fields go to :attr:`Task.extra`.

Whether the order of a list answer matters (:attr:`Task.answer_order`) is read from
``extra_info.answer_order`` (verl) or an ``answer_order`` field (plain): "notation" (the
default), "ordered" or "unordered".

A row that cannot be used raises :class:`TaskDataError` naming the file, the row and the field.
Rows repeating an earlier prompt with the same answer are dropped (a prompt is one task for the
tracker and the sampler); with a different answer they are an error. Every answer is checked
with the grader (:meth:`envs.grading.Grader.check_golds`) as the file loads: an answer it
cannot read would grade every response wrong, so it is an error here, not an endless 0 in
training. Numbers need no worker; other answers are parsed by math-verify in the grader's
worker processes, in parallel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from envs.grading import Grader, default_grader
from envs.tasks.task import ANSWER_ORDERS, AnswerOrder, ChatMessage, Task

__all__ = ["TaskDataError", "load_tasks"]

PROBLEM_FIELDS = ("problem", "question", "input", "prompt")
ANSWER_FIELDS = ("answer", "output", "final_answer")


class TaskDataError(ValueError):
    """A task file, row or field that cannot be used.

    Attributes:
        path: the file.
        row: 1-based row number (the line number for JSONL), or ``None`` for the whole file.
        field: the offending field (dotted for nested ones, e.g. ``reward_model.ground_truth``),
            or ``None``.
    """

    def __init__(self, path: str | Path, row: int | None, field: str | None, problem: str):
        self.path = Path(path)
        self.row = row
        self.field = field
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class _FieldError(Exception):
    """A bad field inside one row; the loader adds the file and the row."""

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _text(value: Any, field: str) -> str:
    # Integers are accepted: many datasets store numeric answers as numbers.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _FieldError(field, f"must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _FieldError(field, "is empty")
    return text


def _prompt(value: Any, field: str) -> str | tuple[ChatMessage, ...]:
    if isinstance(value, str):
        return _text(value, field)
    if not isinstance(value, list | tuple) or not value:
        raise _FieldError(field, "must be a string or a non-empty list of chat messages")
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, Mapping):
            raise _FieldError(where, "must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise _FieldError(f"{where}.role", "must be a non-empty string")
        if not isinstance(content, str):
            raise _FieldError(f"{where}.content", "must be a string")
        messages.append(ChatMessage(role, content))
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise _FieldError(field, "has no non-empty user message")
    return tuple(messages)


def _answer_order(value: Any, field: str) -> AnswerOrder:
    for order in ANSWER_ORDERS:
        if value == order:
            return order
    raise _FieldError(field, f"must be one of {', '.join(ANSWER_ORDERS)}, got {value!r}")


def _task_from_row(row: Mapping[str, Any], default_source: str) -> tuple[Task, str]:
    """The row's task, and the field its answer came from."""
    if not isinstance(row, Mapping):
        raise _FieldError(None, f"a row must be an object, got {type(row).__name__}")
    source = row.get("data_source")
    if source is None:  # absent, or a null in a parquet column
        source = default_source
    if not isinstance(source, str) or not source:
        raise _FieldError("data_source", "must be a non-empty string")
    if "reward_model" in row:
        reward_model = row["reward_model"]
        if not isinstance(reward_model, Mapping):
            raise _FieldError("reward_model", "must be an object with 'ground_truth'")
        if reward_model.get("ground_truth") is None:
            raise _FieldError("reward_model.ground_truth", "is missing")
        answer = _text(reward_model["ground_truth"], "reward_model.ground_truth")
        if "prompt" not in row:
            raise _FieldError("prompt", "is missing")
        prompt = _prompt(row["prompt"], "prompt")
        extra_info = row.get("extra_info") or {}
        if not isinstance(extra_info, Mapping):
            raise _FieldError("extra_info", "must be an object")
        order: AnswerOrder = "notation"
        if extra_info.get("answer_order") is not None:
            order = _answer_order(extra_info["answer_order"], "extra_info.answer_order")
        known = {"prompt", "reward_model", "data_source", "extra_info"}
        extra = {k: v for k, v in row.items() if k not in known} | dict(extra_info)
        task = Task.create(prompt, answer, source, extra, answer_order=order)
        return task, "reward_model.ground_truth"

    problem_field = next((f for f in PROBLEM_FIELDS if row.get(f) is not None), None)
    if problem_field is None:
        raise _FieldError(
            "problem", f"no problem text: expected one of {', '.join(PROBLEM_FIELDS)}"
        )
    answer_field = next((f for f in ANSWER_FIELDS if row.get(f) is not None), None)
    if answer_field is None:
        raise _FieldError("answer", f"no answer: expected one of {', '.join(ANSWER_FIELDS)}")
    prompt = _prompt(row[problem_field], problem_field)
    answer = _text(row[answer_field], answer_field)
    order = "notation"
    if row.get("answer_order") is not None:
        order = _answer_order(row["answer_order"], "answer_order")
    used = {problem_field, answer_field, "data_source", "answer_order"}
    extra = {k: v for k, v in row.items() if k not in used}
    return Task.create(prompt, answer, source, extra, answer_order=order), answer_field


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskDataError(path, number, None, f"invalid JSON ({e.msg})") from e
    elif suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskDataError(path, None, None, f"invalid JSON ({e.msg})") from e
        if not isinstance(rows, list):
            raise TaskDataError(path, None, None, "a .json task file must hold a list of rows")
        yield from enumerate(rows, 1)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except pa.ArrowException as e:
            raise TaskDataError(path, None, None, f"cannot read parquet: {e}") from e
        yield from enumerate(table.to_pylist(), 1)
    else:
        raise TaskDataError(path, None, None, "unsupported file type (.jsonl, .json, .parquet)")


def load_tasks(
    path: str | Path,
    *,
    data_source: str | None = None,
    limit: int | None = None,
    check_answers: bool = True,
    grader: Grader | None = None,
) -> list[Task]:
    """Load the tasks of a ``.jsonl``, ``.json`` or ``.parquet`` file, in file order.

    Args:
        path: the file.
        data_source: for rows without one (default: the file name without its suffix).
        limit: stop after this many tasks.
        check_answers: check that the grader can read every answer (see the module
            docstring); turn off only for answers a different scorer judges.
        grader: the grader to check with (default :func:`envs.grading.default_grader`).

    Raises:
        TaskDataError: a row cannot be used, two rows give one prompt different answers, or
            the grader cannot read an answer.
        envs.grading.GraderUnavailable: the grader could not run to check the answers.
        OSError: the file cannot be read.
    """
    path = Path(path)
    source = data_source or path.stem
    tasks: list[Task] = []
    where: list[tuple[int, str]] = []  # (row, answer field) of each task
    seen: dict[str, tuple[int, str]] = {}  # key -> (row, answer)
    for number, row in _rows(path):
        if limit is not None and len(tasks) >= limit:
            break
        try:
            task, answer_field = _task_from_row(row, source)
        except _FieldError as e:
            raise TaskDataError(path, number, e.field, e.problem) from None
        if task.key in seen:
            first_row, first_answer = seen[task.key]
            if first_answer != task.answer:
                raise TaskDataError(
                    path,
                    number,
                    "answer",
                    f"the prompt of row {first_row} again, with a different answer "
                    f"({task.answer!r} vs {first_answer!r})",
                )
            continue
        seen[task.key] = (number, task.answer)
        tasks.append(task)
        where.append((number, answer_field))
    if check_answers and tasks:
        reasons = (grader or default_grader()).check_golds([t.answer for t in tasks])
        for (number, field), reason in zip(where, reasons, strict=True):
            if reason is not None:
                raise TaskDataError(path, number, field, f"the grader cannot read it: {reason}")
    return tasks
