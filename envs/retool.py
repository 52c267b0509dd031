r"""``spo_gym/ReTool-v0``: solve a math problem with a Python interpreter, answer in ``\boxed{}``.

The ReTool setup: the model reasons in text, writes code in ``<code>`` blocks (generation
stops at ``</code>``), reads the output in an ``<interpreter>`` block appended to its own
stream, and ends with the final answer in the last ``\boxed{}``. The reward is 1 if that
answer grades equal to the task's gold answer (:func:`envs.grading.agrade`), else 0; a grader
timeout or error on the answer is recorded in ``info["score"].status``, and a grade that cannot
be computed (the grader down after retries, an unreadable gold) masks the episode.

Two sandbox modes:

- **stateful** (default): one Python session per episode; the system prompt
  (``configs/prompts/retool_system.j2``) tells the model that variables persist.
- **stateless** (``stateless=True``): the SPO authors' setup — no system prompt, their
  instructions and the question in one user message (``retool_spo_user.j2``), a fresh kernel
  per cell, and the value of a trailing expression printed automatically.

Two reward rules: ``"binary"`` (above) and ``"paper"`` for thinking models, the SPO authors'
format rule: 0 unless the response has exactly one ``</think>`` and no code after it, then
binary.

Tasks come from :mod:`envs.tasks`: pass ``reset(options={"task": task})`` per episode (as a
verl or SkyRL agent loop does with its dataset row), or give ``tasks=`` at construction and
let ``reset(seed=…)`` draw one.

Prompt templates are looked up in ``$SPO_GYM_PROMPTS`` (if set), then in the checkout's
``configs/prompts/``; a template argument may also be a path to a ``.j2`` file.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jinja2

from envs.core import Episode, Score, TaskSource, ToolEnv
from envs.formats import (
    CODE_INTERPRETER,
    Tool,
    ToolCall,
    ToolFormat,
    parse_action,
    render_call,
    render_observation,
)
from envs.generation import GenerationSpec
from envs.grading import agrade, extract_boxed
from envs.tasks import Task, arithmetic_tasks
from sandbox import SandboxPool

__all__ = [
    "PROMPTS_DIR",
    "ReToolEnv",
    "default_tasks",
    "load_demonstrations",
    "paper_format_problem",
    "render_template",
]

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "configs" / "prompts"
"""The checkout's prompt templates (the project is installed editable)."""

RewardRule = Literal["binary", "paper"]


class ReToolEnv(ToolEnv):
    r"""Math problems solved with a Python interpreter, answered in the last ``\boxed{}``.

    Args:
        tasks: tasks to draw from on reset (see :class:`~envs.core.ToolEnv`); default
            :func:`default_tasks`, so the env runs out of the box.
        pool: the sandbox pool; default :func:`envs.default_pool`.
        stateless: the SPO authors' stateless setup (prompt, fresh kernel per cell, trailing
            expression printed) instead of a persistent session.
        reward: "binary" or "paper" (the SPO authors' ``</think>`` format rule on top).
        system_template: a template name in the prompt directory or a path; "" for no system
            message; ``None`` for the mode's default.
        user_template: likewise for the user message (rendered with ``problem``).
        generation: generation controls or overrides (``{"max_turns": 4}``,
            ``{"tool_format": "hermes"}``).
        score_truncated: score truncated episodes instead of giving them 0.
        tool_timeout_s: time limit of one cell; default the pool's.
        acquire_timeout_s: how long to wait for a sandbox before masking the episode.
        demonstrations: worked examples (from ``retool_demos.json``) put before the problem as
            earlier turns, in the env's tool format. Small chat models follow a shown
            exchange far better than an instruction alone.
    """

    tools = (CODE_INTERPRETER,)
    default_generation = GenerationSpec()

    def __init__(
        self,
        *,
        tasks: TaskSource | None = None,
        pool: SandboxPool | None = None,
        stateless: bool = False,
        reward: RewardRule = "binary",
        system_template: str | None = None,
        user_template: str | None = None,
        generation: GenerationSpec | Mapping[str, Any] | None = None,
        score_truncated: bool = False,
        tool_timeout_s: float | None = None,
        acquire_timeout_s: float | None = None,
        demonstrations: int = 0,
    ) -> None:
        if reward not in ("binary", "paper"):
            raise ValueError(f"reward must be 'binary' or 'paper', got {reward!r}")
        super().__init__(
            tasks=tasks,
            pool=pool,
            generation=generation,
            score_truncated=score_truncated,
            tool_timeout_s=tool_timeout_s,
            acquire_timeout_s=acquire_timeout_s,
            stateless=stateless,
            echo_last_expr=stateless,
        )
        self.reward = reward
        if system_template is None:
            system_template = "" if stateless else "retool_system.j2"
        if user_template is None:
            user_template = "retool_spo_user.j2" if stateless else "retool_user.j2"
        self.system_template = system_template
        self.user_template = user_template
        # Rendered once: fails at construction, not mid-training, on a missing template.
        self.system_prompt = (
            render_template(system_template, **self._template_vars()) if system_template else ""
        )
        render_template(user_template, **self._template_vars(), problem="")
        demos = load_demonstrations()
        if not 0 <= demonstrations <= len(demos):
            raise ValueError(
                f"demonstrations must be between 0 and {len(demos)}, got {demonstrations}"
            )
        self.demonstrations = demonstrations

    def _template_vars(self) -> dict[str, Any]:
        return {
            "stateless": self.stateless,
            "tool_format": self.generation.tool_format,
            "max_turns": self.generation.max_turns,
        }

    def prompt(self, task: Task) -> list[dict[str, str]]:
        """The system prompt (unless stateless) and the problem in the user template.

        A chat-style task prompt contributes its last user message (:attr:`Task.problem`);
        its own system message gives way to this env's.
        """
        user = render_template(self.user_template, **self._template_vars(), problem=task.problem)
        messages = [*self._demo_messages(), {"role": "user", "content": user}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _demo_messages(self) -> list[dict[str, str]]:
        fmt = self.generation.tool_format
        messages: list[dict[str, str]] = []
        for demo in load_demonstrations()[: self.demonstrations]:
            problem = render_template(
                self.user_template, **self._template_vars(), problem=demo["problem"]
            )
            call = render_call(ToolCall(CODE_INTERPRETER.name, {"code": demo["code"]}), fmt)
            messages.append({"role": "user", "content": problem})
            if self.generation.observation_placement == "inline":
                observation = render_observation(demo["output"], fmt)
                messages.append(
                    {
                        "role": "assistant",
                        "content": demo["before"] + call + observation + demo["after"],
                    }
                )
            else:
                messages += [
                    {"role": "assistant", "content": demo["before"] + call},
                    {"role": self.generation.observation_role, "content": demo["output"]},
                    {"role": "assistant", "content": demo["after"]},
                ]
        return messages

    def default_task_source(self) -> TaskSource:
        """The built-in arithmetic-with-tool tasks (:func:`default_tasks`)."""
        return default_tasks()

    def answered(self, action: str) -> bool:
        r"""A final turn "answers" when it has a ``\boxed{}``."""
        return extract_boxed(action) is not None

    async def score(self, episode: Episode) -> Score:
        """Binary grade of the last ``\\boxed{}`` of the model's own text (``paper``: after the
        format rule), with the task's :attr:`~envs.tasks.Task.answer_order`.

        Raises:
            ScoreUnavailable: the grader could not run after retries, or cannot read the
                task's gold answer; the env masks the episode.
        """
        if self.reward == "paper":
            problem = paper_format_problem(
                episode.response, self.generation.tool_format, self._tools
            )
            if problem:
                return Score(0.0, status="format", detail=problem)
        task = episode.task
        return Score.from_grade(
            await agrade(task.answer, episode.response, order=task.answer_order)
        )

    def demo_actions(self) -> list[str]:
        """Two cells (the second reads the first's variable unless stateless), then the gold."""
        if self.episode is None:
            raise RuntimeError("call reset() first")
        fmt = self.generation.tool_format
        second = "print(6 * 7)" if self.stateless else "print(x + 1)"
        actions = [
            "Let me compute.\n"
            + render_call(ToolCall(CODE_INTERPRETER.name, {"code": "x = 41\nprint(x)"}), fmt),
            "Now check it.\n" + render_call(ToolCall(CODE_INTERPRETER.name, {"code": second}), fmt),
            f"The answer is \\boxed{{{self.episode.task.answer}}}.",
        ]
        if self.reward == "paper":
            actions[0] = "<think>\n" + actions[0]
            actions[-1] = "Done.\n</think>\n" + actions[-1]
        return actions


@functools.lru_cache(maxsize=1)
def default_tasks() -> tuple[Task, ...]:
    """What ``reset()`` draws from when no tasks are given: 512 built-in arithmetic tasks
    (4-digit operands, 2 operations)."""
    return tuple(arithmetic_tasks(512, digits=4, operations=2, seed=0))


@functools.lru_cache(maxsize=1)
def load_demonstrations() -> tuple[dict[str, str], ...]:
    """The worked examples of ``retool_demos.json`` (problem, before, code, output, after)."""
    for directory in _prompt_dirs():
        path = Path(directory) / "retool_demos.json"
        if path.is_file():
            return tuple(json.loads(path.read_text(encoding="utf-8")))
    raise FileNotFoundError(f"retool_demos.json not found in {', '.join(_prompt_dirs())}")


def paper_format_problem(
    response: str, tool_format: ToolFormat = "retool", tools: Mapping[str, Tool] | None = None
) -> str:
    """Why ``response`` breaks the SPO authors' format rule for thinking models, or "".

    The rule: exactly one ``</think>``, and no code (no tool call, nor an ``<interpreter>``
    block) after it.
    """
    count = response.count("</think>")
    if count != 1:
        return f"expected exactly one </think>, found {count}"
    after = response.split("</think>", 1)[1]
    if "<interpreter>" in after or parse_action(after, tool_format, tools or {}) is not None:
        return "code after </think>"
    return ""


def _prompt_dirs() -> tuple[str, ...]:
    extra = os.environ.get("SPO_GYM_PROMPTS")
    return (*([extra] if extra else []), str(PROMPTS_DIR))


@functools.lru_cache(maxsize=8)
def _jinja(dirs: tuple[str, ...]) -> jinja2.Environment:
    # Plain text prompts: no HTML escaping; a misspelt variable is an error, not "".
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs), undefined=jinja2.StrictUndefined, autoescape=False
    )


def render_template(name: str, **variables: Any) -> str:
    """Renders a prompt template by name (from the prompt directories) or by path."""
    dirs = _prompt_dirs()
    path = Path(name)
    if path.suffix == ".j2" and path.is_file():
        template = _jinja(dirs).from_string(path.read_text(encoding="utf-8"))
    else:
        try:
            template = _jinja(dirs).get_template(name)
        except jinja2.TemplateNotFound as exc:
            searched = ", ".join(dirs)
            raise FileNotFoundError(f"prompt template {name!r} not found in {searched}") from exc
    return template.render(**variables).strip()
