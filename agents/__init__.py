"""Agents: policies that sample tokens, the token transcript of an episode, embedded models,
and the rollout engine that turns episodes into a stream of trajectories.

Public API::

    from agents import HFPolicy, SamplingParams, Transcript

    policy = HFPolicy.from_pretrained("smollm2-135m")   # or a local HF folder, or
    policy = OpenAIPolicy("http://127.0.0.1:8000", "served-model")   # a vLLM server
    transcript = Transcript(tokenizer, messages)          # the served model's tokenizer
    out = await policy.generate(transcript.context_ids, transcript.sampling_for(sampling))
    turn = transcript.add_model_output(out, sampling)
    transcript.add_observation(tool_output, placement="inline")

    # Many episodes, batched for a learner; the weight-update protocol between batches:
    engine = RolloutEngine(episode_fn, source, policy=policy, max_staleness=1)
    batch = await engine.next_batch(64, extra=32)
    await engine.pause(); await policy.update_weights(state, version); engine.resume()

``HFPolicy`` is imported on first use: it pulls in torch, which a remote-policy user may not need.
(The PyPI package ``openai-agents`` also installs a top-level ``agents``; this is spo-gym's.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.clock import ActiveClock, Deadline
from agents.engine import (
    Batch,
    BatchStats,
    PromptSource,
    RolloutEngine,
    RolloutError,
    TaskCycle,
)
from agents.episode import run_episode
from agents.episode_request import EpisodeFn, EpisodeRequest
from agents.models import (
    EMBEDDED_MODELS,
    EmbeddedModel,
    EmbeddedModelUnavailableError,
    ModelNotFoundError,
    list_models,
    prepare,
    resolve_model,
)
from agents.openai_policy import OpenAIPolicy, OpenAIPolicyError
from agents.policy import LogProbMode, Policy, SamplingParams, StopReason, TokenOutput
from agents.seeds import turn_seed
from agents.trajectory import EpisodeTimings, Trajectory
from agents.transcript import (
    Drift,
    DriftCause,
    ExhaustedLimit,
    ModelTurn,
    ObservationTurn,
    Transcript,
    TranscriptError,
    TranscriptLimits,
)

if TYPE_CHECKING:
    from agents.hf_policy import HFPolicy, PolicyStats

__all__ = [
    "EMBEDDED_MODELS",
    "ActiveClock",
    "Batch",
    "BatchStats",
    "Deadline",
    "Drift",
    "DriftCause",
    "EmbeddedModel",
    "EmbeddedModelUnavailableError",
    "EpisodeFn",
    "EpisodeRequest",
    "EpisodeTimings",
    "ExhaustedLimit",
    "HFPolicy",
    "LogProbMode",
    "ModelNotFoundError",
    "ModelTurn",
    "ObservationTurn",
    "OpenAIPolicy",
    "OpenAIPolicyError",
    "Policy",
    "PolicyStats",
    "PromptSource",
    "RolloutEngine",
    "RolloutError",
    "SamplingParams",
    "StopReason",
    "TaskCycle",
    "TokenOutput",
    "Trajectory",
    "Transcript",
    "TranscriptError",
    "TranscriptLimits",
    "list_models",
    "prepare",
    "resolve_model",
    "run_episode",
    "turn_seed",
]


def __getattr__(name: str) -> Any:
    if name in ("HFPolicy", "PolicyStats"):
        from agents import hf_policy

        return getattr(hf_policy, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
