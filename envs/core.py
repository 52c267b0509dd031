r"""The tool-environment contract: an assistant turn in, what the model reads next out.

A :class:`ToolEnv` is a :class:`gymnasium.Env` whose actions and observations are text, so any
agent — a local model, an inference server, a script — can drive it:

- ``reset(seed, options) -> (observation, ResetInfo)`` starts an episode on a task. The
  observation is the opening user message; ``info["messages"]`` holds the whole opening
  conversation (system prompt included) for the agent's chat template, and
  ``info["generation"]`` the :class:`~envs.generation.GenerationSpec` the agent must honour.
- ``step(action) -> (observation, reward, terminated, truncated, StepInfo)`` takes one complete
  assistant turn. If the turn calls a tool, the env runs it and the observation is its output,
  already wrapped for the conversation as the generation spec says (``<interpreter>`` block
  or ``tool`` message content). A turn without a tool call ends the episode
  (``terminated=True``) and is scored.
- ``truncate(reason, action) -> (observation, reward, terminated, truncated, StepInfo)`` ends
  the episode from outside: the agent, which holds the tokenizer, calls it when a token limit
  ends the episode, a watchdog when an episode is stalled. ``action`` is a turn that was not
  run — cut by a token limit, or complete but with no budget left for its observation. It is
  recorded as :attr:`Episode.unfinished`, never run and never graded: a ``\boxed{}`` written
  mid-reasoning is not a final answer.

Each has an async twin (``areset``, ``astep``, ``atruncate``, ``aclose``); tool calls are I/O,
and a rollout engine runs many envs concurrently on one event loop. The sync methods run the
async ones on the event loop that owns the sandbox pool (:mod:`envs.pool_loop`), so they
must not be called from inside that loop.

How an episode ended is ``info["termination_reason"]`` (a :data:`TerminationReason`) on its
final step:

=====================  ==========  =========  ======  ==========================================
reason                 terminated  truncated  masked  reward
=====================  ==========  =========  ======  ==========================================
"answered"             True        False      no      :meth:`ToolEnv.score` (an answer was given)
"no_tool_call"         True        False      no      :meth:`ToolEnv.score` (neither call nor answer)
"max_turns"            False       True       no      0, or scored if ``score_truncated``
"token_budget"         False       True       no      0, or scored if ``score_truncated``
"turn_tokens"          False       True       no      0, or scored if ``score_truncated``
"context_limit"        False       True       no      0, or scored if ``score_truncated``
"watchdog"             False       True       yes     0: never train on it
"masked"               True        False      yes     0: never train on it
=====================  ==========  =========  ======  ==========================================

The first six are the model's doing and train normally; "token_budget", "turn_tokens" and
"context_limit" come from ``truncate`` (the episode budget, the per-turn limit, the model's
context), and scoring a truncated episode reads only its completed turns. The last two mask:
"masked" when no sandbox could be obtained (:class:`sandbox.SandboxUnavailable`) or no score
could be computed (:class:`ScoreUnavailable`); "watchdog" when an episode overran its
wall-clock deadline. The deadline is a backstop against stalls: the token budgets, the turn
limit and each cell's timeout already bound everything the model can cause, so an episode
that still overruns it was stalled by infrastructure, and a 0 would punish the model for it.
An agent measures the deadline on the episode's own work (see :mod:`agents.engine`).

An exception raised in a step (a tool bug, a grader bug) ends the episode with reason "error"
and propagates; cancelling ``astep`` ends it with "cancelled", :meth:`ToolEnv.close` with
"closed". The sandbox is released in every case.

**The masking rule.** Whatever happens while a cell runs — an exception, a timeout, the
container or its supervisor dying — is the model's doing: the model reads it as the
observation (a ``sandbox_error`` result) and the episode is scored normally, because code may
kill its own sandbox on purpose and masking that would reward it. Only failures outside the
model's control mask the episode (the three above).

**info** (a fresh :class:`StepInfo` on every call; :class:`ResetInfo` from ``reset``): the
keys and their meaning are documented on the two TypedDicts.

**The sandbox.** An env acquires a container from its :class:`sandbox.SandboxPool` the first
time a tool needs one (:meth:`ToolEnv.sandbox`), holds it for the rest of the episode, and
releases it when the episode ends, on the next reset, on :meth:`ToolEnv.close` and when a
step raises. Without a ``pool`` argument envs share :func:`envs.pool_loop.default_pool`.

**Writing a new tool env**::

    class CalculatorEnv(ToolEnv):
        tools = (Tool("calculator", "Evaluates arithmetic.", {...}),)
        default_generation = GenerationSpec.for_format("hermes")

        def default_task_source(self):               # what reset() draws from by default
            return calculator_tasks()

        async def call_tool(self, call):            # run one well-formed call
            return str(evaluate(call.arguments["expression"]))

        async def score(self, episode):             # judge the finished episode
            return Score(float(episode.response.strip().endswith(episode.task.answer)))

The base class parses turns, counts turns, truncates observations, holds and releases the
sandbox, masks, times and fills ``info``. The default :meth:`ToolEnv.call_tool` runs the
``code_interpreter`` tool in the sandbox. Optional hooks: :meth:`ToolEnv.prompt` (the opening
messages), :meth:`ToolEnv.answered` (which reason ends the episode),
:meth:`ToolEnv.default_task_source` (tasks when none are given), :meth:`ToolEnv.demo_actions`
(a scripted episode for ``spo-gym envs validate``). Register it with :func:`envs.register`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import typing
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypedDict

import gymnasium as gym
import numpy as np

from envs.formats import (
    CODE_INTERPRETER,
    MalformedCall,
    Tool,
    ToolCall,
    parse_action,
    render_observation,
    truncate_text,
)
from envs.generation import GenerationSpec
from envs.grading import GradeResult
from envs.pool_loop import default_pool, on_pool_loop, pool_loop, run_sync, spawn
from envs.spaces import AnyText
from envs.tasks import Task
from sandbox import RunResult, SandboxPool, SandboxSession, SandboxUnavailable
from sandbox.loop_thread import running_loop

__all__ = [
    "Episode",
    "ResetInfo",
    "Score",
    "ScoreStatus",
    "ScoreUnavailable",
    "StepInfo",
    "StepResult",
    "StepTimings",
    "TaskSource",
    "TerminationReason",
    "ToolEnv",
    "TruncationReason",
]

TaskSource = Sequence[Task] | Callable[[np.random.Generator], Task]
"""Tasks an env draws from on reset: a sequence (sampled uniformly) or a generator function."""


TerminationReason = Literal[
    "answered",
    "no_tool_call",
    "max_turns",
    "token_budget",
    "turn_tokens",
    "context_limit",
    "watchdog",
    "masked",
    "error",
    "cancelled",
    "closed",
]
"""How an episode ended; see the reason table in the module docstring. "error", "cancelled"
and "closed" end an episode that never returned a final step (an exception, a cancelled
``astep``, :meth:`ToolEnv.close`)."""

TruncationReason = Literal["token_budget", "turn_tokens", "context_limit", "watchdog"]
"""The reasons an agent may pass to :meth:`ToolEnv.truncate`."""

TRUNCATION_REASONS: tuple[TruncationReason, ...] = typing.get_args(TruncationReason)
_MASKING_TRUNCATIONS: frozenset[TruncationReason] = frozenset({"watchdog"})

ScoreStatus = Literal["ok", "no_answer", "timeout", "error", "format"]
"""How a verdict was reached: "ok" (graded), "no_answer" (nothing to grade), "timeout" (the
answer exhausted the grader's CPU budget), "error" (the answer could not be read), "format"
(the output broke the env's format rule). Each is the model's doing and scores normally."""


class ScoreUnavailable(Exception):
    """Raised by :meth:`ToolEnv.score` when no verdict can be computed for reasons outside the
    model's output (a grader worker that will not start or keeps dying, after retries).

    The env masks the episode with this message as ``info["detail"]``: training on a 0 that
    the model did not earn would corrupt the reward.
    """


@dataclass(frozen=True)
class Score:
    """The verdict on a finished episode.

    Attributes:
        reward: the episode's reward.
        status: see :data:`ScoreStatus`. An infrastructure failure is not a status: the
            scorer raises :class:`ScoreUnavailable` and the episode is masked.
        detail: a human-readable explanation.
    """

    reward: float
    status: ScoreStatus = "ok"
    detail: str = ""

    @classmethod
    def from_grade(cls, grade: GradeResult) -> Score:
        """The binary verdict of a math grade (:mod:`envs.grading`): 1 if correct, else 0.

        Raises:
            ScoreUnavailable: the grader could not run after retries, or cannot read the gold
                answer — not the model's 0.
        """
        if grade.status == "unavailable":
            raise ScoreUnavailable(grade.detail)
        return cls(1.0 if grade.correct else 0.0, grade.status, f"{grade.method}: {grade.detail}")


class StepTimings(TypedDict, total=False):
    """Seconds spent in one ``reset``/``step``/``truncate`` call; keys appear where the work
    happened."""

    step_s: float
    """The whole call."""
    tool_s: float
    """Running the tool call (sandbox acquisition included)."""
    acquire_s: float
    """Obtaining the episode's sandbox."""
    score_s: float
    """Scoring the finished episode."""


class StepInfo(TypedDict):
    """The ``info`` of ``step`` and ``truncate`` (and the base of :class:`ResetInfo`)."""

    prompt_key: str
    """The task's canonical key (:func:`envs.tasks.prompt_key`)."""
    episode_id: str
    """Unique id of the episode (also its sandbox session's id)."""
    turn: int
    """Assistant turns taken (an unfinished turn given to ``truncate`` not counted)."""
    tool_calls: int
    """Well-formed tool calls run so far."""
    call: ToolCall | MalformedCall | None
    """This turn's parsed call, if it had one."""
    tool_result: RunResult | None
    """The sandbox's typed result of this turn's code cell, if one ran."""
    timings: StepTimings
    """Where this call's time went."""
    termination_reason: TerminationReason | None
    """``None`` while the episode runs; how it ended on its final step."""
    masked: bool
    """The episode was lost to infrastructure: never train on it (``detail`` says why)."""
    score: Score | None
    """The verdict on the final step; ``None`` while running and for unscored endings."""
    detail: str
    """Why the episode was masked, else ""."""


class ResetInfo(StepInfo):
    """The ``info`` of ``reset``: :class:`StepInfo` plus what the agent needs to drive the
    episode."""

    messages: list[dict[str, str]]
    """The whole opening conversation (system prompt, demonstrations, the problem)."""
    tools: list[dict[str, Any]]
    """OpenAI tool schemas of :attr:`ToolEnv.tools`, for hermes chat templates."""
    generation: GenerationSpec
    """How the agent must drive this env (stop strings, placement, token limits)."""
    data_source: str
    """The task's data source."""


StepResult = tuple[str, float, bool, bool, StepInfo]
"""What ``step`` and ``truncate`` return: observation, reward, terminated, truncated, info."""


@dataclass
class Episode:
    """The current episode as the env sees it; :meth:`ToolEnv.score` reads it.

    Attributes:
        task: the task being solved.
        episode_id: a unique id (also the sandbox session's id).
        messages: the opening conversation.
        actions: the completed assistant turns, as given to ``step``.
        observations: for each action, the observation it got ("" if none).
        unfinished: a turn given to ``truncate`` (cut by a token limit, or left without
            budget for its observation): recorded, never run, never graded.
        results: the sandbox results of the tool calls, in order.
        tool_calls: well-formed tool calls run.
        termination_reason: ``None`` while the episode runs.
        masked: the episode was lost to infrastructure and must not be trained on.
    """

    task: Task
    episode_id: str
    messages: list[dict[str, str]]
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    unfinished: str | None = None
    results: list[RunResult] = field(default_factory=list)
    tool_calls: int = 0
    termination_reason: TerminationReason | None = None
    masked: bool = False

    @property
    def turn(self) -> int:
        """Assistant turns taken."""
        return len(self.actions)

    @property
    def done(self) -> bool:
        """Whether the episode has ended."""
        return self.termination_reason is not None

    @property
    def response(self) -> str:
        """The model's own text: its completed turns joined, observations left out.

        Graders read this, so output printed by code cannot plant an answer, and an
        unfinished turn cannot pass for a final one.
        """
        return "".join(self.actions)

    def stream(self) -> str:
        """Turns and observations interleaved, as an inline (ReTool) transcript reads."""
        return "".join(a + o for a, o in zip(self.actions, self.observations, strict=True))


class ToolEnv(gym.Env[str, str]):
    """Base class of tool environments; see the module docstring for the whole contract.

    Args:
        tasks: what :meth:`reset` draws from when ``options`` names no task: a sequence of
            :class:`~envs.tasks.Task` (sampled with the env's seeded RNG) or a function of
            that RNG; default :meth:`default_task_source`. Trainers that feed one task per
            episode (verl, SkyRL) pass ``reset(options={"task": task})``.
        pool: the sandbox pool; default :func:`envs.pool_loop.default_pool`.
        generation: the :class:`~envs.generation.GenerationSpec`, or a mapping of overrides of
            the class's :attr:`default_generation` (e.g. ``{"max_turns": 4}``).
        score_truncated: score truncated episodes on what they have instead of giving 0.
        tool_timeout_s: time limit of one code cell; default the pool's.
        acquire_timeout_s: how long to wait for a sandbox before masking; default the pool's.
        stateless: a fresh Python kernel for every cell (variables do not persist).
        echo_last_expr: print the value of a cell's trailing expression, REPL-style.
    """

    tools: ClassVar[tuple[Tool, ...]] = (CODE_INTERPRETER,)
    """The tools the model may call (hermes calls to other names are malformed)."""
    default_generation: ClassVar[GenerationSpec] = GenerationSpec()
    """The generation controls of this env class; instances may override them."""

    def __init__(
        self,
        *,
        tasks: TaskSource | None = None,
        pool: SandboxPool | None = None,
        generation: GenerationSpec | Mapping[str, Any] | None = None,
        score_truncated: bool = False,
        tool_timeout_s: float | None = None,
        acquire_timeout_s: float | None = None,
        stateless: bool = False,
        echo_last_expr: bool = False,
    ) -> None:
        if isinstance(generation, GenerationSpec):
            self.generation = generation
        else:
            self.generation = self.default_generation.updated(generation or {})
        self._tools = {t.name: t for t in self.tools}
        if self.generation.tool_format == "retool" and CODE_INTERPRETER.name not in self._tools:
            raise ValueError("the retool format calls code_interpreter, which this env lacks")
        self.observation_space = AnyText()
        self.action_space = AnyText()
        self.tasks = tasks if tasks is not None else self.default_task_source()
        self.score_truncated = score_truncated
        self.tool_timeout_s = tool_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self.stateless = stateless
        self.echo_last_expr = echo_last_expr
        self.episode: Episode | None = None
        self._pool = pool
        self._session: SandboxSession | None = None
        self._held: contextlib.AsyncExitStack | None = None
        self._timings: StepTimings = {}

    # -- hooks -------------------------------------------------------------------------------

    def prompt(self, task: Task) -> list[dict[str, str]]:
        """The messages that open an episode on ``task``; the last one is the observation."""
        return task.messages()

    async def call_tool(self, call: ToolCall) -> RunResult | str:
        """Runs one well-formed call and returns what the model reads (before truncation).

        The default runs ``code_interpreter`` in the episode's sandbox. Raising
        :class:`sandbox.SandboxUnavailable` masks the episode; any other exception ends the
        episode and propagates.
        """
        if call.name != CODE_INTERPRETER.name:
            raise NotImplementedError(
                f"{type(self).__name__} does not implement tool {call.name!r}"
            )
        session = await self.sandbox()
        return await session.run(call.arguments["code"], timeout=self.tool_timeout_s)

    def default_task_source(self) -> TaskSource | None:
        """The tasks :meth:`reset` draws from when none were given at construction (``None``:
        every reset must name its task). ``spo-gym run`` uses it unless ``--data`` is given."""
        return None

    def sample_tasks(self, n: int, seed: int = 0) -> list[Task]:
        """``n`` distinct tasks (by key) from the env's task source, drawn with ``seed``.

        Raises:
            ValueError: the env has no task source, or it holds fewer than ``n`` distinct
                tasks (for a generator: none new in ``50 n`` draws).
        """
        if self.tasks is None:
            raise ValueError(
                f"{type(self).__name__} declares no task source (default_task_source); "
                "give it tasks"
            )
        rng = np.random.default_rng(seed)
        if not callable(self.tasks):
            distinct = list({t.key: t for t in self.tasks}.values())
            if len(distinct) < n:
                raise ValueError(f"the env's task list holds {len(distinct)} tasks, not {n}")
            return [distinct[int(i)] for i in rng.permutation(len(distinct))[:n]]
        drawn: dict[str, Task] = {}
        for _ in range(50 * n):
            if len(drawn) == n:
                break
            task = self.tasks(rng)
            drawn.setdefault(task.key, task)
        if len(drawn) < n:
            raise ValueError(f"the env's task generator gave {len(drawn)} distinct tasks, not {n}")
        return list(drawn.values())

    def answered(self, action: str) -> bool:
        """Whether a turn without a tool call gives an answer ("answered") or just stops
        ("no_tool_call"). Both end the episode and are scored; the reason is for statistics."""
        return True

    async def score(self, episode: Episode) -> Score:
        """Judges a finished episode. Called once, after the sandbox has been released."""
        raise NotImplementedError

    def demo_actions(self) -> list[str]:
        """A scripted episode for the current task that calls a tool and then answers
        correctly; ``spo-gym envs validate`` plays it and expects a positive reward."""
        raise NotImplementedError(f"{type(self).__name__} has no demo episode")

    # -- the sandbox -------------------------------------------------------------------------

    @property
    def pool(self) -> SandboxPool:
        """The sandbox pool this env acquires from."""
        if self._pool is None:
            self._pool = default_pool()
        return self._pool

    @property
    def session(self) -> SandboxSession | None:
        """The sandbox session held for the current episode, if one was acquired."""
        return self._session

    async def sandbox(self) -> SandboxSession:
        """The episode's sandbox session: acquired on first use, held until the episode ends.

        Raises:
            SandboxUnavailable: no sandbox could be obtained (the env masks the episode).
        """
        if self._session is not None:
            return self._session
        episode = self._running()
        t0 = time.monotonic()
        held = contextlib.AsyncExitStack()
        self._session = await held.enter_async_context(
            self.pool.session(
                episode.episode_id,
                stateless=self.stateless,
                echo_last_expr=self.echo_last_expr,
                acquire_timeout_s=self.acquire_timeout_s,
            )
        )
        self._held = held
        self._timings["acquire_s"] = time.monotonic() - t0
        return self._session

    async def _release(self) -> None:
        held, self._held, self._session = self._held, None, None
        if held is not None:
            await held.aclose()

    # -- the contract: async ---------------------------------------------------------------

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, ResetInfo]:
        """Async :meth:`reset`."""
        if self._held is not None:
            await on_pool_loop(self.pool, self._release)
        return self._begin(seed, options)

    async def astep(self, action: str) -> StepResult:
        """Async :meth:`step`."""
        return await on_pool_loop(self.pool, lambda: self._guarded(self._step(action)))

    async def atruncate(
        self, reason: TruncationReason = "token_budget", action: str | None = None
    ) -> StepResult:
        """Async :meth:`truncate`."""
        return await on_pool_loop(self.pool, lambda: self._guarded(self._truncate(reason, action)))

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self._end_episode("closed")
        if self._held is not None:
            await on_pool_loop(self.pool, self._release)

    # -- the contract: sync -----------------------------------------------------------------

    # The infos are TypedDicts: plain dicts at run time, which gymnasium's dict[str, Any]
    # annotation does not admit statically.
    def reset(  # type: ignore[override]
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, ResetInfo]:
        """Starts an episode; releases the previous episode's sandbox.

        Args:
            seed: seeds the env's RNG (task sampling), as in gymnasium.
            options: ``{"task": Task}`` to solve that task; otherwise one is drawn from
                ``tasks``.

        Returns:
            The opening user message and the :class:`ResetInfo`.
        """
        if self._held is not None:
            run_sync(self.pool, self._release)
        return self._begin(seed, options)

    def step(self, action: str) -> StepResult:  # type: ignore[override]
        """Takes one assistant turn (exactly the generated text, stop sequence included).

        Returns:
            observation: what the model reads next ("" once the episode is over).
            reward: the episode's reward on the final step, 0.0 before.
            terminated: the episode ended by itself (answered, no tool call, masked).
            truncated: the episode was cut (max turns, or :meth:`truncate`).
            info: the :class:`StepInfo`.
        """
        return run_sync(self.pool, lambda: self._guarded(self._step(action)))

    def truncate(
        self, reason: TruncationReason = "token_budget", action: str | None = None
    ) -> StepResult:
        """Ends the episode from outside, e.g. when the agent's token budget is exhausted.

        Args:
            reason: recorded as ``info["termination_reason"]``; "watchdog" masks the episode.
            action: a turn that was not run (cut short, or without budget for its
                observation): kept as :attr:`Episode.unfinished`, never run, never graded.

        Returns:
            The final step: ``("", reward, False, True, info)``; the reward is 0 unless
            ``score_truncated`` scores the completed turns.
        """
        return run_sync(self.pool, lambda: self._guarded(self._truncate(reason, action)))

    def close(self) -> None:
        """Ends any running episode and releases its sandbox. Safe to call more than once."""
        self._end_episode("closed")
        if self._held is None:
            return
        if pool_loop(self.pool) is running_loop():
            # Called synchronously from inside the pool's loop: release without blocking it.
            spawn(self.pool, self._release())
        else:
            run_sync(self.pool, self._release)

    # -- the episode -------------------------------------------------------------------------

    def _begin(self, seed: int | None, options: dict[str, Any] | None) -> tuple[str, ResetInfo]:
        super().reset(seed=seed)
        task = self._pick_task(dict(options or {}))
        messages = self.prompt(task)
        self.episode = Episode(task=task, episode_id=uuid.uuid4().hex[:16], messages=messages)
        info = ResetInfo(
            **self._info(self.episode, None, None, {}),
            messages=[dict(m) for m in messages],
            tools=[t.schema() for t in self.tools],
            generation=self.generation,
            data_source=task.data_source,
        )
        return messages[-1]["content"], info

    def _pick_task(self, options: dict[str, Any]) -> Task:
        task = options.pop("task", None)
        if options:
            raise ValueError(f"unknown reset options: {sorted(options)} (known: 'task')")
        if task is not None:
            if not isinstance(task, Task):
                raise TypeError(
                    f"options['task'] must be an envs.tasks.Task, not {type(task).__name__}"
                )
            return task
        if self.tasks is None:
            raise ValueError(
                f"{type(self).__name__} has no task: pass reset(options={{'task': task}}) "
                "or construct it with tasks=..."
            )
        if callable(self.tasks):
            return self.tasks(self.np_random)
        if len(self.tasks) == 0:
            raise ValueError("the env's task list is empty")
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    async def _step(self, action: str) -> StepResult:
        if not isinstance(action, str):
            raise TypeError(f"an action is the assistant's text, not {type(action).__name__}")
        episode = self._running()
        self._timings = {}
        episode.actions.append(action)
        call = parse_action(action, self.generation.tool_format, self._tools)
        if call is None:
            reason: TerminationReason = "answered" if self.answered(action) else "no_tool_call"
            return await self._finish(reason, call=None)
        if episode.turn >= self.generation.max_turns:
            return await self._finish("max_turns", call=call, truncated=True)
        result: RunResult | None = None
        if isinstance(call, MalformedCall):
            text = call.error
        else:
            t0 = time.monotonic()
            try:
                output = await self.call_tool(call)
            except SandboxUnavailable as exc:
                return await self._finish("masked", call=call, masked=True, detail=str(exc))
            self._timings["tool_s"] = time.monotonic() - t0
            episode.tool_calls += 1
            if isinstance(output, RunResult):
                result = output
                episode.results.append(output)
                text = output.observation()
            else:
                text = output
        text = truncate_text(
            text, self.generation.max_observation_chars, self.generation.truncation_side
        )
        if call.skipped:
            text += f"\n(Only the first tool call of a turn runs; {call.skipped} more ignored.)"
        observation = render_observation(text, self.generation.tool_format)
        episode.observations.append(observation)
        return observation, 0.0, False, False, self._info(episode, call, result, self._timings)

    async def _truncate(self, reason: TruncationReason, action: str | None) -> StepResult:
        if reason not in TRUNCATION_REASONS:
            raise ValueError(f"unknown truncation reason {reason!r} (known: {TRUNCATION_REASONS})")
        episode = self._running()
        self._timings = {}
        episode.unfinished = action
        masked = reason in _MASKING_TRUNCATIONS
        detail = "the episode overran its deadline" if masked else ""
        return await self._finish(reason, call=None, truncated=True, masked=masked, detail=detail)

    async def _finish(
        self,
        reason: TerminationReason,
        *,
        call: ToolCall | MalformedCall | None,
        truncated: bool = False,
        masked: bool = False,
        detail: str = "",
    ) -> StepResult:
        episode = self._running()
        if len(episode.observations) < len(episode.actions):
            episode.observations.append("")
        episode.termination_reason = reason
        episode.masked = masked
        await self._release()
        score: Score | None = None
        if not masked and (not truncated or self.score_truncated):
            t0 = time.monotonic()
            try:
                score = await self.score(episode)
            except ScoreUnavailable as exc:
                episode.termination_reason = "masked"
                episode.masked = masked = True
                truncated = False
                detail = f"score unavailable: {exc}"
            except BaseException:
                episode.termination_reason = "error"
                raise
            self._timings["score_s"] = time.monotonic() - t0
        info = self._info(episode, call, None, self._timings, score=score, detail=detail)
        return "", score.reward if score else 0.0, not truncated, truncated, info

    async def _guarded(self, step: Coroutine[Any, Any, StepResult]) -> StepResult:
        """Runs a step; on any exception (or cancellation) ends the episode and releases."""
        t0 = time.monotonic()
        try:
            result = await step
        except BaseException as exc:
            self._end_episode("cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
            await self._release()
            raise
        result[4]["timings"]["step_s"] = time.monotonic() - t0
        return result

    def _running(self) -> Episode:
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        if self.episode.done:
            raise RuntimeError(
                f"the episode is over ({self.episode.termination_reason}); call reset()"
            )
        return self.episode

    def _end_episode(self, reason: TerminationReason) -> None:
        if self.episode is not None and not self.episode.done:
            self.episode.termination_reason = reason

    @staticmethod
    def _info(
        episode: Episode,
        call: ToolCall | MalformedCall | None,
        result: RunResult | None,
        timings: StepTimings,
        *,
        score: Score | None = None,
        detail: str = "",
    ) -> StepInfo:
        return StepInfo(
            prompt_key=episode.task.key,
            episode_id=episode.episode_id,
            turn=episode.turn,
            tool_calls=episode.tool_calls,
            call=call,
            tool_result=result,
            timings=StepTimings(**timings),
            termination_reason=episode.termination_reason,
            masked=episode.masked,
            score=score,
            detail=detail,
        )
