r"""A policy with no model: it plays the built-in arithmetic tasks by script, for measuring and
testing everything around the model (engine, sandbox, grading, eval jobs) at zero LLM cost.

Each episode runs one real code cell — the task's expression, in the sandbox — then boxes an
answer drawn from the request's seed: the gold (written one of several equivalent ways: ``p/q``,
``\frac{p}{q}``, ``\dfrac{p}{q}``, or ``n.0`` for an integer), one of two fixed wrong answers, or
nothing. Each problem has its own success rate (from its text), so a set of problems spans easy
to hard. Since requests carry seeds derived from (run seed, problem, sample index, turn), the
same sample always gets the same answer and different samples differ: a *seeded stochastic*
policy. ``--policy-factory agents.scripted_policy:arithmetic_policy`` selects it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from transformers import PreTrainedTokenizerBase

from agents.policy import SamplingParams, TokenOutput

__all__ = ["ScriptedArithmeticPolicy", "arithmetic_policy"]

MARK = "# scripted cell"
_PROBLEM = re.compile(r"Compute the exact value of ([0-9+\-*/() ]+)")


class ScriptedArithmeticPolicy:
    """See the module docstring.

    Args:
        tokenizer: the tokenizer whose chat template the env renders with.
        delay_s: seconds each ``generate`` call takes (to stand in for a model's latency).
        skill: scales every problem's success rate (1: as described; 0: never right).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, delay_s: float = 0.0, skill: float = 1.0
    ) -> None:
        if not 0 <= skill <= 1 or delay_s < 0:
            raise ValueError("need 0 <= skill <= 1 and delay_s >= 0")
        self.tokenizer = tokenizer
        self.delay_s = delay_s
        self.skill = skill
        self.calls = 0
        self._end = tokenizer.eos_token_id

    @property
    def version(self) -> int:
        return 0

    @property
    def max_context_tokens(self) -> int | None:
        return None

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        """A code cell on the first turn of an episode, a boxed answer after it."""
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        text = str(self.tokenizer.decode(prompt_ids))
        problems = _PROBLEM.findall(text)
        if not problems:
            reply, end = "I cannot read the problem.", True
        else:
            expression = problems[-1].strip()
            if MARK not in text.rsplit("Compute the exact value of", 1)[-1]:
                reply = f"<code>\n```python\nprint({expression})  {MARK}\n```\n</code>"
                end = False
            else:
                reply, end = _answer(expression, sampling.seed, self.skill), True
        ids = self.tokenizer.encode(reply, add_special_tokens=False)
        if end and self._end is not None:
            ids.append(self._end)
        return TokenOutput(tuple(ids), tuple(-0.5 for _ in ids), "stop")

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        raise NotImplementedError("a scripted policy has no weights")


def _answer(expression: str, seed: int | None, skill: float) -> str:
    gold = _exact(expression)
    rng = random.Random(seed)
    difficulty = int(hashlib.blake2b(expression.encode(), digest_size=2).hexdigest(), 16) / 65535
    draw = rng.random()
    if draw < 0.08:
        return "I am not sure."
    if draw < 0.08 + 0.92 * (1 - difficulty) * skill:
        forms = [f"{gold.numerator}/{gold.denominator}", rf"\frac{{{gold.numerator}}}{{{gold.denominator}}}",
                 rf"\dfrac{{{gold.numerator}}}{{{gold.denominator}}}"]  # fmt: skip
        if gold.denominator == 1:
            forms = [str(gold.numerator), f"{gold.numerator}.0"]
        return f"So the answer is \\boxed{{{rng.choice(forms)}}}."
    wrong = gold + 1 if rng.random() < 0.6 else gold * 2
    return f"So the answer is \\boxed{{{wrong}}}."


def _exact(expression: str) -> Fraction:
    """The exact value of an arithmetic expression of integers (``/`` is exact division)."""
    wrapped = re.sub(r"(\d+)", r"Fraction(\1)", expression)  # digits, + - * / ( ) only
    value = eval(wrapped, {"__builtins__": {}, "Fraction": Fraction}, {})
    return Fraction(value)


def arithmetic_policy(seed: int) -> tuple[ScriptedArithmeticPolicy, PreTrainedTokenizerBase]:
    """The policy factory: a scripted policy with SmolLM2's tokenizer (no weights loaded)."""
    from transformers import AutoTokenizer

    from agents.models import prepare, status

    found = status("smollm2-135m")
    path = found.path if found.state == "ready" else prepare("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return ScriptedArithmeticPolicy(tokenizer), tokenizer
