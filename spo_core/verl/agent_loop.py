"""The ``spo_gym_tool_agent`` agent loop: one whole spo-gym episode per verl sample.

verl makes one agent-loop object per sample (``hydra.utils.instantiate`` of the registered
class, inside a long-lived ``AgentLoopWorker``) and awaits ``run(sampling_params, **row)``. The
loop plays the row's task in a spo-gym env with :func:`agents.run_episode` — the env's prompt,
stop strings and token limits, the token transcript (sampled ids kept exactly, only new
observations tokenized), the Docker sandbox held for the whole episode, the env's grader —
with every model turn sampled by verl's ``server_manager.generate`` (:mod:`.server_policy`).
The sandbox pool belongs to the worker process (:mod:`.worker_pool`).

Limits. The env declares its own turn, per-turn and episode budgets; the loop applies
``spo_gym.max_turns`` (capped by ``rollout.multi_turn.max_assistant_turns`` if set), caps the
episode budget (model and tool tokens) at ``rollout.response_length`` and the context at
``rollout.max_model_len`` (default prompt plus response length). A prompt longer than
``rollout.prompt_length`` is a configuration error (``PromptTooLongError``); verl's own
left-truncation would cut the env's system prompt.

The output. ``response_ids`` interleaves sampled tokens (``response_mask`` 1, with the server's
log-probs) and tool output (mask 0, log-prob 0.0); ``reward_score`` is the env's reward (0 when
masked). ``extra_fields`` holds verl's keys — ``min_global_steps`` / ``max_global_steps`` (the
oldest and newest weights version that sampled a token: the V1 replay buffer's staleness
control), ``turn_scores``, ``tool_rewards``, ``reward_extra_info`` (``acc``: the reward, ``None``
when masked so validation leaves it out) — every key of
:class:`~spo_core.verl.fields.SPOExtraFields`, and two more for logs and statistics:
``spo_mask_reason`` (why a masked episode was masked, else "") and ``spo_env_termination`` (the
env's own :data:`envs.TerminationReason`, finer than ``spo_termination``).

Masking. Only infrastructure failures mask (no sandbox obtainable, a grade that cannot be
computed, a server failure); the episode is returned with ``spo_masked=True``, never raised.
Whatever the model's code does in the sandbox — an error, a hang, a dead container — is an
observation, and the episode is scored. A masked episode that sampled nothing gets one
placeholder token (mask 0) so that verl's per-sample tensors are never empty.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast, get_args

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    register,
)

import envs
from agents.episode import run_episode
from agents.episode_request import EpisodeRequest
from agents.policy import SamplingParams
from agents.trajectory import Trajectory
from envs.generation import GenerationSpec
from spo_core.verl.fields import AGENT_NAME, SPOExtraFields, Termination
from spo_core.verl.gym_config import SPOGymConfig, resolve_env_id
from spo_core.verl.row import EpisodeRow
from spo_core.verl.server_policy import PromptTooLongError, ServerCall, ServerPolicy
from spo_core.verl.worker_pool import worker_pool

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["SPOGymAgentLoop"]

logger = logging.getLogger(__name__)

_TERMINATION: dict[str, Termination] = {
    "answered": "answer",
    "no_tool_call": "no_answer",
    "max_turns": "max_turns",
    "token_budget": "token_budget",
    "turn_tokens": "token_budget",
    "context_limit": "token_budget",
    "watchdog": "masked",
    "masked": "masked",
}
assert set(_TERMINATION.values()) == set(get_args(Termination))


@register(AGENT_NAME)
class SPOGymAgentLoop(AgentLoopBase):
    """Plays one dataset row as a spo-gym episode (see the module docstring).

    Constructed by verl with ``AgentLoopBase``'s arguments; verl's ``tools`` (from
    ``multi_turn.tool_config_path``) are not used: the env defines its tools.

    Raises:
        GymConfigError: from the constructor, for a bad ``spo_gym`` block.
    """

    def __init__(self, *args: Any, tools: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # verl annotates it as the AutoTokenizer factory; it is a tokenizer instance.
        self.chat_tokenizer = cast("PreTrainedTokenizerBase", self.tokenizer)
        self.gym = SPOGymConfig.from_verl(self.config)
        rollout = self.rollout_config
        self.prompt_length = int(rollout.prompt_length)
        self.response_length = int(rollout.response_length)
        context = self.prompt_length + self.response_length
        max_model_len = rollout.get("max_model_len")
        self.max_context_tokens = min(context, int(max_model_len)) if max_model_len else context
        cap = rollout.get("multi_turn", {}).get("max_assistant_turns")
        self.max_turns = min(self.gym.max_turns, int(cap)) if cap else self.gym.max_turns

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Plays the row ``kwargs`` (verl's dataset columns) and returns its trajectory.

        Raises:
            RowError: the row lacks a field the episode needs.
            GymConfigError: the row's env name is not registered.
            PromptTooLongError: the env's prompt exceeds ``rollout.prompt_length``.
        """
        row = EpisodeRow.parse(kwargs)
        env_id = resolve_env_id(row.env or self.gym.env)
        fallback_version = row.global_steps if row.global_steps is not None else 0
        generation = self._generation(env_id)
        env_kwargs = {**self.gym.env_kwargs, "generation": generation}
        pool = await worker_pool(self.gym.sandbox_config())
        env = envs.make(env_id, pool=pool, **env_kwargs)
        policy = ServerPolicy(
            self.server_manager,
            self.chat_tokenizer,
            sampling_params,
            max_prompt_tokens=self.prompt_length,
            max_context_tokens=self.max_context_tokens,
            fallback_version=fallback_version,
        )
        request = EpisodeRequest(
            row.task, sample_index=row.sample_index, policy_version=fallback_version
        )
        template_kwargs = _plain_dict(self.apply_chat_template_kwargs)
        try:
            trajectory = await run_episode(
                env,
                policy,
                self.chat_tokenizer,
                request,
                self._sampling(sampling_params),
                chat_template_kwargs=template_kwargs or None,
            )
        finally:
            await env.aclose()
        if len(trajectory.prompt_ids) > self.prompt_length:
            raise PromptTooLongError(
                f"{env_id}'s opening prompt is {len(trajectory.prompt_ids)} tokens, over "
                f"actor_rollout_ref.rollout.prompt_length={self.prompt_length} "
                f"(prompt_key {row.task.key})"
            )
        if trajectory.masked:
            logger.warning("episode %s masked: %s", trajectory.episode_id, trajectory.mask_reason)
        return self._output(trajectory, policy.calls, fallback_version)

    def _generation(self, env_id: str) -> GenerationSpec:
        """The env's generation controls with this loop's turn limit and token budget."""
        registered = envs.spec(env_id).kwargs.get("generation")
        overrides = {**(self.gym.env_kwargs.get("generation") or {}), "max_turns": self.max_turns}
        if isinstance(registered, GenerationSpec):
            generation: GenerationSpec | dict[str, Any] = registered.updated(overrides)
        else:
            generation = {**(registered or {}), **overrides}
        # Making an env acquires nothing: this reads its effective controls.
        probe = envs.make(env_id, **{**self.gym.env_kwargs, "generation": generation})
        spec = probe.generation
        probe.close()
        budget = spec.max_episode_tokens
        budget = self.response_length if budget is None else min(budget, self.response_length)
        return dataclasses.replace(spec, max_episode_tokens=budget)

    def _sampling(self, params: Mapping[str, Any]) -> SamplingParams:
        """verl's sampling params as the episode's base params (``max_tokens``: per turn)."""
        top_k = params.get("top_k")
        return SamplingParams(
            max_tokens=int(params.get("max_tokens") or self.response_length),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=0 if top_k is None or int(top_k) < 0 else int(top_k),
        )

    def _output(
        self, trajectory: Trajectory, calls: list[ServerCall], fallback_version: int
    ) -> AgentLoopOutput:
        response_ids = list(trajectory.response_ids)
        response_mask = list(trajectory.response_mask)
        logprobs = list(trajectory.response_logprobs)
        if len(response_ids) > self.response_length:
            raise RuntimeError(  # the transcript enforces the budget: a bug if it did not
                f"{len(response_ids)} response tokens exceed response_length={self.response_length}"
            )
        if not response_ids:
            pad = self.chat_tokenizer.pad_token_id
            response_ids, response_mask, logprobs = (
                [int(pad if pad is not None else self.chat_tokenizer.eos_token_id)],
                [0],
                [0.0],
            )
        timings = trajectory.timings
        preempted = [c.num_preempted for c in calls if c.num_preempted >= 0]
        termination = (
            "masked" if trajectory.masked else _TERMINATION.get(trajectory.termination_reason)
        )
        if termination is None:
            raise RuntimeError(f"unexpected episode ending {trajectory.termination_reason!r}")
        spo: SPOExtraFields = {
            "spo_masked": trajectory.masked,
            "spo_finished_at": time.time(),
            "spo_prompt_key": trajectory.prompt_key,
            "spo_turns": trajectory.turns,
            "spo_termination": termination,
            "spo_policy_versions": list(trajectory.turn_versions),
            "spo_timings": {
                "llm_s": timings.llm_s,
                "sandbox_s": timings.sandbox_s,
                "grader_s": timings.grader_s,
                "total_s": timings.total_s,
            },
        }
        extra_fields: dict[str, Any] = {
            "min_global_steps": min((c.min_version for c in calls), default=fallback_version),
            "max_global_steps": max((c.max_version for c in calls), default=fallback_version),
            "turn_scores": [],
            "tool_rewards": [],
            "reward_extra_info": {"acc": None if trajectory.masked else trajectory.reward},
            **spo,
            "spo_mask_reason": trajectory.mask_reason,
            "spo_env_termination": trajectory.termination_reason,
        }
        return AgentLoopOutput(
            prompt_ids=list(trajectory.prompt_ids),
            response_ids=response_ids,
            response_mask=response_mask,
            response_logprobs=logprobs,
            reward_score=trajectory.reward,
            # verl counts the prompt, each model turn and each tool output.
            num_turns=1 + trajectory.turns + _runs_of_zero(trajectory.response_mask),
            metrics=AgentLoopMetrics(
                generate_sequences=timings.llm_s,
                tool_calls=timings.sandbox_s,
                compute_score=timings.grader_s,
                num_preempted=sum(preempted) if preempted else -1,
            ),
            extra_fields=extra_fields,
        )


def _runs_of_zero(mask: list[int]) -> int:
    """Tool outputs in a response: maximal runs of mask 0."""
    return sum(1 for i, m in enumerate(mask) if m == 0 and (i == 0 or mask[i - 1] != 0))


def _plain_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return dict(value or {})
