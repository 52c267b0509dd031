"""verl's LLM server client served in-process by a local spo-gym policy: agent loops on a CPU.

verl's agent loops sample through ``server_manager.generate`` — a client of vLLM or SGLang
servers on GPUs. :class:`LocalLLMServerClient` has the same signature and return type and
samples with an :class:`agents.Policy` in this process, by default
:class:`agents.hf_policy.HFPolicy` (a transformers model on the CPU: continuous batching, prefix
KV cache, tempered log-probs). Give it to an ``AgentLoopWorker`` as its ``llm_client``, or to an
agent loop as its ``server_manager``, to run and debug agent loops where no GPU is::

    server = LocalLLMServerClient.from_pretrained("smollm2-135m", config)
    worker = AgentLoopWorker(config, server)
    output = await worker.generate_sequences(batch)

Made from a policy *factory* (as :meth:`LocalLLMServerClient.from_pretrained` does), the client
pickles without its model and loads it on first use in the process that uses it, so verl's
``AgentLoopManager`` can hand it to its Ray ``AgentLoopWorker`` actors: each serves its own copy.
A client made from a live policy stays in its process.

It behaves like verl's vLLM server: ``max_tokens`` defaults to
``min(response_length, prompt_length + response_length - len(prompt_ids))`` and is clamped to
the model's context; ``logprobs`` asks for the sampled tokens' log-probs; the stop reason is
``"completed"`` whether a stop string, an end-of-sequence token or ``max_tokens`` ended the
request; ``extra_fields`` carries the weights version as ``global_steps``,
``min_global_steps`` and ``max_global_steps`` (the policy's version, see
:meth:`agents.Policy.update_weights`). Sampling parameters the policy cannot honour are
rejected, not ignored.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput

from agents.policy import Policy, SamplingParams

__all__ = ["LocalLLMServerClient", "PolicyFactory"]

PolicyFactory = Callable[[], Policy]
"""Makes the served policy (a picklable callable, e.g. a ``functools.partial``)."""

# Sampling keys the policy has no knob for: accepted only with these (neutral) values.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "repetition_penalty": (None, 1.0),
    "ignore_eos": (None, False),
    "stop_token_ids": (None, [], ()),
}
_KNOWN = {
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_new_tokens",
    "stop",
    "include_stop_str_in_output",
    "logprobs",
    "seed",
    *_NEUTRAL,
}


class LocalLLMServerClient(LLMServerClient):
    """A :class:`verl.workers.rollout.llm_server.LLMServerClient` whose server is a policy.

    Args:
        policy: samples the tokens (safe to call from concurrent episodes on one event loop),
            or a :data:`PolicyFactory` that makes it on first use (see the module docstring).
        config: the composed verl config (``actor_rollout_ref.rollout``'s ``prompt_length``,
            ``response_length`` and ``max_model_len`` are read).
    """

    def __init__(self, policy: Policy | PolicyFactory, config: DictConfig) -> None:
        # No load balancer: the one server is in this process (verl's default is None too).
        super().__init__(config=config, load_balancer_handle=None)  # type: ignore[arg-type]
        rollout = config.actor_rollout_ref.rollout
        self._policy: Policy | None = None
        self._factory: PolicyFactory | None = None
        if isinstance(policy, Policy):
            self._policy = policy
        else:
            self._factory = policy
        self.prompt_length = int(rollout.prompt_length)
        self.response_length = int(rollout.response_length)
        self._max_model_len = rollout.get("max_model_len")

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike[str], config: DictConfig, **policy_kwargs: Any
    ) -> LocalLLMServerClient:
        """Serve an embedded model by name (``"smollm2-135m"``) or a local HF folder with
        :class:`agents.hf_policy.HFPolicy` (keyword arguments go to it), loaded on first use."""
        from agents.hf_policy import HFPolicy

        return cls(functools.partial(HFPolicy.from_pretrained, str(model), **policy_kwargs), config)

    @property
    def policy(self) -> Policy:
        """The served policy (made by the factory on first use in this process)."""
        if self._policy is None:
            assert self._factory is not None
            self._policy = self._factory()
        return self._policy

    @property
    def max_model_len(self) -> int | None:
        """Most prompt plus generated tokens: ``rollout.max_model_len`` and the model's."""
        limits = [n for n in (self._max_model_len, self.policy.max_context_tokens) if n]
        return min(int(n) for n in limits) if limits else None

    def __getstate__(self) -> dict[str, Any]:
        if self._factory is None:
            raise TypeError(
                "a LocalLLMServerClient made from a live policy cannot leave its process; "
                "make it from a policy factory (from_pretrained) to send it to Ray workers"
            )
        return {**self.__dict__, "_policy": None}

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Samples a continuation of ``prompt_ids`` (verl's ``LLMServerClient.generate``).

        ``request_id`` and routing hints in ``kwargs`` (``priority``, ...) only steer verl's
        load balancer; with one in-process server they change nothing.

        Raises:
            ValueError: multimodal input, an unsupported or non-neutral sampling parameter, or
                a prompt that leaves no room in the model's context.
        """
        if image_data or video_data or audio_data or kwargs.get("mm_processor_output"):
            raise ValueError("the local server serves text models: no image, video or audio")
        sampling, want_logprobs = self._sampling(prompt_ids, sampling_params)
        out = await self.policy.generate(list(prompt_ids), sampling)
        versions = out.policy_versions or (self.policy.version,)
        return TokenOutput(
            token_ids=list(out.token_ids),
            log_probs=list(out.log_probs) if want_logprobs else None,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={
                "global_steps": versions[-1],
                "min_global_steps": min(versions),
                "max_global_steps": max(versions),
            },
        )

    def _sampling(
        self, prompt_ids: list[int], params: Mapping[str, Any]
    ) -> tuple[SamplingParams, bool]:
        unknown = sorted(set(params) - _KNOWN)
        if unknown:
            raise ValueError(f"the local server does not support sampling params {unknown}")
        for key, neutral in _NEUTRAL.items():
            if params.get(key) not in neutral:
                raise ValueError(f"the local server does not support {key}={params[key]!r}")
        room = None if self.max_model_len is None else self.max_model_len - len(prompt_ids)
        if room is not None and room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room to generate within the "
                f"model's context of {self.max_model_len}"
            )
        requested = params.get("max_tokens", params.get("max_new_tokens"))
        if requested is None:
            requested = min(
                self.response_length, self.prompt_length + self.response_length - len(prompt_ids)
            )
        max_tokens = max(1, int(requested) if room is None else min(int(requested), room))
        stop = params.get("stop") or ()
        top_k = params.get("top_k")
        sampling = SamplingParams(
            max_tokens=max_tokens,
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=0 if top_k is None or int(top_k) < 0 else int(top_k),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            include_stop_str=bool(params.get("include_stop_str_in_output", True)),
            seed=None if params.get("seed") is None else int(params["seed"]),
        )
        return sampling, bool(params.get("logprobs"))
