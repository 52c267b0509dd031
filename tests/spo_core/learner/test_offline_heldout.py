"""Offline values and held-out evaluation against the real ReTool env and Docker sandbox.

The policy is scripted (it is not what is tested): every episode runs a code cell in the
sandbox, then boxes an answer that is right or wrong on a schedule the test knows, so every
figure has an exact expected value. Some of its calls fail like a lost inference server, which
masks the episode.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from agents.engine import RolloutError
from agents.episode_fn import EpisodeSpec
from agents.models import prepare, status
from agents.policy import SamplingParams, TokenOutput
from envs.tasks import Task, Tier, tier_of, tier_tasks
from sandbox import SandboxConfig, SandboxPool
from spo_core import OfflineConfig, ValueTracker, read_offline_jsonl
from spo_core.learner.heldout import evaluate_heldout, heldout_set
from spo_core.learner.offline_values import offline_values, weights_fingerprint

pytestmark = pytest.mark.docker

MARK = "# scripted cell"

# (task, answer calls of this task at this temperature so far) -> whether to answer right
Rule = Callable[[Task, bool, int], bool]


class AnswerKeyPolicy:
    """Plays arithmetic tasks: a code cell first, then a boxed answer chosen by ``right``.

    ``fail`` names (task key, greedy?, first-turn call number) whose first turn raises, as a
    lost inference server would; the engine masks those episodes.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        tasks: Sequence[Task],
        right: Rule,
        fail: Collection[tuple[str, bool, int]] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.tasks = list(tasks)
        self.right = right
        self.fail = fail
        self.version = 0
        self.max_context_tokens: int | None = None
        self.firsts: Counter[tuple[str, bool]] = Counter()
        self.answers: Counter[tuple[str, bool]] = Counter()
        self.calls = 0
        self.cells_seen = 0
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def _task(self, text: str) -> Task:
        (task,) = [t for t in self.tasks if t.problem in text]
        return task

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        self.calls += 1
        await asyncio.sleep(0)
        text = self.tokenizer.decode(prompt_ids)
        task = self._task(text)
        slot = (task.key, sampling.greedy)
        if MARK not in text:
            call = self.firsts[slot]
            self.firsts[slot] += 1
            if (task.key, sampling.greedy, call) in self.fail:
                raise ConnectionError("inference server unreachable")
            reply = (
                f"<code>\n```python\nx = {task.extra['expression']}\nprint(x)  {MARK}\n```\n</code>"
            )
            ids = self.tokenizer.encode(reply, add_special_tokens=False)
        else:
            # the sandbox really ran the cell: its output follows it in the context
            expected = str(eval(str(task.extra["expression"])))
            self.cells_seen += expected in text.split(MARK)[-1]
            n = self.answers[slot]
            self.answers[slot] += 1
            answer = task.answer if self.right(task, sampling.greedy, n) else "-99991"
            ids = [*self.tokenizer.encode(f"So \\boxed{{{answer}}}.", add_special_tokens=False)]
            ids.append(self.end)
        return TokenOutput(tuple(ids), tuple(-0.5 for _ in ids), "stop")

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        self.version = version


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    # Only the tokenizer is used: a size-checked folder will do (hashing the weights is slow).
    found = status("smollm2-135m")
    return AutoTokenizer.from_pretrained(
        found.path if found.state == "ready" else prepare("smollm2-135m")
    )


@pytest_asyncio.fixture(scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(SandboxConfig(warm=2, memory_mb=512, reuse=True)) as p:
        yield p


SPEC = EpisodeSpec(
    "spo_gym/ReTool-v0",
    {"generation": {"max_turns": 3}},
    SamplingParams(max_tokens=96, temperature=1.0, seed=7),
)


async def test_offline_values_samples_k_skips_masked_and_caches(
    tmp_path: Path, pool: SandboxPool, tokenizer: PreTrainedTokenizerBase
) -> None:
    tasks = tier_tasks([Tier(1, 1), Tier(2, 1)], 2, seed=11)
    wins = {t.key: i for i, t in enumerate(tasks)}  # task i: its first i answers are right

    def right(task: Task, greedy: bool, n: int) -> bool:
        return n < wins[task.key]

    fail = {(tasks[2].key, False, 0), (tasks[3].key, False, 1)}
    policy = AnswerKeyPolicy(tokenizer, tasks, right, fail)
    progress: list[int] = []
    k = 4
    first = await offline_values(
        policy, tokenizer, pool, SPEC, tasks, model_id="m1", cache_dir=tmp_path, k=k,
        episodes_in_flight=8, on_progress=lambda p: progress.append(p.prompts_done),
    )  # fmt: skip
    assert not first.cached and first.masked == 2
    # k samples per prompt, masked ones left out: task 2 and 3 each lost one
    assert {key: len(s) for key, s in first.scores.items()} == {
        tasks[0].key: 4, tasks[1].key: 4, tasks[2].key: 3, tasks[3].key: 3
    }  # fmt: skip
    # successes: min(i, unmasked samples) — the masked episode never reached an answer call
    assert [sum(first.scores[t.key]) for t in tasks] == [0, 1, 2, 3]
    assert sorted(progress) == [1, 2, 3, 4] and first.samples == 14
    assert sum(policy.firsts.values()) == len(tasks) * k
    assert policy.cells_seen == first.samples
    # the file spo_core reads, and the tracker's §5 prior from it
    offline = read_offline_jsonl(first.path)
    assert offline.keys == [t.key for t in tasks]
    assert offline.counts.tolist() == [4, 4, 3, 3] and offline.sums.tolist() == [0, 1, 2, 3]
    tracker = ValueTracker([t.key for t in tasks])
    report = tracker.init_offline(offline, OfflineConfig())
    assert report.matched == 4
    keys = [t.key for t in tasks]
    expected = [(s + 0.5) / (n + 1) for s, n in ((0, 4), (1, 4), (2, 3), (3, 3))]
    assert tracker.baseline(keys).tolist() == pytest.approx(expected)
    assert tracker.n_eff_at(tracker.rows(keys)).tolist() == pytest.approx([4, 4, 3, 3])

    # the same key: read from the cache, nothing sampled
    calls = policy.calls
    t0 = time.monotonic()
    again = await offline_values(
        policy, tokenizer, pool, SPEC, tasks, model_id="m1", cache_dir=tmp_path, k=k
    )
    assert again.cached and time.monotonic() - t0 < 1.0 and policy.calls == calls
    assert again.scores == first.scores and again.masked == 2 and again.path == first.path
    # another model, other sampling or another k: a different key, sampled afresh
    for model_id, spec, kk in (
        ("m2", SPEC, k),
        ("m1", SPEC.with_sampling(temperature=0.6, top_p=0.95), k),
        ("m1", SPEC, 2),
    ):
        fresh = AnswerKeyPolicy(tokenizer, tasks, lambda t, g, n: True)
        miss = await offline_values(
            fresh, tokenizer, pool, spec, tasks, model_id=model_id, cache_dir=tmp_path, k=kk
        )
        assert not miss.cached and miss.cache_key != first.cache_key and miss.path.is_file()
        assert all(s == [1.0] * kk for s in miss.scores.values())
        assert sum(fresh.firsts.values()) == len(tasks) * kk


def test_weights_fingerprint_follows_the_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    same.load_state_dict(model.state_dict())
    before = weights_fingerprint(model)
    assert weights_fingerprint(same) == before
    with torch.no_grad():
        model[1].bias[0] += 1e-6
    assert weights_fingerprint(model) != before
    assert weights_fingerprint(model.to(torch.bfloat16)) != weights_fingerprint(model.float())


def test_heldout_set_shares_nothing_with_training() -> None:
    tiers = [Tier(1, 1), Tier(2, 1)]
    # Drawn with the same seed as training on purpose: deduplication alone must separate them.
    train = tier_tasks(tiers, 20, seed=3)
    held = heldout_set(tiers, 12, seed=3, train=train)
    train_expr = {t.extra["expression"] for t in train}
    assert held.tier_mix == {"d1o1": 12, "d2o1": 12} and held.seed == 3
    assert not train_expr & {t.extra["expression"] for t in held.tasks}
    assert not {t.key for t in train} & {t.key for t in held.tasks}
    assert len({t.key for t in held.tasks}) == 24


async def test_heldout_figures_are_exact(
    pool: SandboxPool, tokenizer: PreTrainedTokenizerBase
) -> None:
    tiers = [Tier(1, 1), Tier(2, 1)]
    held = heldout_set(tiers, 4, seed=21, train=tier_tasks(tiers, 10, seed=20))
    a, b = (
        [t for t in held.tasks if tier_of(t) == "d1o1"],
        [t for t in held.tasks if tier_of(t) == "d2o1"],
    )
    greedy_right = {a[0].key, a[1].key, a[2].key, b[0].key}
    wins = {t.key: i % 5 for i, t in enumerate(held.tasks)}  # sampled: first i%5 answers right

    def right(task: Task, greedy: bool, n: int) -> bool:
        return task.key in greedy_right if greedy else n < wins[task.key]

    # b[3]'s greedy episode and one sample of a[2] (2 of 4 right) are masked
    fail = {(b[3].key, True, 0), (a[2].key, False, 3)}
    policy = AnswerKeyPolicy(tokenizer, held.tasks, right, fail)
    report = await evaluate_heldout(policy, tokenizer, pool, SPEC, held, k=4, episodes_in_flight=8)
    assert report.n == 8 and report.tier_mix == {"d1o1": 4, "d2o1": 4}
    assert report.masked == 2 and report.k == 4 and report.temperature == 1.0
    assert report.greedy_accuracy == pytest.approx(4 / 7)  # b[3] masked: out of the denominator
    rates = [min(i % 5, 4) / 4 for i in range(8)]
    rates[2] = 2 / 3  # a[2]: wins 2, one of its 4 samples masked (its first answer call is #0)
    assert report.avg_at_k == pytest.approx(sum(rates) / 8)
    assert report.per_tier["d1o1"].greedy == pytest.approx(3 / 4)
    assert report.per_tier["d2o1"].greedy == pytest.approx(1 / 3)
    assert report.per_tier["d1o1"].avg == pytest.approx(sum(rates[:4]) / 4)
    assert report.per_tier["d2o1"].avg == pytest.approx(sum(rates[4:]) / 4)
    # greedy requests really were greedy; sampled ones at T = 1
    assert sum(v for (_, g), v in policy.firsts.items() if g) == 8
    assert sum(v for (_, g), v in policy.firsts.items() if not g) == 32
    assert policy.cells_seen == 40 - report.masked
    metrics = report.to_metrics()
    assert metrics["heldout/greedy_accuracy"] == report.greedy_accuracy
    assert metrics["heldout/avg@4"] == report.avg_at_k
    assert metrics["heldout/d2o1/greedy"] == pytest.approx(1 / 3)
    assert metrics["heldout/n"] == 8.0 and metrics["heldout/masked"] == 2.0
    assert all(isinstance(v, float) for v in metrics.values())
    # k = 0: the greedy pass alone, same greedy figures, no sampled requests, no avg@k logged
    sampled_before = sum(v for (_, g), v in policy.firsts.items() if not g)
    greedy_only = await evaluate_heldout(
        policy, tokenizer, pool, SPEC, held, k=0, episodes_in_flight=8
    )
    # b[3]'s failure named its first greedy call only: now it is played, and answered wrong
    assert greedy_only.masked == 0 and greedy_only.greedy_accuracy == pytest.approx(4 / 8)
    assert greedy_only.per_tier["d1o1"].greedy == report.per_tier["d1o1"].greedy
    assert sum(v for (_, g), v in policy.firsts.items() if not g) == sampled_before
    assert not any(name.startswith("heldout/avg") for name in greedy_only.to_metrics())
    assert all("avg@" not in name for name in greedy_only.to_metrics())


async def test_a_pass_mostly_masked_fails_loudly(
    tmp_path: Path, pool: SandboxPool, tokenizer: PreTrainedTokenizerBase
) -> None:
    tasks = tier_tasks([Tier(1, 1)], 3, seed=4)
    # every sampled first turn of the first two tasks fails: 4 of 6 episodes masked
    fail = {(t.key, False, i) for t in tasks[:2] for i in range(2)}
    policy = AnswerKeyPolicy(tokenizer, tasks, lambda t, g, n: True, fail)
    with pytest.raises(RolloutError, match=r"4 of 6 episodes masked .*inference server"):
        await offline_values(
            policy, tokenizer, pool, SPEC, tasks, model_id="m", cache_dir=tmp_path, k=2
        )
    assert not list(tmp_path.iterdir())  # nothing cached
