"""The OpenAI-compatible policy against a local HTTP server speaking vLLM's completions API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agents.openai_policy import OpenAIPolicy, OpenAIPolicyError
from agents.policy import Policy, SamplingParams


class FakeVLLM(BaseHTTPRequestHandler):
    """Answers /v1/completions like vLLM: the prompt ids reversed are the "sampled" tokens.

    Their log-prob is -0.5 from the "model"; a server in processed mode reports it divided by
    the temperature, as tempering changes it.
    """

    requests: list[dict[str, Any]]
    mode = "ok"
    logprobs_mode = "processed_logprobs"

    def do_GET(self) -> None:
        assert self.path == "/v1/models"
        self._send(200, {"data": [{"id": "tiny", "object": "model", "max_model_len": 4096}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers["Authorization"], **body}
        )
        if self.mode == "error":
            self._send(500, {"error": "engine dead"})
            return
        ids = list(reversed(body["prompt"]))[: body["max_tokens"]]
        tokens = [f"token_id:{i}" if self.mode == "ok" else str(i) for i in ids]
        finish = "length" if len(ids) == body["max_tokens"] else "stop"
        temperature = body["temperature"] or 1.0
        value = -0.5 / temperature if self.logprobs_mode == "processed_logprobs" else -0.5
        logprobs: dict[str, Any] = {"tokens": tokens, "token_logprobs": [value] * len(ids)}
        if body["logprobs"]:
            logprobs["top_logprobs"] = [{t: value} for t in tokens]
        self._send(200, {"choices": [{"text": "", "finish_reason": finish, "logprobs": logprobs}]})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture
def server() -> Iterator[tuple[str, type[FakeVLLM]]]:
    handler = type("Handler", (FakeVLLM,), {"requests": [], "mode": "ok"})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


async def test_token_ids_go_out_and_come_back_exactly(server: tuple[str, type[FakeVLLM]]) -> None:
    url, handler = server
    policy = OpenAIPolicy(url, "tiny", api_key="k", logprobs_mode="processed_logprobs")
    assert isinstance(policy, Policy)
    sampling = SamplingParams(
        max_tokens=3, temperature=0.5, top_p=1.0, stop=("</code>",), include_stop_str=True, seed=4
    )
    out = await policy.generate([5, 6, 7, 8], sampling)
    assert out.token_ids == (8, 7, 6) and out.log_probs == (-1.0, -1.0, -1.0)
    assert out.stop_reason == "length"
    [sent] = handler.requests
    assert sent["path"] == "/v1/completions" and sent["auth"] == "Bearer k"
    assert sent["prompt"] == [5, 6, 7, 8] and sent["model"] == "tiny"
    assert sent["return_tokens_as_token_ids"] is True and sent["logprobs"] == 0
    assert sent["stop"] == ["</code>"] and sent["include_stop_str_in_output"] is True
    assert sent["top_k"] == -1 and sent["seed"] == 4 and sent["temperature"] == 0.5
    short = await policy.generate([1, 2], SamplingParams(max_tokens=10))
    assert short.token_ids == (2, 1) and short.stop_reason == "stop"
    policy.close()


async def test_concurrent_requests_overlap(server: tuple[str, type[FakeVLLM]]) -> None:
    url, handler = server
    policy = OpenAIPolicy(url + "/v1/", "tiny", max_concurrency=8, logprobs_mode="raw_logprobs")
    outs = await asyncio.gather(
        *(policy.generate([i, i + 1], SamplingParams(max_tokens=2)) for i in range(8))
    )
    assert [o.token_ids for o in outs] == [(i + 1, i) for i in range(8)]
    assert len(handler.requests) == 8
    policy.close()


@pytest.mark.parametrize(("mode", "message"), [("error", "answered 500"), ("text", "not an id")])
async def test_server_failures_raise(
    server: tuple[str, type[FakeVLLM]], mode: str, message: str
) -> None:
    url, handler = server
    handler.mode = mode
    policy = OpenAIPolicy(url, "tiny", logprobs_mode="raw_logprobs")
    with pytest.raises(OpenAIPolicyError, match=message):
        await policy.generate([1, 2, 3], SamplingParams(max_tokens=2))
    policy.close()


async def test_an_unreachable_server_raises() -> None:
    with pytest.raises(OpenAIPolicyError, match=r"127\.0\.0\.1:9"):
        OpenAIPolicy("http://127.0.0.1:9", "tiny", timeout_s=5)
    policy = OpenAIPolicy(
        "http://127.0.0.1:9",
        "tiny",
        timeout_s=5,
        max_context_tokens=512,
        logprobs_mode="processed_logprobs",
    )
    with pytest.raises(OpenAIPolicyError):
        await policy.generate([1], SamplingParams(max_tokens=1))
    policy.close()


@pytest.mark.parametrize("server_mode", ["raw_logprobs", "processed_logprobs"])
async def test_the_server_log_prob_mode_is_probed_and_every_output_labelled(
    server: tuple[str, type[FakeVLLM]], server_mode: str
) -> None:
    url, handler = server
    handler.logprobs_mode = server_mode
    policy = OpenAIPolicy(url, "tiny")
    assert policy.logprobs_mode == server_mode and policy.max_context_tokens == 4096
    # Greedy, and T = 1 unfiltered, give the tempered kind from either server.
    for sampling in (SamplingParams(max_tokens=2, temperature=0), SamplingParams(max_tokens=2)):
        assert (await policy.generate([1, 2], sampling)).log_prob_mode == "tempered"
    tempered = SamplingParams(max_tokens=2, temperature=0.7)
    filtered = SamplingParams(max_tokens=2, temperature=0.7, top_p=0.9)
    if server_mode == "raw_logprobs":
        wrong, kind = tempered, "raw"
    else:
        assert (await policy.generate([1, 2], tempered)).log_prob_mode == "tempered"
        wrong, kind = filtered, "filtered"
    sent = len(handler.requests)
    with pytest.raises(OpenAIPolicyError, match=f"reports '{kind}' log-probs.*processed_logprobs"):
        await policy.generate([1, 2], wrong)
    assert len(handler.requests) == sent  # refused before sending
    lenient = OpenAIPolicy(url, "tiny", require_tempered=False, logprobs_mode=policy.logprobs_mode)
    assert (await lenient.generate([1, 2], wrong)).log_prob_mode == kind
    policy.close()
    lenient.close()


async def test_pause_holds_new_requests_and_versions_are_recorded(
    server: tuple[str, type[FakeVLLM]],
) -> None:
    url, handler = server
    policy = OpenAIPolicy(url, "tiny", max_context_tokens=100, logprobs_mode="raw_logprobs")
    assert policy.max_context_tokens == 100 and policy.version == 0
    await policy.pause()
    held = asyncio.ensure_future(policy.generate([1, 2, 3], SamplingParams(max_tokens=2)))
    await asyncio.sleep(0.2)
    assert not held.done() and not handler.requests
    with pytest.raises(NotImplementedError, match="set_version"):
        await policy.update_weights({}, 1)
    policy.set_version(1)
    policy.resume()
    out = await held
    assert out.policy_versions == (1, 1)
    with pytest.raises(ValueError, match="increase"):
        policy.set_version(1)
    policy.close()
