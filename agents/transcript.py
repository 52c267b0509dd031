"""The token transcript of one episode: exactly what the policy saw and sampled.

A multi-turn episode alternates model turns and observations (tool output, user turns). The
transcript holds the context as token ids and only ever appends to it:

- a model turn appends the sampled ids unchanged, with their behaviour log-probs and mask 1;
- an observation appends the tokens the chat template renders for it, with mask 0 and log-prob
  0.0. Only the new text is tokenized: the conversation is rendered with and without the new
  message and the text suffix is encoded on its own, so earlier tokens are never re-derived.

Two observation placements exist (:data:`envs.generation.ObservationPlacement`). ``"inline"``
appends the text into the assistant's own stream with no new chat turn (ReTool:
``<interpreter>…</interpreter>`` right after ``</code>``); ``"message"`` adds chat messages (a
hermes ``tool`` message, or a new ``user`` turn) after the template closes the assistant's turn.

A model turn may take several generate calls (an env whose ``turn_cut`` is "continue"): each
further call is added with ``continuation=True`` and extends the same assistant message and turn.

Limits. The response is bounded by the episode's token budget and by the model's context (prompt
plus response); :attr:`Transcript.remaining_tokens` is what both leave, and
:attr:`Transcript.exhausted_by` says which one ran out. Every sampled token also records the
policy version that sampled it (:attr:`Transcript.response_versions`).

Drift. Re-tokenizing text between turns is the classic way RL trajectories go wrong: the model
was conditioned on tokens A but the learner scores tokens B that decode to the same string. The
transcript never re-tokenizes. Instead, after every append it re-renders the whole conversation
with the chat template and checks, increment by increment, that the canonical encoding of the
rendering extends the canonical encoding of the previous rendering by exactly the ids just
appended. By induction, a transcript with no recorded drift equals the canonical tokenization of
its re-rendered conversation. Every difference is recorded as a :class:`Drift` with its cause.

Templates that strip earlier thinking (Qwen3 drops ``<think>`` blocks from assistant turns before
the latest user query) are handled explicitly: :attr:`Transcript.template_strips_thinking` is
probed once, the context keeps the thinking the model actually generated and conditioned on (a
single-sequence trajectory cannot drop it), and the template's retroactive edit is recorded once
as :attr:`DriftCause.THINKING_STRIPPED` rather than silently followed.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from agents.common_prefix import common_prefix
from agents.policy import SamplingParams, StopReason, TokenOutput
from envs.generation import ObservationPlacement

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Marks the end of the last message's content in a rendering; private-use code points, so no
# real content contains it.
_SENTINEL = "\ue000spo-gym-end-of-content\ue001"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_EXCERPT = 40

Message = dict[str, Any]


class DriftCause(enum.StrEnum):
    """Why the template's rendering of the conversation differs from the token context."""

    RETOKENIZATION = "retokenization"
    """Same text, different ids: the sampled ids are not the canonical encoding of their text."""
    INVALID_UTF8 = "invalid_utf8"
    """The sampled ids end inside a UTF-8 character; their text holds U+FFFD."""
    OBSERVATION_MERGE = "observation_merge"
    """Tokenized jointly, text across an observation boundary merges into different tokens."""
    THINKING_STRIPPED = "thinking_stripped"
    """The template drops a ``<think>`` block the model generated and was conditioned on."""
    TEMPLATE_REWRITE = "template_rewrite"
    """The template renders earlier or new content as different text (trims, inserts, reorders)."""


@dataclass(frozen=True)
class Drift:
    """One difference between the token context and the template's rendering.

    Attributes:
        turn: model turns completed when it was detected.
        cause: what kind of difference it is.
        token_index: index into the context (prompt + response) where it begins; approximate
            (to a token or so) when an earlier drift already shifted the text.
        ours: an excerpt of the context's text from there.
        template: an excerpt of the template's text from there.
    """

    turn: int
    cause: DriftCause
    token_index: int
    ours: str
    template: str


@dataclass(frozen=True)
class TranscriptLimits:
    """Token limits the environment declares and the transcript enforces.

    Attributes:
        max_response_tokens: the episode's budget after the prompt, counting model *and*
            observation tokens. ``None``: unlimited.
        max_context_tokens: the model's context: prompt plus response may not exceed it.
            ``None``: unknown (unlimited).
        max_observation_tokens: most tokens of one observation's content (the template's role
            headers around it are not counted here, but are in the episode budget).
        observation_keep: which end of a too-long observation survives truncation.
        truncation_marker: text put where an observation was cut.
    """

    max_response_tokens: int | None = None
    max_context_tokens: int | None = None
    max_observation_tokens: int | None = None
    observation_keep: Literal["head", "tail"] = "head"
    truncation_marker: str = "\n[…truncated…]\n"


@dataclass(frozen=True)
class Segment:
    """A run of response tokens from one source; ``start``/``end`` index the response."""

    kind: Literal["model", "observation"]
    start: int
    end: int
    turn: int


@dataclass(frozen=True)
class ModelTurn:
    """What a model turn added, and the turn so far.

    Attributes:
        text: the decoded sampled ids of the whole turn (every call of a continued turn),
            minus a closing end-of-turn token.
        action: ``text`` cut at the first stop string (kept or dropped per ``include_stop_str``):
            what the environment should act on.
        num_tokens: sampled tokens this call appended.
        stop_reason: the policy's stop reason for this call.
        closed: the model ended its message with an end-of-turn token.
        stopped: the turn ended by itself — an end-of-sequence token or a stop string (also one
            that spans two calls of a continued turn); otherwise a length limit cut it.
    """

    text: str
    action: str
    num_tokens: int
    stop_reason: StopReason
    closed: bool
    stopped: bool


@dataclass(frozen=True)
class ObservationTurn:
    """What an observation added.

    Attributes:
        text: the rendered text appended (role headers included for "message" placement).
        num_tokens: tokens appended (after any budget cut).
        truncated: the observation's content was cut to ``max_observation_tokens``.
        budget_cut: the rendered tokens were cut to fit the episode budget.
    """

    text: str
    num_tokens: int
    truncated: bool
    budget_cut: bool


class TranscriptError(RuntimeError):
    """A transcript used out of order, over budget, or with a template it cannot render."""


ExhaustedLimit = Literal["budget", "context"]
"""Which limit a response ran out of: the episode's token budget or the model's context."""


class Transcript:
    """The token context of one episode, with its mask, behaviour log-probs and drift record.

    Args:
        tokenizer: the policy's tokenizer, with a chat template.
        messages: the opening conversation (system / user ...), ending with a non-assistant
            message; it is rendered with the generation prompt to form ``prompt_ids``.
        limits: token limits to enforce.
        chat_template_kwargs: extra template variables for every rendering (``enable_thinking``,
            ``tools``, ...).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        messages: Sequence[Mapping[str, Any]],
        *,
        limits: TranscriptLimits | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not messages or messages[-1].get("role") == "assistant":
            raise TranscriptError("the opening messages must end with a non-assistant message")
        self.tokenizer = tokenizer
        # A fast tokenizer's Rust backend gives the same ids and text as the wrapper (which
        # only adds Python overhead), unless the wrapper post-processes decoded text.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        cleans = getattr(tokenizer, "clean_up_tokenization_spaces", False)
        self._backend: Any = backend if backend is not None and not cleans else None
        self.limits = limits or TranscriptLimits()
        self._template_kwargs = dict(chat_template_kwargs or {})
        self.messages: list[Message] = [dict(m) for m in messages]
        prompt_text = self._render(self.messages, add_generation_prompt=True)
        self.prompt_ids: list[int] = self._encode(prompt_text)
        self.response_ids: list[int] = []
        self.response_mask: list[int] = []
        self.response_logprobs: list[float] = []
        self.response_versions: list[int] = []
        self.segments: list[Segment] = []
        self.drift: list[Drift] = []
        self.turns = 0
        self.template_strips_thinking = self._probe_strips_thinking()
        self._assistant_open = False  # last message is an assistant message still being written
        self._closing_text: str | None = None  # the end-of-turn token the model closed it with
        self._cut_by: ExhaustedLimit | None = None  # an observation was cut to fit this limit
        self._turn_text = ""  # the text of the latest model turn, over all its calls
        # The incremental check's state: the template's text for the context so far, its
        # canonical encoding, and how many context tokens it covers.
        self._checked_text = prompt_text
        self._checked_canon = list(self.prompt_ids)
        self._checked_len = len(self.prompt_ids)

    # -- views ---------------------------------------------------------------------------------

    @property
    def context_ids(self) -> list[int]:
        """Prompt and response so far: what the policy continues next."""
        return self.prompt_ids + self.response_ids

    def _left(self) -> tuple[int | None, int | None]:
        """Tokens left under the episode budget and under the context (``None``: no limit)."""
        budget = self.limits.max_response_tokens
        context = self.limits.max_context_tokens
        return (
            None if budget is None else max(0, budget - len(self.response_ids)),
            None if context is None else max(0, context - len(self.context_ids)),
        )

    @property
    def remaining_tokens(self) -> int | None:
        """Tokens the response may still grow by under both limits (``None``: unlimited)."""
        left = [n for n in self._left() if n is not None]
        return min(left) if left else None

    @property
    def exhausted_by(self) -> ExhaustedLimit | None:
        """The limit that is used up (or that an observation was cut to fit), if any; the
        budget when both are."""
        if self._cut_by is not None:
            return self._cut_by
        budget, context = self._left()
        if budget == 0:
            return "budget"
        if context == 0:
            return "context"
        return None

    @property
    def exhausted(self) -> bool:
        """No token may be added: a limit is used up (or an observation was cut to fit it)."""
        return self.exhausted_by is not None

    def _exhausted_message(self) -> str:
        limit = "episode's token budget" if self.exhausted_by == "budget" else "model's context"
        return f"the {limit} is exhausted"

    @property
    def turn_versions(self) -> list[int]:
        """For each model turn, the policy version that sampled its first token."""
        firsts: dict[int, int] = {}
        for segment in self.segments:
            if segment.kind == "model" and segment.end > segment.start:
                firsts.setdefault(segment.turn, self.response_versions[segment.start])
        return [firsts[t] for t in sorted(firsts)]

    def sampling_for(self, sampling: SamplingParams) -> SamplingParams:
        """``sampling`` with ``max_tokens`` clamped to what the limits leave."""
        remaining = self.remaining_tokens
        if self.exhausted:
            raise TranscriptError(self._exhausted_message())
        if remaining is None or sampling.max_tokens <= remaining:
            return sampling
        return replace(sampling, max_tokens=remaining)

    # -- appending -----------------------------------------------------------------------------

    def add_model_output(
        self,
        output: TokenOutput,
        sampling: SamplingParams | None = None,
        *,
        policy_version: int = 0,
        continuation: bool = False,
    ) -> ModelTurn:
        """Append a model turn (or, with ``continuation``, more of the latest one) as sampled.

        Args:
            output: the policy's output for :attr:`context_ids`.
            sampling: the request's sampling params, to cut the action text at its stop strings.
            policy_version: the version of every token when ``output`` carries no per-token
                versions (the policy's version when the request was made).
            continuation: the output continues the latest model turn (the model was cut by a
                length limit and asked to go on); it extends that turn instead of starting one.

        Raises:
            TranscriptError: a limit is exhausted or would be exceeded (clamp ``max_tokens``
                with :meth:`sampling_for`), the model already closed its message and no
                observation followed, or there is no open turn to continue.
        """
        if self.exhausted:
            raise TranscriptError(self._exhausted_message())
        remaining = self.remaining_tokens
        if remaining is not None and len(output.token_ids) > remaining:
            raise TranscriptError(
                f"{len(output.token_ids)} sampled tokens exceed the {remaining} left under the "
                "limits; clamp max_tokens with sampling_for()"
            )
        if self._closing_text is not None:
            raise TranscriptError("the model closed its message; add an observation first")
        if continuation and not (self.segments and self.segments[-1].kind == "model"):
            raise TranscriptError("no model turn to continue: the last addition is not one")
        ids = list(output.token_ids)
        closed = (
            output.stop_reason == "stop"
            and bool(ids)
            and ids[-1] in set(self.tokenizer.all_special_ids)
        )
        content_ids = ids[:-1] if closed else ids
        text = self._decode(content_ids)
        if self._assistant_open:
            self.messages[-1]["content"] += text
        else:
            self.messages.append({"role": "assistant", "content": text})
            self._assistant_open = True
        if closed:
            self._closing_text = self._decode(ids[-1:])
        start = len(self.response_ids)
        self.response_ids.extend(ids)
        self.response_mask.extend([1] * len(ids))
        self.response_logprobs.extend(output.log_probs)
        self.response_versions.extend(output.policy_versions or [policy_version] * len(ids))
        if continuation:
            self._turn_text += text
        else:
            self.turns += 1
            self._turn_text = text
        self.segments.append(Segment("model", start, len(self.response_ids), self.turns))
        self._check()
        action = _cut_at_stop(self._turn_text, sampling)
        return ModelTurn(
            text=self._turn_text,
            action=action,
            num_tokens=len(ids),
            stop_reason=output.stop_reason,
            closed=closed,
            stopped=output.stop_reason == "stop" or _stop_at(self._turn_text, sampling) >= 0,
        )

    def add_observation(
        self,
        content: str | Sequence[str],
        *,
        placement: ObservationPlacement,
        role: str = "tool",
    ) -> ObservationTurn:
        """Append an observation, tokenizing only its rendered text.

        Args:
            content: the observation text; for "message" placement, several texts become
                several consecutive messages (one per tool call).
            placement: "inline" into the assistant's stream, or "message" as new chat messages.
            role: the role of "message" observations (``"tool"`` or ``"user"``).

        Raises:
            TranscriptError: no model turn precedes it, a limit is exhausted, an "inline"
                observation follows a closed assistant message, or the template cannot render
                the conversation incrementally.
        """
        if self.exhausted:
            raise TranscriptError(self._exhausted_message())
        if not self._assistant_open:
            raise TranscriptError("an observation must follow a model turn")
        if placement not in ("inline", "message"):
            raise TranscriptError(f"unknown observation placement {placement!r}")
        contents = [content] if isinstance(content, str) else list(content)
        if placement == "inline" and len(contents) != 1:
            raise TranscriptError("an inline observation is one text")
        truncated = False
        kept = []
        for text in contents:
            cut = self._truncate(text)
            truncated |= cut != text
            kept.append(cut)
        if placement == "inline":
            if self._closing_text is not None:
                raise TranscriptError(
                    "the model closed its message; an inline observation cannot follow"
                )
            rendered = self._render_inline(kept[0])
            self.messages[-1]["content"] += kept[0]
        else:
            rendered = self._render_messages([{"role": role, "content": c} for c in kept])
            self.messages.extend({"role": role, "content": c} for c in kept)
            self._assistant_open = False
            self._closing_text = None
        ids = self._encode(rendered)
        budget_left = self._left()[0]
        remaining = self.remaining_tokens
        budget_cut = remaining is not None and len(ids) > remaining
        if budget_cut:
            assert remaining is not None
            ids = ids[:remaining]
            self._cut_by = "budget" if budget_left == remaining else "context"
        start = len(self.response_ids)
        self.response_ids.extend(ids)
        self.response_mask.extend([0] * len(ids))
        self.response_logprobs.extend([0.0] * len(ids))
        # An observation carries the version of the sampled token before it (non-decreasing).
        last = self.response_versions[-1] if self.response_versions else 0
        self.response_versions.extend([last] * len(ids))
        self.segments.append(Segment("observation", start, len(self.response_ids), self.turns))
        if not budget_cut:
            # The episode ends at a budget cut; a cut rendering is not the template's, by design.
            self._check()
        return ObservationTurn(
            text=rendered, num_tokens=len(ids), truncated=truncated, budget_cut=budget_cut
        )

    # -- rendering -----------------------------------------------------------------------------

    def _render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            cast(Any, list(messages)),
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self._template_kwargs,
        )
        if not isinstance(text, str):
            raise TranscriptError(f"the chat template rendered {type(text).__name__}, not text")
        return text

    def _render_until_content_end(self, messages: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
        """Render with the sentinel after the last message's content: (text before, text after)."""
        marked = [dict(m) for m in messages]
        marked[-1]["content"] = marked[-1]["content"] + _SENTINEL
        return self._split_at_sentinel(self._render(marked, add_generation_prompt=False))

    def _split_at_sentinel(self, text: str) -> tuple[str, str]:
        if text.count(_SENTINEL) != 1:
            raise TranscriptError(
                "the chat template does not render message content verbatim; the conversation "
                "cannot be rendered incrementally"
            )
        before, after = text.split(_SENTINEL)
        return before, after

    def _render_state(self) -> str:
        """The template's text for the current context."""
        if not self._assistant_open:
            return self._render(self.messages, add_generation_prompt=True)
        before, _ = self._render_until_content_end(self.messages)
        return before + (self._closing_text or "")

    def _render_inline(self, text: str) -> str:
        """The rendered suffix for ``text`` appended to the open assistant message."""
        before, _ = self._render_until_content_end(self.messages)
        extended = [*self.messages[:-1], {**self.messages[-1]}]
        extended[-1]["content"] += text
        after, _ = self._render_until_content_end(extended)
        if after.startswith(before):
            return after[len(before) :]
        # The template rewrites the message once the text is in; _check records how.
        return text

    def _render_messages(self, new: list[Message]) -> str:
        """The rendered suffix for new messages after the current last message.

        The sentinel marks where the current last message's content ends, so the suffix is
        exactly what the template emits after it — the closing of the assistant's turn, the new
        messages and the generation prompt — even when the template re-renders earlier turns
        differently once the new messages are there (Qwen3 strips earlier thinking).
        """
        marked = [dict(m) for m in self.messages]
        marked[-1]["content"] = marked[-1]["content"] + _SENTINEL
        full = self._render([*marked, *new], add_generation_prompt=True)
        _, suffix = self._split_at_sentinel(full)
        closing = self._closing_text
        if closing is not None and suffix.startswith(closing):
            # The model already sampled the end-of-turn token the template closes with.
            return suffix[len(closing) :]
        return suffix

    def _decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in: they are part of what the template renders.
        if self._backend is not None:
            return cast(str, self._backend.decode(list(ids), skip_special_tokens=False))
        return cast(str, self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def _encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return _segment_encoder(self._backend)(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _truncate(self, text: str) -> str:
        limit = self.limits.max_observation_tokens
        if limit is None:
            return text
        ids = self._encode(text)
        if len(ids) <= limit:
            return text
        marker = self.limits.truncation_marker
        keep = max(0, limit - len(self._encode(marker)))
        if self.limits.observation_keep == "head":
            return self._decode(ids[:keep]) + marker
        return marker + self._decode(ids[len(ids) - keep :])

    def _probe_strips_thinking(self) -> bool:
        """Whether the template drops thinking from assistant turns before a later user turn."""
        probe = "spo-gym-thinking-probe"
        conversation = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": f"{_THINK_OPEN}\n{probe}\n{_THINK_CLOSE}\n\na"},
            {"role": "user", "content": "q"},
        ]
        return probe not in self._render(conversation, add_generation_prompt=True)

    # -- drift checks --------------------------------------------------------------------------

    def _check(self) -> None:
        """Verify the newest increment of the context against a fresh rendering."""
        rendered = self._render_state()
        context = self.context_ids
        end = len(context)
        # Tokenizers spell a trailing whitespace run differently at the end of a text than once
        # more text follows, so such a run is checked with the next increment instead.
        while end > self._checked_len and self._decode(context[end - 1 : end]).isspace():
            end -= 1
        tail = self._decode(context[end:])
        if tail and rendered.endswith(tail):
            rendered, context = rendered[: len(rendered) - len(tail)], context[:end]
        new_ids = context[self._checked_len :]
        ours = self._decode(new_ids)
        canon = self._encode(rendered)
        if not rendered.startswith(self._checked_text):
            # The template re-rendered text it had already produced (e.g. stripped thinking).
            cause, q = self._rewrite_cause(
                self._checked_text, rendered, common_prefix(rendered, self._checked_text)
            )
            self._record(
                cause, self._token_at_char(context, q), self._checked_text[q:], rendered[q:]
            )
            if rendered.endswith(ours):
                self._compare(self._checked_len, new_ids, self._encode(ours))
        else:
            expected = rendered[len(self._checked_text) :]
            if ours != expected:
                q = common_prefix(ours, expected)
                if "\ufffd" in ours[q : q + 1]:
                    cause = DriftCause.INVALID_UTF8
                else:
                    cause, q = self._rewrite_cause(ours, expected, q)
                self._record(
                    cause,
                    self._checked_len + self._token_at_char(new_ids, q),
                    ours[q:],
                    expected[q:],
                )
            else:
                self._compare_increment(context, canon)
        self._checked_text = rendered
        self._checked_canon = canon
        self._checked_len = len(context)

    def _compare_increment(self, context: list[int], canon: list[int]) -> None:
        """Same text: do the canonical ids of the new rendering extend the previous ones by
        exactly the appended ids? The new text may re-spell the previous tail (a merge across
        the boundary), so the comparison starts where the canonical ids first change."""
        keep = common_prefix(canon, self._checked_canon)
        start = self._checked_len
        if keep < len(self._checked_canon):
            kept_chars = len(self._decode(canon[:keep]))
            start = self._token_at_char(context, kept_chars)
            if len(self._decode(context[:start])) != kept_chars:
                # Earlier drift left no token boundary there: compare the increment alone.
                start, keep = self._checked_len, len(self._checked_canon)
                canon = self._checked_canon + self._encode(self._decode(context[start:]))
        self._compare(start, context[start:], canon[keep:])

    def _compare(self, start: int, ours: list[int], canon: list[int]) -> None:
        """Record where ``ours`` (context ids from ``start``) departs from ``canon``."""
        if ours == canon:
            return
        p = common_prefix(ours, canon)
        s = common_prefix(ours[p:][::-1], canon[p:][::-1])
        region = (start + p, start + len(ours) - s)
        text = self._decode(ours[p : len(ours) - s])
        if "\ufffd" in text:
            cause = DriftCause.INVALID_UTF8
        elif self._spans_observation_boundary(*region):
            cause = DriftCause.OBSERVATION_MERGE
        else:
            cause = DriftCause.RETOKENIZATION
        self._record(cause, start + p, self._decode(ours[p:]), self._decode(canon[p:]))

    def _spans_observation_boundary(self, first: int, end: int) -> bool:
        """Whether context ids ``[first, end)`` touch a boundary next to an observation (ending
        right at one counts: the text after it decides how a trailing run is spelled)."""
        offset = len(self.prompt_ids)
        for before, after in zip(self.segments, self.segments[1:], strict=False):
            boundary = offset + after.start
            if first < boundary <= end and "observation" in (before.kind, after.kind):
                return True
        return False

    @staticmethod
    def _rewrite_cause(ours: str, template: str, q: int) -> tuple[DriftCause, int]:
        """Classify a text difference starting at ``q``; returns the cause and where it begins.

        THINKING_STRIPPED if, from a ``<think>`` block on, ``template`` is ``ours`` without it.
        """
        # The divergence may fall inside the opening tag itself ("<think>" vs "<tool_call>").
        start = ours.rfind(_THINK_OPEN, 0, q + len(_THINK_OPEN))
        end = ours.find(_THINK_CLOSE, start) if start != -1 else -1
        if end != -1 and q <= end + len(_THINK_CLOSE):
            # Templates drop the block with the newlines after it (Qwen3 lstrips them).
            after = ours[end + len(_THINK_CLOSE) :].lstrip("\n")[:_EXCERPT]
            if template[start : start + len(after)] == after:
                return DriftCause.THINKING_STRIPPED, start
        return DriftCause.TEMPLATE_REWRITE, q

    def _token_at_char(self, ids: list[int], q: int) -> int:
        """Index of the token of ``ids`` whose decoded text holds character ``q``."""
        lo, hi = 0, len(ids)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(self._decode(ids[:mid])) <= q:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _record(self, cause: DriftCause, index: int, ours: str, template: str) -> None:
        if any(d.cause is cause and d.token_index == index for d in self.drift):
            return
        self.drift.append(Drift(self.turns, cause, index, ours[:_EXCERPT], template[:_EXCERPT]))


_ENCODERS: dict[int, tuple[Any, Callable[[str], list[int]]]] = {}
_VERIFY_CALLS = 16


def _segment_encoder(backend: Any) -> Callable[[str], list[int]]:
    """An exact, cached encoder for a fast tokenizer's backend.

    Tokenizers split text at added tokens before anything else and encode the pieces between
    them independently, so ``encode(text)`` is the concatenation of the pieces' encodings. The
    pieces recur (the system prompt in every episode, the earlier turns at every drift check),
    so they are cached. Where the backend could act across a split (a normalizer, added tokens
    that strip whitespace), or where the first encodings disagree with the plain ones, the
    plain encoder is used instead.
    """
    known = _ENCODERS.get(id(backend))
    if known is not None and known[0] is backend:
        return known[1]

    def plain(text: str) -> list[int]:
        return list(backend.encode(text, add_special_tokens=False).ids)

    added = backend.get_added_tokens_decoder()
    if (
        backend.normalizer is not None
        or not added
        or any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added.values())
    ):
        _ENCODERS[id(backend)] = (backend, plain)
        return plain
    ids = {t.content: i for i, t in added.items()}
    # Longest first: the regex then matches leftmost-longest, as the tokenizer does.
    splitter = re.compile(
        "(" + "|".join(re.escape(c) for c in sorted(ids, key=len, reverse=True)) + ")"
    )
    piece = functools.lru_cache(maxsize=8192)(lambda text: tuple(plain(text)))
    checks = [0]

    def segmented(text: str) -> list[int]:
        out: list[int] = []
        for k, part in enumerate(splitter.split(text)):
            if k % 2:
                out.append(ids[part])
            elif part:
                out.extend(piece(part))
        if checks[0] < _VERIFY_CALLS:
            checks[0] += 1
            if out != plain(text):
                _ENCODERS[id(backend)] = (backend, plain)
                return plain(text)
        return out

    _ENCODERS[id(backend)] = (backend, segmented)
    return segmented


def _first_stop(text: str, sampling: SamplingParams | None) -> tuple[int, str] | None:
    """Where the first stop string of ``sampling`` starts in ``text``, and which it is."""
    if sampling is None or not sampling.stop:
        return None
    hits = [(text.find(s), s) for s in sampling.stop if s in text]
    return min(hits) if hits else None


def _stop_at(text: str, sampling: SamplingParams | None) -> int:
    """Index of the first stop string in ``text``, -1 if none."""
    hit = _first_stop(text, sampling)
    return -1 if hit is None else hit[0]


def _cut_at_stop(text: str, sampling: SamplingParams | None) -> str:
    """``text`` up to its first stop string, keeping the stop string if the params say so."""
    hit = _first_stop(text, sampling)
    if hit is None or sampling is None:
        return text
    index, stop = hit
    return text[: index + len(stop)] if sampling.include_stop_str else text[:index]
