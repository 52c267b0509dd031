"""One episode: a policy drives a tool env turn by turn, the transcript keeps the tokens exact.

The loop honours what the env declares in its :class:`~envs.generation.GenerationSpec`: stop
sequences end a turn, tool output enters the token stream inline (ReTool) or as a ``tool``
message (hermes), and the episode token budget — model *and* observation tokens — is enforced
by the transcript, which hands an exhausted budget back to the env with ``truncate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from agents.policy import Policy, SamplingParams
from agents.trajectory import EpisodeTimings, Trajectory
from agents.transcript import ObservationStyle, Transcript, TranscriptLimits
from envs.core import StepInfo, StepResult, ToolEnv
from envs.tasks import Task
from sandbox import RunResult

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")
EventCallback = Callable[[str, dict[str, Any]], None]
"""Receives ``(kind, payload)`` as an episode progresses (see :func:`run_episode`)."""


class EpisodeDeadline(Exception):
    """The episode ran past its wall-clock budget (raised inside :func:`run_episode`)."""


async def _until(deadline: float | None, work: Awaitable[T]) -> T:
    if deadline is None:
        return await work
    left = deadline - time.monotonic()
    if left <= 0:
        if asyncio.iscoroutine(work):
            work.close()
        raise EpisodeDeadline
    try:
        return await asyncio.wait_for(work, left)
    except TimeoutError as exc:
        raise EpisodeDeadline from exc


async def run_episode(
    env: ToolEnv,
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    sampling: SamplingParams,
    *,
    policy_version: int = 0,
    deadline: float | None = None,
    group_id: str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    on_event: EventCallback | None = None,
) -> Trajectory:
    """Plays one episode of ``task`` in ``env`` with ``policy`` and returns its trajectory.

    Args:
        env: a tool env (its episode state is reset here).
        policy: the token-level policy.
        tokenizer: the policy's tokenizer with its chat template.
        task: what to solve.
        sampling: base sampling params; the env's stop sequences and token limits are applied
            on top of them.
        policy_version: recorded in the trajectory (carried-over episodes keep theirs).
        deadline: ``time.monotonic()`` value past which the episode is ended with reason
            "watchdog" and reward 0, whatever it is waiting on.
        group_id: recorded in the trajectory (group mode).
        chat_template_kwargs: extra template variables (``enable_thinking``, ...).
        on_event: called as ``on_event(kind, payload)`` for live displays: ``("turn",
            {"action"})`` after each model turn, ``("observation", {"text", "result"})`` after
            each tool call.

    A failure of the policy backend masks the episode (``mask_reason`` says why); so does a
    sandbox that cannot be obtained (the env's masking rule).
    """
    t_start = time.monotonic()
    timings = EpisodeTimings()
    _, opening = await env.areset(options={"task": task})
    gen = opening["generation"]
    transcript = Transcript(
        tokenizer,
        opening["messages"],
        limits=TranscriptLimits(max_response_tokens=gen.max_episode_tokens),
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

    try:
        while True:
            if transcript.exhausted:
                _, reward, _, _, _ = await env_step(env.atruncate("token_budget"))
                break
            request = transcript.sampling_for(params)
            t0 = time.monotonic()
            try:
                out = await _until(deadline, policy.generate(transcript.context_ids, request))
            except EpisodeDeadline:
                raise
            except Exception as exc:  # the backend failed: infrastructure, not the model
                mask_reason = f"policy backend failed: {type(exc).__name__}: {exc}"
                await env.aclose()
                env_open = False
                break
            finally:
                timings.llm_s += time.monotonic() - t0
            turn = transcript.add_model_output(out, request)
            if on_event is not None:
                on_event("turn", {"action": turn.action})
            if out.stop_reason == "length" and transcript.exhausted:
                _, reward, _, _, _ = await env_step(env.atruncate("token_budget", turn.action))
                break
            obs, reward, terminated, truncated, info = await env_step(env.astep(turn.action))
            timings.sandbox_s += info["timings"].get("tool_s", 0.0)
            timings.grader_s += info["timings"].get("score_s", 0.0)
            if terminated or truncated:
                break
            if on_event is not None:
                on_event("observation", {"text": obs, "result": info["tool_result"]})
            if gen.observation_placement == "message":
                transcript.add_observation(
                    obs, style=ObservationStyle.MESSAGE, role=gen.observation_role
                )
            elif turn.closed:
                # The model ended its message (e.g. a fenced block, no </code> stop): the tool
                # output comes back as the next user turn.
                transcript.add_observation(obs, style=ObservationStyle.MESSAGE, role="user")
            else:
                # A stop string can end inside a token ("</code><"): the sampled text already
                # holds the observation's first characters, so only the rest is appended.
                overflow = turn.text[len(turn.action) :]
                if overflow and obs.startswith(overflow):
                    obs = obs[len(overflow) :]
                transcript.add_observation(obs, style=ObservationStyle.INLINE)
    except EpisodeDeadline:
        if env_open:
            await env.atruncate("watchdog")
        mask_reason = "the episode overran its deadline"
    except BaseException:
        if env_open:
            await asyncio.shield(env.aclose())
        raise
    timings.total_s = time.monotonic() - t_start
    score = final["score"] if final is not None else None
    masked = bool(mask_reason) or (final is not None and final["masked"])
    if mask_reason == "the episode overran its deadline":
        reason = "watchdog"
    elif mask_reason:
        reason = "masked"
    else:
        reason = str(final["termination_reason"]) if final is not None else "error"
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
        policy_version=policy_version,
        timings=timings,
        drift=list(transcript.drift),
        data_source=task.data_source,
        group_id=group_id,
        text=str(tokenizer.decode(transcript.response_ids)),
        answer=task.answer,
    )
