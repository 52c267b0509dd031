"""Policy over an OpenAI-compatible completions server that speaks token ids (vLLM).

This is how GPU users run vLLM with spo-gym outside verl: start
``python -m vllm.entrypoints.openai.api_server --model PATH`` and point :class:`OpenAIPolicy` at
it. The prompt goes out as token ids (the completions API accepts a list of ints), and the
sampled tokens come back as ids — ``return_tokens_as_token_ids`` makes vLLM spell each returned
token ``"token_id:<id>"`` — with their log-probs, so nothing is re-tokenized on either side.
Another server works if it honours these vLLM request fields; one that answers with text tokens
is refused rather than re-tokenized.

Log-probs are what the server reports, and vLLM reports one of two kinds, fixed when it starts:
``--logprobs-mode raw_logprobs`` (the default) gives ``log_softmax(logits)``, the temperature
ignored; ``processed_logprobs`` gives the distribution tokens are drawn from — tempered, then
top-k/top-p filtered and renormalised. The PPO ratio needs ``log_softmax(logits / T)`` over the
full vocabulary (:data:`~agents.policy.LogProbMode` ``"tempered"``, what
:class:`~agents.hf_policy.HFPolicy` reports and a learner recomputes). A processed-mode server
gives exactly that when top-k and top-p are off; a raw-mode one only at ``T = 1`` or greedy. The
policy learns the server's mode (probed at construction unless given), labels every output with
the kind it holds, and by default refuses a request whose log-probs would be of another kind.
Sampling options passed through ``extra_body`` (penalties, ``min_p``) change the distribution
and are not reflected in the label.

Weights live in the server, so :meth:`OpenAIPolicy.update_weights` cannot load them: a trainer
pauses the policy (requests in flight finish, new ones wait), updates the server itself (e.g.
vLLM's weight-sync RPCs, or a restart on the new checkpoint), calls
:meth:`OpenAIPolicy.set_version` and resumes.

Requests run on a private thread pool over the standard library's HTTP client, so the suite
needs no HTTP package; ``max_concurrency`` bounds the requests in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from agents.policy import LogProbMode, SamplingParams, StopReason, TokenOutput

_TOKEN_ID_PREFIX = "token_id:"
# Two probe temperatures far apart: a processed-mode server reports clearly different log-probs
# for the (temperature-invariant) argmax token, a raw-mode one the same.
_PROBE_TEMPERATURES = (0.5, 2.0)
_PROBE_TOLERANCE = 1e-4

ServerLogProbsMode = Literal["raw_logprobs", "processed_logprobs"]
"""vLLM's ``--logprobs-mode`` values this policy understands."""


class OpenAIPolicyError(RuntimeError):
    """The server failed or answered something that is not a token-level completion."""


class OpenAIPolicy:
    """A :class:`~agents.policy.Policy` backed by an OpenAI-compatible ``/v1/completions``.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (``/v1`` is added if absent).
        model: the served model name.
        api_key: sent as a bearer token if given.
        timeout_s: per-request HTTP timeout.
        max_concurrency: most requests in flight (each holds one pool thread while waiting).
        extra_body: extra request fields (server-specific options such as ``repetition_penalty``).
        max_context_tokens: the served model's context length; default the ``max_model_len``
            the server lists for ``model`` under ``/v1/models`` (``None`` if it lists none).
        logprobs_mode: the server's ``--logprobs-mode``; default: probed with two one-token
            requests.
        require_tempered: refuse (with :class:`OpenAIPolicyError`) a request whose log-probs
            would not be ``"tempered"``; turn off where log-probs do not matter (evaluation).

    Raises:
        OpenAIPolicyError: the server could not be reached to look up what was not given.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_concurrency: int = 64,
        extra_body: Mapping[str, Any] | None = None,
        max_context_tokens: int | None = None,
        logprobs_mode: ServerLogProbsMode | None = None,
        require_tempered: bool = True,
    ) -> None:
        root = base_url.rstrip("/")
        self.api_root = root if root.endswith("/v1") else root + "/v1"
        self.url = self.api_root + "/completions"
        self.model = model
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._extra = dict(extra_body or {})
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_concurrency, thread_name_prefix="openai-policy"
        )
        self.require_tempered = require_tempered
        self._version = 0
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._max_context_tokens = (
            max_context_tokens if max_context_tokens is not None else self._served_context()
        )
        self.logprobs_mode: ServerLogProbsMode = logprobs_mode or self._probe_logprobs_mode()

    @property
    def version(self) -> int:
        """The weights version the server serves, as last told by :meth:`set_version`."""
        return self._version

    @property
    def max_context_tokens(self) -> int | None:
        """The served model's context length (``None``: unknown)."""
        return self._max_context_tokens

    def log_prob_mode(self, sampling: SamplingParams) -> LogProbMode:
        """The kind of log-probs a request with ``sampling`` gets from this server."""
        if sampling.greedy:
            return "tempered"  # vLLM reports log_softmax(logits) for greedy rows in both modes
        if self.logprobs_mode == "raw_logprobs":
            return "tempered" if sampling.temperature == 1 else "raw"
        return "filtered" if sampling.filtered else "tempered"

    # -- the weight-update protocol ----------------------------------------------------------

    async def pause(self) -> None:
        """Hold new requests and return once the requests in flight have finished.

        A server cannot be paused between decode steps from outside, so requests already
        sent run to their end under the weights they started with.
        """
        self._resumed.clear()
        await self._idle.wait()

    def resume(self) -> None:
        """Send held and new requests again."""
        self._resumed.set()

    def set_version(self, version: int) -> None:
        """Record that the server now serves weights ``version`` (call while paused, after
        updating the server's weights yourself)."""
        if version <= self._version:
            raise ValueError(f"version must increase: {version} after {self._version}")
        self._version = version

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        """Not possible from a client: the weights live in the server.

        Raises:
            NotImplementedError: always; see the module docstring for what to do instead.
        """
        raise NotImplementedError(
            "OpenAIPolicy cannot load weights into a remote server: pause, update the "
            "server's weights yourself (e.g. vLLM's weight-sync RPCs or a restart on the new "
            "checkpoint), call set_version(version), then resume"
        )

    def request_body(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> dict[str, Any]:
        """The JSON body for one request (vLLM's completions parameters)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # vLLM's "disabled"
            "stop": list(sampling.stop),
            "include_stop_str_in_output": sampling.include_stop_str,
            "logprobs": 0,  # the sampled token's log-prob only
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "n": 1,
            "stream": False,
            **self._extra,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        """Send one completion request; the sampled ids and log-probs come back exactly.

        Raises:
            OpenAIPolicyError: the server failed, or (with ``require_tempered``) its log-probs
                for ``sampling`` would not be ``"tempered"``.
        """
        mode = self.log_prob_mode(sampling)
        if self.require_tempered and mode != "tempered":
            raise OpenAIPolicyError(
                f"this server ({self.logprobs_mode}) reports {mode!r} log-probs for "
                f"temperature={sampling.temperature}, top_p={sampling.top_p}, "
                f"top_k={sampling.top_k}; the PPO ratio needs 'tempered' ones: start vLLM with "
                "--logprobs-mode processed_logprobs and sample with top_p=1, top_k=0 (or pass "
                "require_tempered=False where log-probs are not trained on)"
            )
        body = self.request_body(prompt_ids, sampling)
        await self._resumed.wait()
        self._in_flight += 1
        self._idle.clear()
        version = self._version
        try:
            loop = asyncio.get_running_loop()
            reply = await loop.run_in_executor(self._pool, self._post, body)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        out = parse_completion(reply)
        return replace(out, policy_versions=(version,) * len(out.token_ids), log_prob_mode=mode)

    def _served_context(self) -> int | None:
        """``max_model_len`` of the served model, from ``/v1/models``."""
        reply = self._request(
            urllib.request.Request(self.api_root + "/models", headers=self._headers)
        )
        for entry in reply.get("data") or []:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                limit = entry.get("max_model_len")
                return int(limit) if isinstance(limit, int) else None
        return None

    def _probe_logprobs_mode(self) -> ServerLogProbsMode:
        """Ask for one token at two temperatures and compare the argmax token's log-prob."""
        top: list[float] = []
        for temperature in _PROBE_TEMPERATURES:
            body = {
                "model": self.model,
                "prompt": [0],
                "max_tokens": 1,
                "temperature": temperature,
                "logprobs": 1,
                "return_tokens_as_token_ids": True,
                "seed": 0,
                "n": 1,
                "stream": False,
            }
            reply = self._post(body)
            try:
                alternatives = reply["choices"][0]["logprobs"]["top_logprobs"][0]
                top.append(max(float(v) for v in alternatives.values()))
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise OpenAIPolicyError(
                    f"{self.url}: cannot tell the server's log-prob mode ({exc!r}); pass "
                    "logprobs_mode= explicitly"
                ) from exc
        same = abs(top[0] - top[1]) < _PROBE_TOLERANCE
        return "raw_logprobs" if same else "processed_logprobs"

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request(
            urllib.request.Request(
                self.url, data=json.dumps(body).encode(), headers=self._headers, method="POST"
            )
        )

    def _request(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise OpenAIPolicyError(f"{request.full_url} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
            raise OpenAIPolicyError(f"{request.full_url}: {exc}") from exc

    def close(self) -> None:
        """Release the request threads (waits for requests in flight)."""
        self._pool.shutdown(wait=True)


def parse_completion(reply: Mapping[str, Any]) -> TokenOutput:
    """A :class:`TokenOutput` from a completions reply made with ``return_tokens_as_token_ids``."""
    try:
        choice = reply["choices"][0]
        logprobs = choice["logprobs"]
        tokens: list[str] = logprobs["tokens"]
        values: list[float | None] = logprobs["token_logprobs"]
        finish = choice["finish_reason"]
    except (KeyError, IndexError, TypeError) as exc:
        raise OpenAIPolicyError(f"not a completion with logprobs: {exc!r}") from exc
    if finish not in ("stop", "length"):
        raise OpenAIPolicyError(f"generation did not finish: finish_reason={finish!r}")
    ids = []
    for token in tokens:
        if not token.startswith(_TOKEN_ID_PREFIX):
            raise OpenAIPolicyError(
                f"token {token!r} is text, not an id: the server ignored return_tokens_as_token_ids"
            )
        ids.append(int(token[len(_TOKEN_ID_PREFIX) :]))
    if any(v is None for v in values):
        raise OpenAIPolicyError("the server returned a token without a log-prob")
    stop_reason: StopReason = "stop" if finish == "stop" else "length"
    return TokenOutput(tuple(ids), tuple(float(v) for v in values if v is not None), stop_reason)
