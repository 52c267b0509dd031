"""Policy factories for eval tests (``PolicySpec(factory="tests.evals.policies:...")``).

``flaky``: the scripted arithmetic policy, except that the first turn of chosen samples fails
like a lost inference server — once (``FAIL_ONCE``) or every time (``FAIL_ALWAYS``), keyed by
the turn's sampling seed — so the engine masks those episodes.
"""

from __future__ import annotations

from collections import Counter

from transformers import PreTrainedTokenizerBase

from agents.policy import SamplingParams, TokenOutput
from agents.scripted_policy import ScriptedArithmeticPolicy, arithmetic_policy

FAIL_ONCE: set[int] = set()
FAIL_ALWAYS: set[int] = set()
SEEN: Counter[int] = Counter()


class FlakyPolicy(ScriptedArithmeticPolicy):
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        seed = sampling.seed if sampling.seed is not None else -1
        SEEN[seed] += 1
        if seed in FAIL_ALWAYS or (seed in FAIL_ONCE and SEEN[seed] == 1):
            raise ConnectionError("inference server unreachable")
        return await super().generate(prompt_ids, sampling)


def flaky(seed: int) -> tuple[FlakyPolicy, PreTrainedTokenizerBase]:
    _, tokenizer = arithmetic_policy(seed)
    return FlakyPolicy(tokenizer), tokenizer


def slow(seed: int) -> tuple[ScriptedArithmeticPolicy, PreTrainedTokenizerBase]:
    """The scripted policy at 40 ms a call, so a job can be killed part-way."""
    _, tokenizer = arithmetic_policy(seed)
    return ScriptedArithmeticPolicy(tokenizer, delay_s=0.04), tokenizer


def weaker(seed: int) -> tuple[ScriptedArithmeticPolicy, PreTrainedTokenizerBase]:
    """The scripted policy at half its skill."""
    _, tokenizer = arithmetic_policy(seed)
    return ScriptedArithmeticPolicy(tokenizer, skill=0.5), tokenizer
