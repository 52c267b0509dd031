"""The token transcript with real tokenizers: exact ids, masks, budgets and drift."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from agents.policy import SamplingParams, TokenOutput
from agents.transcript import (
    DriftCause,
    Transcript,
    TranscriptError,
    TranscriptLimits,
)
from envs.generation import ObservationPlacement

INLINE: ObservationPlacement = "inline"
MESSAGE: ObservationPlacement = "message"
QUESTION = [{"role": "system", "content": "Use Python."}, {"role": "user", "content": "12*34?"}]


def encode(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tok.encode(text, add_special_tokens=False))


def sampled(
    tok: PreTrainedTokenizerBase,
    text: str = "",
    *,
    ids: list[int] | None = None,
    close: bool = False,
    first_logprob: float = -0.25,
) -> TokenOutput:
    """A policy output: ``ids`` (default: the canonical ids of ``text``), optionally closed
    with the end-of-turn token; log-probs are distinct so misplacement would show."""
    token_ids = list(ids) if ids is not None else encode(tok, text)
    if close:
        token_ids.append(tok.convert_tokens_to_ids("<|im_end|>"))
    log_probs = tuple(first_logprob - 0.01 * i for i in range(len(token_ids)))
    return TokenOutput(tuple(token_ids), log_probs, "stop")


@pytest.fixture(params=["smollm2", "qwen_style"])
def tok(
    request: pytest.FixtureRequest,
    smollm2_tokenizer: PreTrainedTokenizerBase,
    qwen_style_tokenizer: PreTrainedTokenizerBase,
) -> PreTrainedTokenizerBase:
    return smollm2_tokenizer if request.param == "smollm2" else qwen_style_tokenizer


def test_inline_observation_keeps_model_ids_and_masks_the_observation(
    tok: PreTrainedTokenizerBase,
) -> None:
    t = Transcript(tok, QUESTION)
    first = sampled(tok, "<think>\nUse code.\n</think>\n\n<code>\nprint(12*34)\n</code>")
    t.add_model_output(first)
    obs = t.add_observation("\n<interpreter>\n408\n</interpreter>\n", placement=INLINE)
    second = sampled(tok, "The answer is \\boxed{408}.", close=True, first_logprob=-1.5)
    turn = t.add_model_output(second)

    n1, n2 = len(first.token_ids), len(second.token_ids)
    obs_ids = encode(tok, "\n<interpreter>\n408\n</interpreter>\n")
    assert obs.text == "\n<interpreter>\n408\n</interpreter>\n"
    assert t.response_ids == [*first.token_ids, *obs_ids, *second.token_ids]
    assert t.response_mask == [1] * n1 + [0] * len(obs_ids) + [1] * n2
    assert t.response_logprobs == [*first.log_probs, *[0.0] * len(obs_ids), *second.log_probs]
    assert t.context_ids == t.prompt_ids + t.response_ids
    assert turn.closed and turn.text == "The answer is \\boxed{408}."
    assert t.drift == []
    # No drift means the template's rendering of the conversation reproduces the context.
    rendered = tok.apply_chat_template(t.messages, tokenize=False)
    assert encode(tok, rendered) == t.context_ids + encode(tok, "\n")


def test_tool_message_renders_the_turn_closing_and_generation_prompt(
    tok: PreTrainedTokenizerBase,
) -> None:
    t = Transcript(tok, QUESTION)
    call = '<think>\nCall the tool.\n</think>\n\n<tool_call>\n{"name": "python"}\n</tool_call>'
    first = sampled(tok, call)  # stopped on "</tool_call>": the template must close the turn
    t.add_model_output(first, SamplingParams(stop=("</tool_call>",)))
    obs = t.add_observation("408", placement=MESSAGE, role="tool")
    answer = sampled(tok, "<think>\nDone.\n</think>\n\nIt is 408.", close=True)
    t.add_model_output(answer)

    after = tok.apply_chat_template(
        [*QUESTION, {"role": "assistant", "content": call}, {"role": "tool", "content": "408"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    # The observation is exactly what the template adds after the model's text: the turn's
    # closing (not sampled: the model stopped on a stop string), the tool turn, the next header.
    assert obs.text.startswith("<|im_end|>\n")
    assert tok.decode(t.prompt_ids + list(first.token_ids)) + obs.text == after
    n_obs = obs.num_tokens
    assert t.response_ids == [*first.token_ids, *encode(tok, obs.text), *answer.token_ids]
    assert t.response_mask == [1] * len(first.token_ids) + [0] * n_obs + [1] * len(answer.token_ids)
    assert t.drift == []


def test_closing_token_the_model_sampled_is_not_rendered_again(
    tok: PreTrainedTokenizerBase,
) -> None:
    t = Transcript(tok, QUESTION)
    t.add_model_output(sampled(tok, "<think>\nx\n</think>\n\n408", close=True))
    obs = t.add_observation("Thanks. And 2+2?", placement=MESSAGE, role="user")
    assert obs.text == "\n<|im_start|>user\nThanks. And 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert t.response_mask.count(1) == len(encode(tok, "<think>\nx\n</think>\n\n408")) + 1


def test_inline_observation_after_a_closed_message_is_refused(
    tok: PreTrainedTokenizerBase,
) -> None:
    t = Transcript(tok, QUESTION)
    with pytest.raises(TranscriptError, match="must follow a model turn"):
        t.add_observation("x", placement=INLINE)
    t.add_model_output(sampled(tok, "408", close=True))
    with pytest.raises(TranscriptError, match="closed its message"):
        t.add_observation("x", placement=INLINE)
    with pytest.raises(TranscriptError, match="closed its message"):
        t.add_model_output(sampled(tok, "more"))
    with pytest.raises(TranscriptError, match="non-assistant"):
        Transcript(tok, [*QUESTION, {"role": "assistant", "content": "a"}])


def test_non_canonical_sampled_ids_are_kept_and_reported_as_retokenization(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    assert len(encode(tok, " hello")) == 1
    split = encode(tok, " hel") + encode(tok, "lo")  # same text, not how the tokenizer spells it
    ids = encode(tok, "Say") + split + encode(tok, " world")
    t = Transcript(tok, QUESTION)
    t.add_model_output(sampled(tok, ids=ids))
    assert t.response_ids == ids
    [drift] = t.drift
    assert drift.cause is DriftCause.RETOKENIZATION
    assert drift.token_index == len(t.prompt_ids) + len(encode(tok, "Say"))
    assert drift.ours.startswith(" hello")


def test_partial_utf8_is_reported_as_invalid_utf8(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    emoji = encode(tok, "🙂")
    assert len(emoji) > 1, "the emoji should need several byte tokens"
    t = Transcript(tok, QUESTION)
    t.add_model_output(sampled(tok, ids=encode(tok, "Hi ") + emoji[:1]))
    assert [d.cause for d in t.drift] == [DriftCause.INVALID_UTF8]
    assert t.response_ids[-1] == emoji[0]


def test_observation_merging_with_the_model_tail_is_reported(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    # Encoded together, "</code>" + "<interpreter>" spells its middle as one "><" token.
    assert encode(tok, "</code><interpreter>") != encode(tok, "</code>") + encode(
        tok, "<interpreter>"
    )
    t = Transcript(tok, QUESTION)
    model = sampled(tok, "<code>print(1)</code>")
    t.add_model_output(model)
    obs = t.add_observation("<interpreter>1</interpreter>", placement=INLINE)
    [drift] = t.drift
    assert drift.cause is DriftCause.OBSERVATION_MERGE
    boundary = len(t.prompt_ids) + len(model.token_ids)
    assert boundary - 1 <= drift.token_index <= boundary
    # Nothing was re-tokenized: the model's ids and the observation's own encoding stand.
    assert t.response_ids == [*model.token_ids, *encode(tok, obs.text)]


def test_thinking_stripped_by_the_template_is_kept_and_reported(
    qwen_style_tokenizer: PreTrainedTokenizerBase,
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = qwen_style_tokenizer
    t = Transcript(tok, QUESTION)
    assert t.template_strips_thinking
    assert not Transcript(smollm2_tokenizer, QUESTION).template_strips_thinking
    first = sampled(tok, "<think>\nMultiply.\n</think>\n\n408", close=True)
    t.add_model_output(first)
    obs = t.add_observation("And 2+2?", placement=MESSAGE, role="user")
    assert t.drift[0].cause is DriftCause.THINKING_STRIPPED
    assert t.drift[0].ours.startswith("<think>")
    assert first.token_ids[0] == tok.convert_tokens_to_ids("<think>")
    assert t.drift[0].token_index == len(t.prompt_ids)
    # The context keeps the thinking the model conditioned on; the new turn is the template's.
    assert t.response_ids[: len(first.token_ids)] == list(first.token_ids)
    assert obs.text == "\n<|im_start|>user\nAnd 2+2?<|im_end|>\n<|im_start|>assistant\n"
    # Later turns are still checked: a clean second answer adds no drift.
    t.add_model_output(sampled(tok, "<think>\nAdd.\n</think>\n\n4", close=True))
    assert len(t.drift) == 1


def test_template_rewriting_new_content_is_reported(
    qwen_style_tokenizer: PreTrainedTokenizerBase,
) -> None:
    # The Qwen3 template renders the last assistant message with a think block even when the
    # model wrote none, so the context and the rendering differ.
    tok = qwen_style_tokenizer
    t = Transcript(tok, QUESTION)
    t.add_model_output(sampled(tok, "408", close=True))
    [drift] = t.drift
    assert drift.cause is DriftCause.TEMPLATE_REWRITE
    assert drift.template.startswith("<think>")
    assert drift.token_index == len(t.prompt_ids)


def test_action_text_is_cut_at_the_stop_string(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    text = "<code>print(1)</code>\n\nmore"
    keep = Transcript(tok, QUESTION).add_model_output(
        sampled(tok, text), SamplingParams(stop=("</code>",), include_stop_str=True)
    )
    drop = Transcript(tok, QUESTION).add_model_output(
        sampled(tok, text), SamplingParams(stop=("</code>",), include_stop_str=False)
    )
    assert keep.text == text
    assert keep.action == "<code>print(1)</code>"
    assert drop.action == "<code>print(1)"


def test_budget_counts_observation_tokens_and_cuts_at_the_end(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    t = Transcript(tok, QUESTION, limits=TranscriptLimits(max_response_tokens=20))
    assert t.sampling_for(SamplingParams(max_tokens=100)).max_tokens == 20
    model = sampled(tok, "<code>print(1)</code>")
    t.add_model_output(model)
    left = 20 - len(model.token_ids)
    assert t.remaining_tokens == left
    with pytest.raises(TranscriptError, match="exceed"):
        t.add_model_output(sampled(tok, ids=encode(tok, "x") * (left + 1)))
    obs = t.add_observation(
        "\n<interpreter>\n" + "1 2 3 4 5 6 7 8 9 " * 3 + "</interpreter>", placement=INLINE
    )
    assert obs.budget_cut and obs.num_tokens == left
    assert len(t.response_ids) == 20 and t.exhausted
    with pytest.raises(TranscriptError, match="exhausted"):
        t.sampling_for(SamplingParams())
    with pytest.raises(TranscriptError, match="exhausted"):
        t.add_model_output(sampled(tok, "x"))


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_long_observations_are_truncated_to_the_token_limit(
    smollm2_tokenizer: PreTrainedTokenizerBase, keep: str
) -> None:
    tok = smollm2_tokenizer
    limits = TranscriptLimits(max_observation_tokens=12, observation_keep=keep)  # type: ignore[arg-type]
    t = Transcript(tok, QUESTION, limits=limits)
    t.add_model_output(sampled(tok, "<code>print(list(range(100)))</code>"))
    output = " ".join(str(i) for i in range(100))
    obs = t.add_observation(output, placement=INLINE)
    assert obs.truncated
    assert len(encode(tok, obs.text)) <= 12 + 1  # the marker may merge differently at its edge
    assert limits.truncation_marker in obs.text
    if keep == "head":
        assert obs.text.startswith("0 1 2")
    else:
        assert obs.text.endswith("98 99")
    short = Transcript(tok, QUESTION, limits=limits)
    short.add_model_output(sampled(tok, "<code>print(1)</code>"))
    assert not short.add_observation("1", placement=INLINE).truncated


_PIECES = st.lists(
    st.text(alphabet="ab(1)+= \n<>/", min_size=1, max_size=10), min_size=1, max_size=4
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model_texts=_PIECES, observations=_PIECES)
def test_no_drift_recorded_iff_the_rendering_reproduces_the_context(
    smollm2_tokenizer: PreTrainedTokenizerBase, model_texts: list[str], observations: list[str]
) -> None:
    tok = smollm2_tokenizer
    t = Transcript(tok, QUESTION)
    turns = list(zip(model_texts, observations, strict=False))
    for text, obs in turns:
        t.add_model_output(sampled(tok, text))
        t.add_observation(obs, placement=INLINE)
    t.add_model_output(sampled(tok, "done", close=True))
    rendered = encode(tok, tok.apply_chat_template(t.messages, tokenize=False))
    reproduced = rendered == t.context_ids + encode(tok, "\n")
    assert reproduced == (t.drift == [])
    model_ids = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m]
    expected = [i for text, _ in turns for i in encode(tok, text)] + encode(tok, "done")
    assert model_ids == [*expected, tok.convert_tokens_to_ids("<|im_end|>")]


def test_the_model_context_limits_the_response_and_is_named(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    prompt = len(Transcript(tok, QUESTION).prompt_ids)
    t = Transcript(
        tok,
        QUESTION,
        limits=TranscriptLimits(max_response_tokens=50, max_context_tokens=prompt + 6),
    )
    assert t.remaining_tokens == 6 and t.sampling_for(SamplingParams(max_tokens=64)).max_tokens == 6
    t.add_model_output(sampled(tok, ids=encode(tok, "one two three four five six")[:6]))
    assert t.exhausted and t.exhausted_by == "context"
    with pytest.raises(TranscriptError, match="context is exhausted"):
        t.sampling_for(SamplingParams())
    # An observation cut to fit the context is named too.
    t = Transcript(tok, QUESTION, limits=TranscriptLimits(max_context_tokens=prompt + 8))
    t.add_model_output(sampled(tok, "<code>x</code>"))
    obs = t.add_observation(
        "\n<interpreter>\n" + "1 2 3 " * 10 + "</interpreter>", placement=INLINE
    )
    assert obs.budget_cut and t.exhausted_by == "context"
    assert len(t.context_ids) == prompt + 8


def test_a_continued_turn_is_one_turn_and_its_stop_string_may_span_calls(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    stop = SamplingParams(stop=("</code>",))
    ids = encode(tok, "Let me check.\n<code>\nprint(1)\n</code> and more")
    t = Transcript(tok, QUESTION)
    with pytest.raises(TranscriptError, match="no model turn to continue"):
        t.add_model_output(sampled(tok, ids=ids[:3]), stop, continuation=True)
    split = next(n for n in range(len(ids)) if tok.decode(ids[:n]).endswith("</"))
    first = t.add_model_output(TokenOutput(tuple(ids[:split]), (-0.1,) * split, "length"), stop)
    assert not first.stopped
    second = t.add_model_output(
        TokenOutput(tuple(ids[split:]), (-0.2,) * (len(ids) - split), "length"),
        stop,
        continuation=True,
    )
    assert t.turns == 1 and second.stopped and second.num_tokens == len(ids) - split
    assert second.text == tok.decode(ids)
    assert second.action == "Let me check.\n<code>\nprint(1)\n</code>"
    assert t.response_ids == ids and t.drift == []


def test_every_token_records_the_policy_version_that_sampled_it(
    smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    tok = smollm2_tokenizer
    t = Transcript(tok, QUESTION)
    ids = encode(tok, "<code>\nprint(12*34)\n</code>")
    # A weight update landed in the middle of the first turn.
    versions = (4,) * 3 + (5,) * (len(ids) - 3)
    t.add_model_output(TokenOutput(tuple(ids), (-0.1,) * len(ids), "stop", versions))
    obs = t.add_observation("\n<interpreter>\n408\n</interpreter>\n", placement=INLINE)
    t.add_model_output(sampled(tok, "So 408.", close=True), policy_version=6)
    answer = len(t.response_ids) - len(ids) - obs.num_tokens
    assert t.response_versions == [*versions, *[5] * obs.num_tokens, *[6] * answer]
    assert t.turn_versions == [4, 6]
