"""One episode: a policy drives a tool env turn by turn, the transcript keeps the tokens exact.

The loop honours what the env declares in its :class:`~envs.generation.GenerationSpec` (read
from ``reset``'s info: the loop uses only the env's public API). Stop sequences end a turn; tool
output enters the token stream inline (ReTool) or as a chat message (hermes); and the token
limits are enforced by the transcript:

- the episode budget (model *and* observation tokens) and the model's context
  (:attr:`~agents.policy.Policy.max_context_tokens`) clamp every request's ``max_tokens``;
  whenever either is used up after a model turn — whatever stopped the turn — the episode ends
  with ``env.atruncate("token_budget" | "context_limit", turn)``: the turn is never run, since
  there is no room left for its observation;
- a turn cut by the per-turn limit (the env's ``max_turn_tokens``, or a smaller ``max_tokens``
  of the caller) is never handed to ``step`` as a finished turn: the episode ends with
  ``atruncate("turn_tokens", turn)``, or, if the env declares ``turn_cut="continue"``, the
  model keeps generating the same turn until it stops by itself or a limit ends the episode.

Seeds: with a run seed (``sampling.seed``), request ``k`` of the episode is sampled with
``turn_seed(run seed, prompt key, sample index, k)`` (:mod:`agents.seeds`).

Deadline: the request's :class:`~agents.clock.Deadline` counts active seconds (see
:mod:`agents.engine`); whatever the episode waits on, it is re-checked whenever a wait for the
remaining time ends, and an expired deadline ends the episode with ``atruncate("watchdog")``,
which masks it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from agents.clock import Deadline
from agents.episode_request import EpisodeRequest
from agents.policy import LogProbMode, Policy, SamplingParams
from agents.seeds import turn_seed
from agents.trajectory import EpisodeTimings, Trajectory
from agents.transcript import ModelTurn, Transcript, TranscriptLimits
from envs.core import StepInfo, StepResult, TerminationReason, ToolEnv, TruncationReason
from envs.tasks import Task
from sandbox import RunResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")
EventCallback = Callable[[str, dict[str, Any]], None]
"""Receives ``(kind, payload)`` as an episode progresses (see :func:`run_episode`)."""


class EpisodeDeadline(Exception):
    """The episode ran past its deadline (raised inside :func:`run_episode`)."""


async def _until(deadline: Deadline | None, work: Awaitable[T]) -> T:
    """Await ``work`` unless ``deadline`` expires first (then cancel it and raise
    :class:`EpisodeDeadline`). Cancelled work has finished its cleanup when this returns."""
    if deadline is None:
        return await work
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            left = deadline.remaining()
            if left <= 0:
                raise EpisodeDeadline
            # Active time never runs faster than wall time: waiting ``left`` never overshoots.
            await asyncio.wait({task}, timeout=left)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


async def run_episode(
    env: ToolEnv,
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    request: EpisodeRequest | Task,
    sampling: SamplingParams,
    *,
    chat_template_kwargs: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
) -> Trajectory:
    """Plays one episode in ``env`` with ``policy`` and returns its trajectory.

    Args:
        env: a tool env (its episode state is reset here).
        policy: the token-level policy.
        tokenizer: the policy's tokenizer with its chat template.
        request: what to play (a bare :class:`~envs.tasks.Task` is its first sample, with no
            deadline).
        sampling: base sampling params: the env's stop sequences and token limits are applied
            on top of them, ``max_tokens`` caps each turn, and ``seed`` is the run seed.
        chat_template_kwargs: extra template variables (``enable_thinking``, ...).
        on_event: called as ``on_event(kind, payload)`` for live displays: ``("turn",
            {"action"})`` once per model turn, ``("observation", {"text", "result"})`` after
            each tool call.

    The trajectory is masked when the policy backend fails, when the env masks (no sandbox, no
    score) and when the deadline expires. Cancelling the call ends the env's episode and
    releases its sandbox before the cancellation propagates.
    """
    if isinstance(request, Task):
        request = EpisodeRequest(request)
    task, deadline = request.task, request.deadline
    t_start = time.monotonic()
    timings = EpisodeTimings()
    _, opening = await env.areset(options={"task": task})
    gen = opening["generation"]
    transcript = Transcript(
        tokenizer,
        opening["messages"],
        limits=TranscriptLimits(
            max_response_tokens=gen.max_episode_tokens,
            max_context_tokens=policy.max_context_tokens,
        ),
        chat_template_kwargs={"tools": opening["tools"], **(chat_template_kwargs or {})}
        if gen.tool_format == "hermes"
        else chat_template_kwargs,
    )
    params = replace(sampling, stop=tuple(gen.stop), include_stop_str=gen.include_stop)
    if gen.max_turn_tokens is not None:
        params = replace(params, max_tokens=min(params.max_tokens, gen.max_turn_tokens))
    final: StepInfo | None = None
    results: list[RunResult] = []
    reward = 0.0
    mask_reason = ""
    watchdog = False
    log_prob_mode: LogProbMode = "tempered"
    env_open = True  # the env's episode has not ended (no final step, no cancelled step)

    async def env_step(work: Awaitable[StepResult]) -> StepResult:
        nonlocal env_open, final
        try:
            obs, step_reward, terminated, truncated, info = await _until(deadline, work)
        except BaseException:
            env_open = False  # a step that raised or was cancelled ended the env's episode
            raise
        if info["tool_result"] is not None:
            results.append(info["tool_result"])
        if terminated or truncated:
            env_open, final = False, info
        return obs, step_reward, terminated, truncated, info

    async def end(reason: TruncationReason, turn: ModelTurn | None) -> float:
        if turn is not None and on_event is not None:
            on_event("turn", {"action": turn.action})
        action = turn.action if turn is not None else None
        return (await env_step(env.atruncate(reason, action)))[1]

    def limit_reason() -> TruncationReason:
        return "context_limit" if transcript.exhausted_by == "context" else "token_budget"

    open_turn: ModelTurn | None = None  # a turn cut by the per-turn limit, being continued
    calls = 0
    try:
        while True:
            if transcript.exhausted:
                reward = await end(limit_reason(), open_turn)
                break
            seed = (
                turn_seed(sampling.seed, task.key, request.sample_index, calls)
                if sampling.seed is not None
                else None
            )
            turn_request = replace(transcript.sampling_for(params), seed=seed)
            calls += 1
            version = policy.version
            t0 = time.monotonic()
            try:
                out = await _until(deadline, policy.generate(transcript.context_ids, turn_request))
            except EpisodeDeadline:
                raise
            except Exception as exc:  # the backend failed: infrastructure, not the model
                mask_reason = f"policy backend failed: {type(exc).__name__}: {exc}"
                await env.aclose()
                env_open = False
                break
            finally:
                timings.llm_s += time.monotonic() - t0
            if out.log_prob_mode != "tempered":
                log_prob_mode = out.log_prob_mode
            turn = transcript.add_model_output(
                out, turn_request, policy_version=version, continuation=open_turn is not None
            )
            open_turn = None
            if transcript.exhausted:
                # No room for an observation, however the turn ended: it is never run.
                reward = await end(limit_reason(), turn)
                break
            if not turn.stopped:
                # The per-turn limit cut it: not a finished turn.
                if gen.turn_cut == "continue":
                    open_turn = turn
                    continue
                reward = await end("turn_tokens", turn)
                break
            if on_event is not None:
                on_event("turn", {"action": turn.action})
            obs, reward, terminated, truncated, info = await env_step(env.astep(turn.action))
            timings.sandbox_s += info["timings"].get("tool_s", 0.0)
            timings.grader_s += info["timings"].get("score_s", 0.0)
            if terminated or truncated:
                break
            if on_event is not None:
                on_event("observation", {"text": obs, "result": info["tool_result"]})
            if gen.observation_placement == "message":
                transcript.add_observation(obs, placement="message", role=gen.observation_role)
            elif turn.closed:
                # The model ended its message (e.g. a fenced block, no </code> stop): the tool
                # output comes back as the next user turn.
                transcript.add_observation(obs, placement="message", role="user")
            else:
                # A stop string can end inside a token ("</code><"): the sampled text already
                # holds the observation's first characters, so only the rest is appended.
                overflow = turn.text[len(turn.action) :]
                if overflow and obs.startswith(overflow):
                    obs = obs[len(overflow) :]
                transcript.add_observation(obs, placement="inline")
    except EpisodeDeadline:
        watchdog = True
        assert deadline is not None
        mask_reason = f"the episode overran its deadline of {deadline.budget_s:g} s of active time"
        if env_open:
            await env.atruncate("watchdog")
            env_open = False
    except BaseException:
        if env_open:
            await asyncio.shield(env.aclose())
        raise
    timings.total_s = time.monotonic() - t_start
    score = final["score"] if final is not None else None
    masked = bool(mask_reason) or (final is not None and final["masked"])
    reason: TerminationReason
    if watchdog:
        reason = "watchdog"
    elif mask_reason:
        reason = "masked"
    else:
        assert final is not None, "the loop ends with a final step or a mask"
        reason = final["termination_reason"] or "error"
    model_versions = [
        v for v, m in zip(transcript.response_versions, transcript.response_mask, strict=True) if m
    ]
    return Trajectory(
        prompt_key=task.key,
        episode_id=opening["episode_id"],
        prompt_ids=list(transcript.prompt_ids),
        response_ids=list(transcript.response_ids),
        response_mask=list(transcript.response_mask),
        response_logprobs=list(transcript.response_logprobs),
        reward=0.0 if masked else float(reward),
        score_status=score.status if score is not None else "unscored",
        grade_detail=score.detail if score is not None else "",
        turns=transcript.turns,
        tool_results=results,
        termination_reason=reason,
        masked=masked,
        mask_reason=(mask_reason or (final["detail"] if final is not None else ""))
        if masked
        else "",
        policy_version=min(model_versions, default=request.policy_version),
        timings=timings,
        drift=list(transcript.drift),
        data_source=task.data_source,
        group_id=request.group_id,
        text=str(tokenizer.decode(transcript.response_ids)),
        answer=task.answer,
        sample_index=request.sample_index,
        response_versions=list(transcript.response_versions),
        turn_versions=transcript.turn_versions,
        log_prob_mode=log_prob_mode,
        sampling=params,
    )
