"""The policy contract: token ids in, sampled token ids and their log-probs out.

Every backend — local transformers, an OpenAI-compatible server, a scripted policy in tests —
implements :class:`Policy`. The field names follow verl's ``TokenOutput`` so the verl agent-loop
adapter is a thin shim. Policies speak tokens, never text: the caller owns the context as token
ids (see :mod:`agents.transcript`), so nothing is re-tokenized between turns.

**The weight-update protocol.** A learner that trains while episodes run updates the sampler
in three calls: ``await engine.pause()`` (no new decode step starts; see
:meth:`agents.engine.RolloutEngine.pause`), ``await policy.update_weights(state, version)``,
``engine.resume()``. Episodes in flight continue under the new weights, so one episode — even
one turn — can hold tokens of two versions; every sampled token records the version that
sampled it (:attr:`TokenOutput.policy_versions`), and an episode's staleness is that of its
oldest token.

**Behaviour log-probs.** The PPO ratio compares the log-prob a learner recomputes with the one
recorded at sampling time, so both must be of the same distribution: ``log_softmax(logits / T)``
over the full vocabulary (``T = 1`` for greedy requests), before any top-k/top-p filtering —
what verl's actor recomputes (it divides the logits by the rollout temperature). That kind is
:data:`LogProbMode` ``"tempered"``; a backend that can only provide another kind says so in
:attr:`TokenOutput.log_prob_mode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

StopReason = Literal["stop", "length"]
"""``"stop"``: an end-of-sequence token or a stop string ended generation; ``"length"``: max_tokens."""

LogProbMode = Literal["tempered", "raw", "filtered"]
"""Which distribution a behaviour log-prob is taken from.

- ``"tempered"``: ``log_softmax(logits / T)`` over the full vocabulary (``T = 1`` when greedy) —
  what a learner recomputes; the only kind the PPO ratio may use.
- ``"raw"``: ``log_softmax(logits)``, the temperature ignored (vLLM's default
  ``--logprobs-mode raw_logprobs`` with ``T != 1``).
- ``"filtered"``: the tempered distribution after top-k/top-p, renormalised (vLLM's
  ``processed_logprobs`` with top-k or top-p active).
"""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Attributes:
        max_tokens: most tokens to generate (the caller clamps it to the episode's budget).
        temperature: softmax temperature; ``0`` means greedy (argmax) decoding.
        top_p: nucleus sampling mass in ``(0, 1]``; ``1`` disables it.
        top_k: keep the k most likely tokens; ``0`` disables it.
        stop: strings that end generation as soon as the decoded completion contains one.
        include_stop_str: whether the matched stop string belongs to the action *text* handed to
            the environment. The returned token ids always hold every sampled token, including
            those that spell the stop string (as vLLM does): they were sampled, they are in the
            context, and the transcript must stay exact.
        seed: makes sampling reproducible for this request, independent of other requests
            batched with it; ``None`` draws from the backend's own generator. Given to
            :func:`agents.episode.run_episode`, it is the *run* seed from which each request's
            seed is derived (:func:`agents.seeds.turn_seed`).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    include_stop_str: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str) or any(not s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        """Whether decoding is argmax rather than sampling."""
        return self.temperature == 0

    @property
    def filtered(self) -> bool:
        """Whether top-k or top-p narrows the distribution tokens are drawn from."""
        return not self.greedy and (self.top_k > 0 or self.top_p < 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "stop": list(self.stop),
            "include_stop_str": self.include_stop_str,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TokenOutput:
    """One completion, exactly as sampled.

    Attributes:
        token_ids: every sampled token, in order — including an end-of-sequence token and the
            tokens of a matched stop string.
        log_probs: the behaviour log-probability of each sampled token (same length as
            ``token_ids``), of the kind ``log_prob_mode`` names.
        stop_reason: why generation ended.
        policy_versions: the policy version that sampled each token (same length as
            ``token_ids``), or empty: then every token was sampled by the version
            :attr:`Policy.version` reported when the request was made (a backend whose weights
            cannot change during a request may leave it empty).
        log_prob_mode: the distribution ``log_probs`` are taken from (see :data:`LogProbMode`).
    """

    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...]
    stop_reason: StopReason
    policy_versions: tuple[int, ...] = ()
    log_prob_mode: LogProbMode = "tempered"

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.log_probs):
            raise ValueError(f"{len(self.token_ids)} token ids but {len(self.log_probs)} log-probs")
        if self.policy_versions and len(self.policy_versions) != len(self.token_ids):
            raise ValueError(
                f"{len(self.token_ids)} token ids but {len(self.policy_versions)} policy versions"
            )


@runtime_checkable
class Policy(Protocol):
    """Anything that continues a token context.

    Implementations must be safe to call from many concurrent episodes on one event loop; a
    batching backend gathers those calls into batches.

    Attributes:
        version: the version of the weights new tokens are sampled with (0 until the first
            :meth:`update_weights`).
        max_context_tokens: most tokens of prompt plus completion the model can hold
            (``None``: unknown). Callers clamp ``max_tokens`` to fit; a request that does not
            fit is the caller's error.
    """

    @property
    def version(self) -> int: ...

    @property
    def max_context_tokens(self) -> int | None: ...

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        """Sample a continuation of ``prompt_ids``.

        Args:
            prompt_ids: the whole context so far (prompt and earlier turns), as token ids.
            sampling: sampling controls for this request.

        Returns:
            The sampled ids with their log-probs and the reason generation stopped.
        """
        ...

    async def pause(self) -> None:
        """Return once no decode step runs and none will start until :meth:`resume`.

        Requests keep arriving and wait; rows being decoded keep their state.
        """
        ...

    def resume(self) -> None:
        """Let decoding continue after :meth:`pause`."""
        ...

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Load new weights and make ``version`` the version of every token sampled after it.

        Args:
            state: the new parameters (a ``state_dict`` for local backends).
            version: the new version; must be greater than the current one.

        Decoding is paused for the load (and resumed after it unless the caller had paused).
        """
        ...
