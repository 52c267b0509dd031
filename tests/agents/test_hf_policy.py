"""The local transformers policy on the embedded SmolLM2 model."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from agents.hf_policy import HFPolicy, sampling_generator
from agents.policy import Policy, SamplingParams, TokenOutput
from agents.transcript import Transcript, TranscriptLimits

# Where the top two logits are closer than this, batched and one-at-a-time greedy decoding may
# legitimately pick different tokens: padding changes the fp32 summation order (~1e-6).
NEAR_TIE = 1e-3
QUESTIONS = [
    "What is 2+2?",
    "Write a Python function that adds two numbers.",
    "Name three colours of the rainbow, please.",
    "hi",
]


@pytest.fixture(scope="module")
def policy(smollm2_dir: Path) -> HFPolicy:
    return HFPolicy.from_pretrained(smollm2_dir, seed=0)


@pytest.fixture(scope="module")
def prompts(smollm2_tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    return [
        list(
            smollm2_tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=False
            )
        )
        for q in QUESTIONS
    ]


def logits_after(policy: HFPolicy, context: list[int]) -> torch.Tensor:
    """The model's next-token logits for ``context``, from one unpadded forward pass."""
    with torch.inference_mode():
        return policy.model(torch.tensor([context])).logits[0].float()


def test_is_a_policy(policy: HFPolicy) -> None:
    assert isinstance(policy, Policy)


def test_batched_greedy_matches_one_at_a_time(policy: HFPolicy, prompts: list[list[int]]) -> None:
    greedy = SamplingParams(max_tokens=12, temperature=0)
    alone = [policy.generate_batch([p], [greedy])[0] for p in prompts]
    batched = policy.generate_batch(prompts, [greedy] * len(prompts))
    for prompt, a, b in zip(prompts, alone, batched, strict=True):
        same = 0
        while same < min(len(a.token_ids), len(b.token_ids)):
            if a.token_ids[same] != b.token_ids[same]:
                break
            same += 1
        for lp_a, lp_b in zip(a.log_probs[:same], b.log_probs[:same], strict=True):
            assert abs(lp_a - lp_b) < 1e-4
        if same < min(len(a.token_ids), len(b.token_ids)):
            top2 = logits_after(policy, prompt + list(a.token_ids[:same]))[-1].topk(2).values
            assert float(top2[0] - top2[1]) < NEAR_TIE, "tokens differ away from a near-tie"
        else:
            assert a.token_ids == b.token_ids and a.stop_reason == b.stop_reason


def test_log_probs_are_of_the_temperature_scaled_distribution(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    sampling = SamplingParams(max_tokens=6, temperature=0.7, seed=3)
    out = policy.generate_batch([prompts[1]], [sampling])[0]
    assert len(out.token_ids) == 6
    logits = logits_after(policy, prompts[1] + list(out.token_ids))
    steps = logits[len(prompts[1]) - 1 : -1] / 0.7
    expected = torch.log_softmax(steps, dim=-1).gather(-1, torch.tensor(out.token_ids)[:, None])
    assert torch.allclose(torch.tensor(out.log_probs), expected.squeeze(-1), atol=1e-4)


def test_top_k_one_is_greedy(policy: HFPolicy, prompts: list[list[int]]) -> None:
    greedy = policy.generate_batch([prompts[0]], [SamplingParams(max_tokens=8, temperature=0)])
    top1 = policy.generate_batch([prompts[0]], [SamplingParams(max_tokens=8, top_k=1, seed=1)])
    assert greedy[0].token_ids == top1[0].token_ids


def test_seeds_make_rows_reproducible_whatever_the_batch(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=11)
    alone = policy.generate_batch([prompts[2]], [seeded])[0]
    mixed = policy.generate_batch(
        [prompts[0], prompts[2]], [SamplingParams(max_tokens=5, temperature=1.0), seeded]
    )[1]
    other = policy.generate_batch([prompts[2]], [replace(seeded, seed=12)])[0]
    assert alone.token_ids == mixed.token_ids
    assert other.token_ids != alone.token_ids


def test_max_tokens_and_end_of_sequence(
    policy: HFPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    short, free = policy.generate_batch(
        [prompts[1], prompts[3]],
        [SamplingParams(max_tokens=5, temperature=0), SamplingParams(max_tokens=40, temperature=0)],
    )
    assert len(short.token_ids) == 5 and short.stop_reason == "length"
    # "hi" gets a short greeting that ends with the end-of-turn token, which is kept.
    assert free.stop_reason == "stop" and len(free.token_ids) < 40
    assert free.token_ids[-1] == smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_stop_string_ends_the_row_right_after_it(
    policy: HFPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    tok = smollm2_tokenizer
    free = policy.generate_batch([prompts[1]], [SamplingParams(max_tokens=24, temperature=0)])[0]
    text = tok.decode(free.token_ids)
    stop = "def "
    assert stop in text, text
    stopped = policy.generate_batch(
        [prompts[1], prompts[3]],
        [
            SamplingParams(max_tokens=24, temperature=0, stop=("never-seen", stop)),
            SamplingParams(max_tokens=3, temperature=0),
        ],
    )[0]
    assert stopped.stop_reason == "stop"
    n = len(stopped.token_ids)
    assert stopped.token_ids == free.token_ids[:n]
    assert stop in tok.decode(stopped.token_ids)
    assert stop not in tok.decode(stopped.token_ids[:-1])


def test_rejects_requests_the_model_cannot_hold(policy: HFPolicy) -> None:
    with pytest.raises(ValueError, match="empty"):
        policy.generate_batch([[]], [SamplingParams()])
    with pytest.raises(ValueError, match="positions"):
        policy.generate_batch([[1] * 8000], [SamplingParams(max_tokens=500)])


async def test_concurrent_requests_are_batched_and_the_loop_stays_free(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    before = policy.stats.batches
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    greedy = SamplingParams(max_tokens=6, temperature=0)
    outs = await asyncio.gather(*(policy.generate(p, greedy) for p in prompts * 2))
    done.set()
    await ticking
    assert all(isinstance(o, TokenOutput) and o.token_ids for o in outs)
    assert policy.stats.batches - before <= 2  # eight requests, not eight batches
    assert policy.stats.largest_batch >= len(prompts)
    assert ticks > 5  # the event loop kept running while the model worked


async def test_rows_are_delivered_as_they_finish_and_cancelled_rows_are_dropped(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    requests, tokens = policy.stats.requests, policy.stats.tokens
    slow = asyncio.ensure_future(
        policy.generate(prompts[1], SamplingParams(max_tokens=500, temperature=0, stop=("zzz",)))
    )
    quick = await policy.generate(prompts[0], SamplingParams(max_tokens=3, temperature=0))
    # The quick row came back while its batch-mate is still generating.
    assert len(quick.token_ids) <= 3 and not slow.done()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    again = await policy.generate(prompts[3], SamplingParams(max_tokens=2, temperature=0))
    assert len(again.token_ids) <= 2
    # The worker dropped the cancelled row rather than finishing its 500 tokens.
    assert policy.stats.requests - requests == 2
    assert policy.stats.tokens - tokens == len(quick.token_ids) + len(again.token_ids)


async def test_an_episode_keeps_every_sampled_id(
    policy: HFPolicy, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    tok = smollm2_tokenizer
    limits = TranscriptLimits(max_response_tokens=60)
    t = Transcript(tok, [{"role": "user", "content": "What is 2+2?"}], limits=limits)
    sampling = SamplingParams(max_tokens=12, temperature=0.8, seed=5, stop=("\n",))
    outputs = []
    while len(outputs) < 3 and not t.exhausted:
        out = await policy.generate(t.context_ids, t.sampling_for(sampling))
        outputs.append(out)
        turn = t.add_model_output(out, sampling)
        if turn.closed:
            break
        t.add_observation("\n<interpreter>\n4\n</interpreter>\n", placement="inline")
    model_ids = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m]
    assert model_ids == [i for out in outputs for i in out.token_ids]
    model_lps = [lp for lp, m in zip(t.response_logprobs, t.response_mask, strict=True) if m]
    assert model_lps == [lp for out in outputs for lp in out.log_probs]
    assert len(t.response_ids) <= 60


def test_the_converted_model_answers_sensibly(
    policy: HFPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    [out] = policy.generate_batch([prompts[0]], [SamplingParams(max_tokens=16, temperature=0)])
    assert "4" in smollm2_tokenizer.decode(out.token_ids)


def test_sampling_generators_live_on_the_device_they_sample_on() -> None:
    # torch.multinomial needs its generator on the device of the probabilities; only the CPU
    # is available here, so this checks the device plumbing and the seeded stream.
    device = torch.device("cpu")
    generator = sampling_generator(device, 5)
    assert generator.device == device
    probs = torch.full((50,), 0.02, device=device)
    expected = torch.multinomial(probs, 10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.multinomial(probs, 10, generator=generator), expected)


def test_outputs_say_what_their_log_probs_are_and_who_sampled_them(
    policy: HFPolicy, prompts: list[list[int]]
) -> None:
    out = policy.generate_batch([prompts[0]], [SamplingParams(max_tokens=4, seed=2)])[0]
    assert out.log_prob_mode == "tempered"
    assert out.policy_versions == (policy.version,) * len(out.token_ids)
    assert policy.max_context_tokens == policy.model.config.max_position_embeddings


@pytest.fixture
def fresh_policy(smollm2_dir: Path) -> HFPolicy:
    """A policy of its own (its weights get replaced); end-of-sequence ignored."""
    return HFPolicy.from_pretrained(smollm2_dir, seed=0, eos_token_ids=())


async def test_a_paused_policy_starts_no_decode_step(
    fresh_policy: HFPolicy, prompts: list[list[int]]
) -> None:
    await fresh_policy.pause()
    quick = asyncio.ensure_future(
        fresh_policy.generate(prompts[0], SamplingParams(max_tokens=1, temperature=0))
    )
    await asyncio.sleep(0.5)
    assert not quick.done()
    fresh_policy.resume()
    out = await asyncio.wait_for(quick, 60)
    assert len(out.token_ids) == 1
    await fresh_policy.aclose()


async def test_weights_updated_mid_generation_take_effect_at_once_and_are_recorded(
    fresh_policy: HFPolicy, smollm2_dir: Path, prompts: list[list[int]]
) -> None:
    policy = fresh_policy
    with pytest.raises(ValueError, match="increase"):
        await policy.update_weights(policy.model.state_dict(), 0)
    reference = HFPolicy.from_pretrained(smollm2_dir).model  # the original weights
    torch.manual_seed(0)
    perturbed = {
        name: tensor + 0.1 * tensor.std() * torch.randn_like(tensor)
        if tensor.numel() > 1
        else tensor
        for name, tensor in policy.model.state_dict().items()
    }
    greedy = SamplingParams(max_tokens=40, temperature=0)
    long = asyncio.ensure_future(policy.generate(prompts[1], greedy))
    # A short request in the same batch: when it is back, the long one has sampled 3 tokens.
    await policy.generate(prompts[3], SamplingParams(max_tokens=3, temperature=0))
    await policy.update_weights(perturbed, 1)
    assert policy.version == 1
    out = await long
    switch = out.policy_versions.index(1)
    assert 3 <= switch < 40
    assert out.policy_versions == (0,) * switch + (1,) * (40 - switch)
    # Every token's log-prob is that of the weights recorded for it, on the whole context: the
    # KV cache of the old weights was not reused after the update.
    context = torch.tensor([prompts[1] + list(out.token_ids)])
    with torch.inference_mode():
        old = torch.log_softmax(reference(context).logits[0].float(), -1)
        new = torch.log_softmax(policy.model(context).logits[0].float(), -1)
    start = len(prompts[1]) - 1
    for i, (token, log_prob, version) in enumerate(
        zip(out.token_ids, out.log_probs, out.policy_versions, strict=True)
    ):
        dist = (old if version == 0 else new)[start + i]
        assert int(dist.argmax()) == token
        assert abs(float(dist[token]) - log_prob) < 1e-3, (i, version)
    await policy.aclose()


# -- prefix cache across an episode's turns ---------------------------------------------------

# The exactness contract of the cached multi-turn path against a full re-prefill (fp32): tokens
# identical up to the first near-tie of the top two logits, log-probs within LOG_PROB_TOL. Rows
# that share a padded batch get the batched tolerance instead (NEAR_TIE above): padding alone
# moves fp32 log-probs by ~1e-5 (the re-prefill itself differs from an unpadded forward pass by
# up to 1.5e-5 here).
TIE = 1e-4
LOG_PROB_TOL = 1e-5
OBSERVATION = "\n<interpreter>\n4\n</interpreter>\n"


def assert_same_up_to_a_near_tie(
    policy: HFPolicy,
    prompt: list[int],
    cached: TokenOutput,
    reference: TokenOutput,
    tolerance: float = LOG_PROB_TOL,
) -> None:
    """``cached`` equals ``reference`` token for token up to the first position where the
    reference's top two logits are within TIE, with log-probs within ``tolerance``."""
    logits = logits_after(policy, prompt + list(reference.token_ids))[len(prompt) - 1 :]
    for i, (a, b) in enumerate(zip(cached.token_ids, reference.token_ids, strict=False)):
        top2 = logits[i].topk(2).values
        if float(top2[0] - top2[1]) < TIE:
            return
        assert a == b, f"tokens differ at {i}, away from a near-tie"
        assert abs(cached.log_probs[i] - reference.log_probs[i]) < tolerance, i
    assert cached.token_ids == reference.token_ids
    assert cached.stop_reason == reference.stop_reason


async def play_turns(
    policy: HFPolicy,
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[int],
    sampling: SamplingParams,
    turns: int,
) -> list[tuple[list[int], SamplingParams, TokenOutput]]:
    """Run ``turns`` turns of one conversation: each prompt is the previous prompt, its sampled
    ids and an observation. Returns each turn's prompt, sampling and output."""
    observation = tokenizer.encode(OBSERVATION, add_special_tokens=False)
    played = []
    context = list(prompt)
    for turn in range(turns):
        turn_sampling = replace(sampling, seed=(sampling.seed or 0) + turn)
        out = await policy.generate(context, turn_sampling)
        played.append((context, turn_sampling, out))
        context = context + list(out.token_ids) + observation
    return played


@pytest.fixture(scope="module")
def uncached(policy: HFPolicy) -> HFPolicy:
    """The same model behind a policy that re-prefills every request."""
    return HFPolicy(policy.model, policy.tokenizer, prefix_cache_bytes=0)


@pytest.mark.parametrize(
    ("temperature", "together"),
    [(0.0, False), (1.0, False), (1.0, True)],
    ids=["greedy", "sampled", "sampled-batched"],
)
async def test_cached_turns_match_a_full_reprefill(
    policy: HFPolicy,
    uncached: HFPolicy,
    prompts: list[list[int]],
    smollm2_tokenizer: PreTrainedTokenizerBase,
    temperature: float,
    together: bool,
) -> None:
    sampling = SamplingParams(max_tokens=10, temperature=temperature, seed=7)
    hits, reused = policy.prefix_cache.stats.hits, policy.stats.reused_tokens
    if together:
        # Four conversations at once: cached prefixes of different lengths share a padded batch.
        episodes = await asyncio.gather(
            *(play_turns(policy, smollm2_tokenizer, p, sampling, 3) for p in prompts)
        )
    else:
        prompts = prompts[:2]
        episodes = [await play_turns(policy, smollm2_tokenizer, p, sampling, 3) for p in prompts]
    # Every later turn reused its whole previous context but the newest sampled token; first
    # turns may reuse the chat template's opening, shared with other conversations.
    assert policy.prefix_cache.stats.hits - hits >= 2 * len(prompts)
    assert policy.stats.reused_tokens - reused >= sum(
        len(context) + len(out.token_ids) - 1
        for episode in episodes
        for context, _, out in episode[:-1]
    )
    for episode in episodes:
        for context, turn_sampling, out in episode:
            reference = uncached.generate_batch([context], [turn_sampling])[0]
            tolerance = NEAR_TIE if together else LOG_PROB_TOL
            assert_same_up_to_a_near_tie(policy, context, out, reference, tolerance)


def chat(tokenizer: PreTrainedTokenizerBase, content: str) -> list[int]:
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, return_dict=False
        )
    )


async def test_a_new_conversation_reuses_the_opening_it_shares_with_another(
    policy: HFPolicy, uncached: HFPolicy, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    rules = "Answer in one short line and show no working. " * 6
    first, second = (chat(smollm2_tokenizer, rules + q) for q in ("What is 2+2?", "Name a colour."))
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    greedy = SamplingParams(max_tokens=8, temperature=0)
    await policy.generate(first, greedy)
    reused, prefilled = policy.stats.reused_tokens, policy.stats.prefilled_tokens
    out = await policy.generate(second, greedy)
    assert policy.stats.reused_tokens - reused == common > 60
    assert policy.stats.prefilled_tokens - prefilled == len(second) - common
    reference = uncached.generate_batch([second], [greedy])[0]
    # The shared keys and values came from a prefill of another length (other matrix shapes,
    # another fp32 summation order): as far from the re-prefill as the re-prefill is from an
    # unpadded forward pass (up to 1.5e-5, see above), so twice LOG_PROB_TOL.
    assert_same_up_to_a_near_tie(policy, second, out, reference, 2 * LOG_PROB_TOL)


def test_requests_admitted_together_prefill_their_shared_opening_once(
    policy: HFPolicy, uncached: HFPolicy, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    rules = "Answer in one short line and show no working. " * 6
    questions = ("What is 2+2?", "Name a colour.", "Say hi.")
    prompts = [chat(smollm2_tokenizer, rules + question) for question in questions]
    common = min(
        next(i for i, (a, b) in enumerate(zip(prompts[0], other, strict=False)) if a != b)
        for other in prompts[1:]
    )
    cold = HFPolicy(policy.model, policy.tokenizer)
    greedy = SamplingParams(max_tokens=8, temperature=0)
    outs = cold.generate_batch(prompts, [greedy] * len(prompts))
    # The opening once, then each prompt's own suffix.
    assert cold.stats.prefilled_tokens == common + sum(len(p) - common for p in prompts)
    assert cold.stats.reused_tokens == len(prompts) * common > 3 * 60
    references = uncached.generate_batch(prompts, [greedy] * len(prompts))
    for prompt, out, reference in zip(prompts, outs, references, strict=True):
        # Borrowed keys and values, as in the test above.
        assert_same_up_to_a_near_tie(cold, prompt, out, reference, 2 * LOG_PROB_TOL)
    # The opening stays cached for a request that comes later.
    later = chat(smollm2_tokenizer, rules + "Name a fruit.")
    reused = cold.stats.reused_tokens
    cold.generate_batch([later], [greedy])
    assert cold.stats.reused_tokens - reused >= common


def test_requests_sharing_only_a_short_opening_prefill_it_each(
    policy: HFPolicy, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    # They share only the chat template's opening (24 tokens): not worth a forward pass of its own.
    prompts = [chat(smollm2_tokenizer, q) for q in ("What is 2+2?", "Name a colour.")]
    cold = HFPolicy(policy.model, policy.tokenizer)
    cold.generate_batch(prompts, [SamplingParams(max_tokens=2, temperature=0)] * 2)
    assert cold.stats.prefilled_tokens == sum(len(p) for p in prompts)
    assert cold.stats.reused_tokens == 0


def perturbed_state(policy: HFPolicy) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        name: tensor + 0.1 * tensor.std() * torch.randn_like(tensor)
        if tensor.numel() > 1
        else tensor
        for name, tensor in policy.model.state_dict().items()
    }


async def test_a_weight_update_between_turns_invalidates_the_cache(
    fresh_policy: HFPolicy, prompts: list[list[int]], smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    policy = fresh_policy
    greedy = SamplingParams(max_tokens=6, temperature=0)
    [(context, _, first)] = await play_turns(policy, smollm2_tokenizer, prompts[0], greedy, 1)
    assert len(policy.prefix_cache) == 1
    observation = smollm2_tokenizer.encode(OBSERVATION, add_special_tokens=False)
    second = context + list(first.token_ids) + observation
    old = torch.log_softmax(logits_after(policy, second + [0] * 6), -1)

    await policy.update_weights(perturbed_state(policy), 1)
    assert len(policy.prefix_cache) == 0 and policy.prefix_cache.nbytes == 0
    hits = policy.prefix_cache.stats.hits
    out = await policy.generate(second, greedy)
    assert policy.prefix_cache.stats.hits == hits
    assert out.policy_versions == (1,) * 6
    # The log-probs are the new weights' on the whole context (a plain forward pass), and far
    # from what the old weights give the same tokens.
    new = torch.log_softmax(logits_after(policy, second + list(out.token_ids)), -1)
    start = len(second) - 1
    for i, (token, log_prob) in enumerate(zip(out.token_ids, out.log_probs, strict=True)):
        assert int(new[start + i].argmax()) == token
        assert abs(float(new[start + i, token]) - log_prob) < NEAR_TIE, i
    assert abs(float(old[start, out.token_ids[0]]) - out.log_probs[0]) > 1e-2
    await policy.aclose()


@pytest.mark.parametrize("continuous", [True, False])
async def test_requests_join_the_running_batch_between_decode_steps(
    fresh_policy: HFPolicy, prompts: list[list[int]], continuous: bool
) -> None:
    policy = HFPolicy(
        fresh_policy.model,
        fresh_policy.tokenizer,
        eos_token_ids=(),
        continuous_batching=continuous,
    )
    long = asyncio.ensure_future(
        policy.generate(prompts[1], SamplingParams(max_tokens=40, temperature=0))
    )
    # Back after two steps of the batch it shares with the long request.
    await policy.generate(prompts[3], SamplingParams(max_tokens=2, temperature=0))
    assert not long.done()
    late = await policy.generate(prompts[0], SamplingParams(max_tokens=3, temperature=0))
    # Admitted into the running batch, it finished while the long request was still going;
    # without continuous batching it waited for that batch to end.
    assert long.done() is not continuous
    assert len((await long).token_ids) == 40
    assert policy.stats.batches == 2
    assert policy.stats.largest_batch == 2
    alone = policy.generate_batch([prompts[0]], [SamplingParams(max_tokens=3, temperature=0)])[0]
    assert_same_up_to_a_near_tie(policy, prompts[0], late, alone, NEAR_TIE)
    await policy.aclose()


def test_bfloat16_log_probs_stay_within_the_stated_tolerance_of_float32(
    policy: HFPolicy, smollm2_dir: Path, prompts: list[list[int]]
) -> None:
    half = HFPolicy.from_pretrained(smollm2_dir, dtype=torch.bfloat16, seed=0)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    gaps = []
    for temperature in (0.0, 1.0):
        sampling = SamplingParams(max_tokens=16, temperature=temperature, seed=1)
        for prompt, out in zip(
            prompts, half.generate_batch(prompts, [sampling] * len(prompts)), strict=True
        ):
            logits = logits_after(policy, prompt + list(out.token_ids))[len(prompt) - 1 : -1]
            exact = torch.log_softmax(logits / (temperature or 1.0), -1)
            chosen = exact.gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
            gaps.append((chosen - torch.tensor(out.log_probs)).abs())
    gap = torch.cat(gaps)
    # The bounds stated by HFPolicy.from_pretrained.
    assert float(gap.mean()) < 0.06 and float(gap.max()) < 1.0, (gap.mean(), gap.max())
