r"""Ideal tool-use traces for the arithmetic family, token for token as a rollout makes them.

The ideal episode of an arithmetic task has two model turns: code that evaluates the expression
exactly, then, after the interpreter's output, the answer in ``\boxed{}``. The code copies the
expression verbatim into a string and has Python wrap every integer in
:class:`fractions.Fraction`, so ``/`` is exact division and the printed value is an integer or
``p/q`` in lowest terms, the form of the gold answer::

    <code>
    ```python
    x = "(901 - 337) / 384"
    import re
    from fractions import Fraction as F
    print(eval(re.sub(r"(\d+)", r"F(\1)", x)))
    ```
    </code><interpreter>
    47/32
    </interpreter>

    \boxed{47/32}<|im_end|>

A verbatim copy is what a small model learns first (an induction pattern); its errors grow with
the length of the expression, which leaves room for reinforcement learning on harder tiers.

A trace is rendered by the agents' own :class:`~agents.transcript.Transcript` from the env's own
prompt, generation controls and observation format, with the model turns given as the ids a
policy would sample (the stop string ends the code turn; the end-of-turn token ends the answer).
The interpreter's output is the task's gold answer — what ``print`` of the exact value writes —
so no sandbox is needed to build traces; a test plays the same actions through the real sandbox
and compares the ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from agents.policy import SamplingParams, TokenOutput
from agents.transcript import Transcript, TranscriptLimits
from envs import ToolEnv
from envs.formats import (
    CODE_INTERPRETER,
    ToolCall,
    ToolFormat,
    render_call,
    render_observation,
    truncate_text,
)
from envs.tasks import Task

__all__ = ["Trace", "TraceError", "ideal_actions", "ideal_code", "render_trace"]

_EXPRESSION = re.compile(r"[0-9+\-*/() ]+")  # integers, operators, brackets and spaces


class TraceError(ValueError):
    """A task that has no ideal trace, or a trace that does not fit or drifts."""


@dataclass(frozen=True)
class Trace:
    """One supervised example: the whole episode's token ids and which of them are trained on.

    Attributes:
        input_ids: prompt and response ids, exactly as a rollout's context holds them.
        loss_mask: 1 on the model's own tokens, 0 on the prompt and on observations.
        prompt_len: how many of ``input_ids`` are the prompt.
        task_key: the task's key.
    """

    input_ids: tuple[int, ...]
    loss_mask: tuple[int, ...]
    prompt_len: int
    task_key: str


def ideal_code(expression: str) -> str:
    """Python that prints the exact value of an arithmetic ``expression`` (copied verbatim)."""
    if not _EXPRESSION.fullmatch(expression):
        raise TraceError(f"not an arithmetic expression: {expression!r}")
    return (
        f'x = "{expression}"\nimport re\nfrom fractions import Fraction as F\n'
        'print(eval(re.sub(r"(\\d+)", r"F(\\1)", x)))'
    )


def ideal_actions(task: Task, tool_format: ToolFormat = "retool") -> tuple[str, str]:
    r"""The two model turns of the ideal episode: the code call, and the ``\boxed{}`` answer.

    Raises:
        TraceError: the task carries no arithmetic expression.
    """
    expression = task.extra.get("expression")
    if not isinstance(expression, str):
        raise TraceError(f"task {task.key} carries no arithmetic expression")
    call = render_call(
        ToolCall(CODE_INTERPRETER.name, {"code": ideal_code(expression)}), tool_format
    )
    return call, f"\\boxed{{{task.answer}}}"


def render_trace(
    task: Task,
    env: ToolEnv,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_context_tokens: int | None = None,
) -> Trace:
    """The ideal episode of ``task`` in ``env`` as the rollout's token transcript would hold it.

    ``env`` supplies the prompt (:meth:`~envs.core.ToolEnv.prompt`) and generation controls;
    it is not reset and needs no sandbox.

    Raises:
        TraceError: no ideal trace, it exceeds the env's budget or ``max_context_tokens``, or the
            chat template re-renders it differently (drift).
    """
    gen = env.generation
    if gen.observation_placement != "inline":
        raise TraceError("ideal traces are built for inline observations (the retool format)")
    code, answer = ideal_actions(task, gen.tool_format)
    transcript = Transcript(
        tokenizer,
        env.prompt(task),
        limits=TranscriptLimits(
            max_response_tokens=gen.max_episode_tokens, max_context_tokens=max_context_tokens
        ),
    )
    sampling = SamplingParams(stop=gen.stop, include_stop_str=gen.include_stop)
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    observation = render_observation(
        truncate_text(task.answer, gen.max_observation_chars, gen.truncation_side), gen.tool_format
    )
    turns = [tokenizer.encode(code, add_special_tokens=False)]
    turns.append([*tokenizer.encode(answer, add_special_tokens=False), eos])
    for index, ids in enumerate(turns):
        remaining = transcript.remaining_tokens
        if remaining is not None and len(ids) > remaining:
            raise TraceError(f"task {task.key}: the ideal episode does not fit the token limits")
        transcript.add_model_output(TokenOutput(tuple(ids), (0.0,) * len(ids), "stop"), sampling)
        if index == 0:
            transcript.add_observation(observation, placement="inline")
            if transcript.exhausted:
                raise TraceError(f"task {task.key}: the observation exhausts the token limits")
    if transcript.drift:
        raise TraceError(f"task {task.key}: the trace drifts: {transcript.drift[0]}")
    return Trace(
        input_ids=tuple(transcript.context_ids),
        loss_mask=(0,) * len(transcript.prompt_ids) + tuple(transcript.response_mask),
        prompt_len=len(transcript.prompt_ids),
        task_key=task.key,
    )


def render_traces(
    tasks: Sequence[Task],
    env: ToolEnv,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_context_tokens: int | None = None,
) -> list[Trace]:
    """:func:`render_trace` of every task."""
    return [render_trace(t, env, tokenizer, max_context_tokens=max_context_tokens) for t in tasks]
