"""verl's LLM server manager as an :class:`agents.Policy`, so verl's servers play our episodes.

The agent loop hands this policy to :func:`agents.run_episode`, which owns the token transcript,
the env's stop strings and every token limit; each model turn becomes one call of verl's
``server_manager.generate(request_id, *, prompt_ids, sampling_params) -> TokenOutput``.

What verl's servers report, and what becomes of it:

- **Stop reason.** verl's vLLM server reports ``"completed"`` for a turn ended by a stop string
  or an end-of-sequence token *and* for one cut by ``max_tokens``; the transcript must tell
  them apart (a cut turn is never run nor graded). A turn is "length" when it holds the
  requested ``max_tokens`` tokens and neither ends with a special token nor contains a stop
  string; otherwise "stop". ``"aborted"`` (a request the server dropped, with partial rollout
  off) is a backend failure: the episode is masked.
- **Log-probs.** Always requested: the decoupled PPO ratio needs the behaviour log-probs of
  episodes that finish after a weight update (SPO_SPEC §2 step 5), whatever
  ``rollout.calculate_log_probs`` says. A reply without them is a backend failure. They are of
  the kind the server's ``logprobs_mode`` gives (verl's default ``processed_logprobs``).
- **Policy versions.** verl's client reports the weights version as ``extra_fields``
  ``min_global_steps`` / ``max_global_steps`` of each call (they differ when a partial rollout
  was resumed under new weights). Every token of a call records the call's *minimum*, so an
  episode's staleness is never understated; :attr:`ServerPolicy.calls` keeps both. A server
  that reports none (a vLLM server before its first weight sync) gets ``fallback_version``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agents.policy import SamplingParams, StopReason, TokenOutput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from verl.workers.rollout.llm_server import LLMServerClient

__all__ = ["PromptTooLongError", "ServerCall", "ServerError", "ServerPolicy"]

_ABORTED = frozenset({"aborted", "abort"})


class ServerError(RuntimeError):
    """A reply of verl's server that cannot be used (the episode is masked)."""


class PromptTooLongError(ValueError):
    """The episode's opening prompt is longer than ``rollout.prompt_length``."""


@dataclass(frozen=True)
class ServerCall:
    """One ``generate`` call of an episode, as the server reported it.

    Attributes:
        num_tokens: tokens sampled.
        min_version: the weights version (verl global step) its first token was sampled with.
        max_version: the version its last token was sampled with.
        num_preempted: times the server preempted it (-1: not reported).
    """

    num_tokens: int
    min_version: int
    max_version: int
    num_preempted: int


class ServerPolicy:
    """One episode's :class:`agents.Policy` over verl's server manager.

    Args:
        server_manager: verl's ``LLMServerClient`` (or anything with its ``generate``).
        tokenizer: the served model's tokenizer (to find stop strings in sampled ids).
        sampling_params: verl's sampling params for the episode (temperature, top_p, top_k,
            ...); sent with every call, with ``max_tokens``, ``stop`` and ``logprobs`` set per
            call.
        max_prompt_tokens: longest opening prompt accepted (``rollout.prompt_length``).
        max_context_tokens: most prompt plus response tokens (what the transcript clamps to).
        fallback_version: the version of tokens whose server reports none.
        request_id: verl's sticky-session id (one per episode, so the server keeps the
            episode's prefix cache); default a fresh one.
    """

    def __init__(
        self,
        server_manager: LLMServerClient,
        tokenizer: PreTrainedTokenizerBase,
        sampling_params: Mapping[str, Any],
        *,
        max_prompt_tokens: int,
        max_context_tokens: int | None,
        fallback_version: int = 0,
        request_id: str | None = None,
    ) -> None:
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.sampling_params = dict(sampling_params)
        self.max_prompt_tokens = max_prompt_tokens
        self.request_id = request_id or uuid.uuid4().hex
        self.calls: list[ServerCall] = []
        self._max_context_tokens = max_context_tokens
        self._version = fallback_version
        self._special = frozenset(tokenizer.all_special_ids)

    @property
    def version(self) -> int:
        """The version the server reported last (the fallback before any call)."""
        return self._version

    @property
    def max_context_tokens(self) -> int | None:
        return self._max_context_tokens

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        """One model turn through ``server_manager.generate``.

        Raises:
            PromptTooLongError: the first call's prompt exceeds ``max_prompt_tokens``.
            ServerError: the server aborted the request or sent no usable log-probs.
        """
        if not self.calls and len(prompt_ids) > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"the env's opening prompt is {len(prompt_ids)} tokens, over "
                f"actor_rollout_ref.rollout.prompt_length={self.max_prompt_tokens}"
            )
        params = {
            **self.sampling_params,
            "max_tokens": sampling.max_tokens,
            "stop": list(sampling.stop),
            "logprobs": True,
        }
        if sampling.seed is not None:
            params["seed"] = sampling.seed
        out = await self.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(prompt_ids), sampling_params=params
        )
        ids = [int(t) for t in out.token_ids]
        if out.stop_reason in _ABORTED:
            raise ServerError(f"the server aborted the request after {len(ids)} tokens")
        if out.log_probs is None or len(out.log_probs) != len(ids):
            got = "none" if out.log_probs is None else str(len(out.log_probs))
            raise ServerError(f"the server sent {len(ids)} tokens but {got} log-probs")
        low, high = self._versions(out.extra_fields)
        self.calls.append(ServerCall(len(ids), low, high, _preempted(out.num_preempted)))
        self._version = high
        return TokenOutput(
            token_ids=tuple(ids),
            log_probs=tuple(float(p) for p in out.log_probs),
            stop_reason=self._stop_reason(out.stop_reason, ids, sampling),
            policy_versions=(low,) * len(ids),
        )

    def _versions(self, extra: Mapping[str, Any]) -> tuple[int, int]:
        step = extra.get("global_steps")
        low = extra.get("min_global_steps", step)
        high = extra.get("max_global_steps", step)
        low = self._version if low is None else int(low)
        high = low if high is None else int(high)
        return low, max(low, high)

    def _stop_reason(
        self, reported: str | None, ids: list[int], sampling: SamplingParams
    ) -> StopReason:
        if reported in ("stop", "length"):
            return "stop" if reported == "stop" else "length"
        if not ids or len(ids) < sampling.max_tokens or ids[-1] in self._special:
            return "stop"
        text = str(self.tokenizer.decode(ids, skip_special_tokens=False))
        return "stop" if any(s in text for s in sampling.stop) else "length"

    async def pause(self) -> None:
        """Nothing to do: verl pauses its servers itself."""

    def resume(self) -> None:
        """Nothing to do: verl resumes its servers itself."""

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Not supported: verl's checkpoint manager updates the servers' weights."""
        raise NotImplementedError("verl updates its servers' weights; the agent loop does not")


def _preempted(value: int | None) -> int:
    return -1 if value is None else int(value)
