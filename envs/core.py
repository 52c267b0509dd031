r"""The tool-environment contract: an assistant turn in, what the model reads next out.

A :class:`ToolEnv` is a :class:`gymnasium.Env` whose actions and observations are text, so any
agent — a local model, an inference server, a script — can drive it:

- ``reset(seed, options) -> (observation, info)`` starts an episode on a task. The observation
  is the opening user message; ``info["messages"]`` holds the whole opening conversation
  (system prompt included) for the agent's chat template.
- ``step(action) -> (observation, reward, terminated, truncated, info)`` takes one assistant
  turn. If the turn calls a tool, the env runs it and the observation is its output, already
  wrapped for the conversation as :attr:`ToolEnv.generation` says (``<interpreter>`` block or
  ``tool`` message content). A turn without a tool call ends the episode
  (``terminated=True``) and is scored.
- ``truncate(reason) -> (observation, reward, terminated, truncated, info)`` ends the episode
  from outside: the agent, which holds the tokenizer, calls it when the token budget runs out
  (``reason="token_budget"``), a watchdog when an episode is stuck.

Each has an async twin (``areset``, ``astep``, ``atruncate``, ``aclose``); tool calls are I/O,
and a rollout engine runs many envs concurrently on one event loop. The sync methods run the
async ones on the event loop that owns the sandbox pool (a background thread for the default
pool), so they must not be called from inside that loop.

How an episode ended is ``info["termination_reason"]`` on its final step:

======================  ==========  =========  ===============================================
reason                  terminated  truncated  reward
======================  ==========  =========  ===============================================
"answered"              True        False      :meth:`ToolEnv.score` (the turn had an answer)
"no_tool_call"          True        False      :meth:`ToolEnv.score` (the turn had neither)
"max_turns"             False       True       0, or scored if ``score_truncated``
``truncate(reason)``    False       True       0, or scored if ``score_truncated``
"masked"                True        False      0 and ``info["masked"] = True``: never train on it
======================  ==========  =========  ===============================================

An exception raised in a step (a tool bug, a grader bug) ends the episode with reason "error"
and propagates; cancelling ``astep`` ends it with "cancelled", :meth:`ToolEnv.close` with
"closed". The sandbox is released in every case.

**The masking rule.** Whatever happens while a cell runs — an exception, a timeout, the
container or its supervisor dying — is the model's doing: the model reads it as the
observation (a ``sandbox_error`` result) and the episode is scored normally, because code may
kill its own sandbox on purpose and masking that would reward it. Only a failure to *obtain* a
sandbox (:class:`sandbox.SandboxUnavailable`: no container in time, daemon down, pool closed)
and a score that cannot be computed (:class:`ScoreUnavailable`) mask the episode.

**info** (a fresh dict on every call):

- ``prompt_key``: the task's canonical key (:func:`envs.tasks.prompt_key`); ``episode_id``.
- ``turn``: assistant turns taken; ``tool_calls``: well-formed tool calls run so far.
- ``call``: this turn's :class:`~envs.formats.ToolCall`, :class:`~envs.formats.MalformedCall`
  or ``None``; ``tool_result``: the sandbox's typed :class:`sandbox.RunResult`, if any.
- ``timings``: seconds spent in this call: ``step_s``, and ``tool_s``, ``acquire_s``,
  ``score_s`` where they happened.
- ``termination_reason``: ``None`` while the episode runs; ``masked``: see above (with
  ``detail`` saying why).
- ``score``: the :class:`Score` on the final step, ``None`` if the episode was not scored.
- at reset only: ``messages``, ``tools`` (OpenAI tool schemas for hermes chat templates),
  ``generation`` (the :class:`~envs.spec.GenerationSpec`), ``data_source``.

**The sandbox.** An env acquires a container from its :class:`sandbox.SandboxPool` the first
time a tool needs one (:meth:`ToolEnv.sandbox`), holds it for the rest of the episode, and
releases it when the episode ends, on the next reset, on :meth:`ToolEnv.close` and when a
step raises. Without a ``pool`` argument envs share :func:`default_pool`.

**Writing a new tool env**::

    class CalculatorEnv(ToolEnv):
        tools = (Tool("calculator", "Evaluates arithmetic.", {...}),)
        default_generation = GenerationSpec.for_format("hermes")

        async def call_tool(self, call):            # run one well-formed call
            return str(evaluate(call.arguments["expression"]))

        async def score(self, episode):             # judge the finished episode
            return Score(float(episode.response.strip().endswith(episode.task.answer)))

The base class parses turns, counts turns, truncates observations, holds and releases the
sandbox, masks, times and fills ``info``. The default :meth:`ToolEnv.call_tool` runs the
``code_interpreter`` tool in the sandbox. Optional hooks: :meth:`ToolEnv.prompt` (the opening
messages), :meth:`ToolEnv.answered` (which reason ends the episode), :meth:`ToolEnv.demo_actions`
(a scripted episode for ``spo-gym envs validate``). Register it with :func:`envs.register`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

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
from envs.spec import AnyText, GenerationSpec
from envs.tasks import Task
from sandbox import RunResult, SandboxPool, SandboxSession, SandboxUnavailable

__all__ = [
    "Episode",
    "Score",
    "ScoreStatus",
    "ScoreUnavailable",
    "StepResult",
    "TaskSource",
    "ToolEnv",
    "default_pool",
]

T = TypeVar("T")
StepResult = tuple[str, float, bool, bool, dict[str, Any]]
"""What ``step`` returns: observation, reward, terminated, truncated, info."""
TaskSource = Sequence[Task] | Callable[[np.random.Generator], Task]
"""Tasks an env draws from on reset: a sequence (sampled uniformly) or a generator function."""


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


@dataclass
class Episode:
    """The current episode as the env sees it; :meth:`ToolEnv.score` reads it.

    Attributes:
        task: the task being solved.
        episode_id: a unique id (also the sandbox session's id).
        messages: the opening conversation.
        actions: the assistant turns, as given to ``step`` (a partial turn given to
            ``truncate`` included).
        observations: for each action, the observation it got ("" if none).
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
    results: list[RunResult] = field(default_factory=list)
    tool_calls: int = 0
    termination_reason: str | None = None
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
        """The model's own text: its turns joined, observations left out.

        Graders read this, so output printed by code cannot plant an answer.
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
            that RNG. Trainers that feed one task per episode (verl, SkyRL) leave it out and
            pass ``reset(options={"task": task})``.
        pool: the sandbox pool; default :func:`default_pool`.
        generation: the :class:`~envs.spec.GenerationSpec`, or a mapping of overrides of
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
        self.tasks = tasks
        self.score_truncated = score_truncated
        self.tool_timeout_s = tool_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self.stateless = stateless
        self.echo_last_expr = echo_last_expr
        self.episode: Episode | None = None
        self._pool = pool
        self._session: SandboxSession | None = None
        self._held: contextlib.AsyncExitStack | None = None
        self._timings: dict[str, float] = {}

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
    ) -> tuple[str, dict[str, Any]]:
        """Async :meth:`reset`."""
        if self._held is not None:
            await self._on_pool_loop(self._release)
        return self._begin(seed, options)

    async def astep(self, action: str) -> StepResult:
        """Async :meth:`step`."""
        return await self._on_pool_loop(lambda: self._guarded(self._step(action)))

    async def atruncate(
        self, reason: str = "token_budget", action: str | None = None
    ) -> StepResult:
        """Async :meth:`truncate`."""
        return await self._on_pool_loop(lambda: self._guarded(self._truncate(reason, action)))

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self._end_episode("closed")
        if self._held is not None:
            await self._on_pool_loop(self._release)

    # -- the contract: sync -----------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Starts an episode; releases the previous episode's sandbox.

        Args:
            seed: seeds the env's RNG (task sampling), as in gymnasium.
            options: ``{"task": Task}`` to solve that task; otherwise one is drawn from
                ``tasks``.

        Returns:
            The opening user message and the info dict (see the module docstring).
        """
        if self._held is not None:
            self._run_sync(self._release)
        return self._begin(seed, options)

    def step(self, action: str) -> StepResult:
        """Takes one assistant turn (exactly the generated text, stop sequence included).

        Returns:
            observation: what the model reads next ("" once the episode is over).
            reward: the episode's reward on the final step, 0.0 before.
            terminated: the episode ended by itself (answered, no tool call, masked).
            truncated: the episode was cut (max turns, or :meth:`truncate`).
            info: see the module docstring.
        """
        return self._run_sync(lambda: self._guarded(self._step(action)))

    def truncate(self, reason: str = "token_budget", action: str | None = None) -> StepResult:
        """Ends the episode from outside, e.g. when the agent's token budget is exhausted.

        Args:
            reason: recorded as ``info["termination_reason"]``.
            action: a partial last turn that was cut short; recorded (and scored with
                ``score_truncated``) but never run.

        Returns:
            The final step: ``("", reward, False, True, info)``.
        """
        return self._run_sync(lambda: self._guarded(self._truncate(reason, action)))

    def close(self) -> None:
        """Ends any running episode and releases its sandbox. Safe to call more than once."""
        self._end_episode("closed")
        if self._held is None:
            return
        loop = self._pool_loop()
        if loop is _running_loop():
            # Called synchronously from inside the pool's loop: release without blocking it.
            _spawn(loop, self._release())
        else:
            self._run_sync(self._release)

    # -- the episode -------------------------------------------------------------------------

    def _begin(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task = self._pick_task(dict(options or {}))
        messages = self.prompt(task)
        self.episode = Episode(task=task, episode_id=uuid.uuid4().hex[:16], messages=messages)
        info = self._info(self.episode, None, None, {})
        info.update(
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
            reason = "answered" if self.answered(action) else "no_tool_call"
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

    async def _truncate(self, reason: str, action: str | None) -> StepResult:
        episode = self._running()
        self._timings = {}
        if action is not None:
            episode.actions.append(action)
        return await self._finish(reason, call=None, truncated=True)

    async def _finish(
        self,
        reason: str,
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
        info = self._info(episode, call, None, self._timings, score=score)
        if detail:
            info["detail"] = detail
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

    def _end_episode(self, reason: str) -> None:
        if self.episode is not None and not self.episode.done:
            self.episode.termination_reason = reason

    @staticmethod
    def _info(
        episode: Episode,
        call: ToolCall | MalformedCall | None,
        result: RunResult | None,
        timings: dict[str, float],
        *,
        score: Score | None = None,
    ) -> dict[str, Any]:
        return {
            "prompt_key": episode.task.key,
            "episode_id": episode.episode_id,
            "turn": episode.turn,
            "tool_calls": episode.tool_calls,
            "call": call,
            "tool_result": result,
            "timings": dict(timings),
            "termination_reason": episode.termination_reason,
            "masked": episode.masked,
            "score": score,
        }

    # -- event loops -------------------------------------------------------------------------

    def _pool_loop(self) -> asyncio.AbstractEventLoop:
        """The loop that owns the pool: its containers' streams are bound to it."""
        pool = self.pool
        if pool.loop is not None:
            return pool.loop
        if pool is _default.pool:
            return _default.loop_thread()
        # A pool not started yet starts on the caller's loop, or on ours for sync callers.
        return _running_loop() or _default.loop_thread()

    async def _on_pool_loop(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        loop = self._pool_loop()
        if loop is asyncio.get_running_loop():
            return await work()
        return await _await_elsewhere(loop, work)

    def _run_sync(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        loop = self._pool_loop()
        if loop is _running_loop():
            raise RuntimeError(
                "a sync env method was called inside the event loop that owns the sandbox pool; "
                "await the async twin instead (areset, astep, atruncate, aclose)"
            )
        return _submit(loop, work).result()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _submit(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Coroutine[Any, Any, T]]
) -> concurrent.futures.Future[T]:
    if not loop.is_running():
        raise RuntimeError("the event loop that owns the sandbox pool is not running")
    return asyncio.run_coroutine_threadsafe(work(), loop)


async def _await_elsewhere(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """Runs ``work()`` on another thread's ``loop`` and awaits it here.

    Cancelling the caller cancels the work there and waits until it has finished, so its
    cleanup (the sandbox release) is done by the time the caller sees ``CancelledError``.
    """
    task: asyncio.Task[Any] | None = None
    cancelled = False

    async def run() -> T:
        nonlocal task
        task = asyncio.current_task()
        if cancelled:  # cancelled before it started
            raise asyncio.CancelledError
        return await work()

    def cancel() -> None:  # runs on ``loop``, so it cannot race with run()
        nonlocal cancelled
        cancelled = True
        if task is not None:
            task.cancel()

    outcome = asyncio.wrap_future(_submit(loop, run))
    try:
        return await asyncio.shield(outcome)
    except asyncio.CancelledError:
        loop.call_soon_threadsafe(cancel)
        await asyncio.wait({outcome})
        raise


_background_tasks: set[asyncio.Task[Any]] = set()


def _spawn(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
    task = loop.create_task(coro)
    _background_tasks.add(task)  # a strong reference until done: the loop keeps only weak ones
    task.add_done_callback(_background_tasks.discard)


# -- the process-wide default pool -----------------------------------------------------------


class _DefaultPool:
    """One pool for every env made without one, living on a background event-loop thread.

    The thread lets sync callers (``env.step``) share the pool; async callers on another loop
    reach it through :func:`asyncio.run_coroutine_threadsafe`. Created on first use, started
    on first acquire, closed (containers removed) at interpreter exit.
    """

    def __init__(self) -> None:
        self.pool: SandboxPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def loop_thread(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="spo-gym-envs", daemon=True).start()
                self._loop = loop
            return self._loop

    def get(self) -> SandboxPool:
        loop = self.loop_thread()
        with self._lock:
            if self.pool is None:
                self.pool = SandboxPool()
                atexit.register(self.close, loop)
            return self.pool

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        # At exit the pool's thread pool is already shut down, so its async close() cannot
        # run: stop the pool's background tasks and the loop, then remove the containers
        # synchronously.
        pool, self.pool = self.pool, None
        if loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), loop).result(5.0)
            loop.call_soon_threadsafe(loop.stop)
        if pool is not None:
            pool.close_at_exit()


async def _cancel_all_tasks() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


_default = _DefaultPool()


def default_pool() -> SandboxPool:
    """The process-wide :class:`sandbox.SandboxPool` of envs made without a ``pool``.

    Created with the default :class:`sandbox.SandboxConfig` on first use, started on the first
    sandbox an env acquires, owned by a background event-loop thread, closed at exit.
    """
    return _default.get()
