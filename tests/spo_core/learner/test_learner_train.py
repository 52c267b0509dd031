"""Short training runs against the real Docker sandbox, the real rollout engine and HFPolicy.

The model is a tiny random Qwen3: it earns no reward, but the offline table gives its prompts
different baselines, so advantages are non-zero from the first step and every part of the loop
— update, ρ, tracker, weight push, checkpoints — does real work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3ForCausalLM

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.episode_request import EpisodeRequest
from agents.hf_policy import HFPolicy
from agents.policy import SamplingParams
from agents.trajectory import Trajectory
from envs import Task, arithmetic_tasks
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner import Learner, LearnerArgs, StepReport, load_checkpoint
from spo_core.offline import OfflineScores

pytestmark = pytest.mark.docker

ModelFactory = Callable[[int], Qwen3ForCausalLM]

SPEC = EpisodeSpec(
    "spo_gym/ReTool-v0",
    env_options={
        "system_template": "",
        "generation": {"max_turns": 2, "max_turn_tokens": 16, "max_episode_tokens": 40},
    },
    sampling=SamplingParams(max_tokens=16, seed=7),
)
TASKS = arithmetic_tasks(24, digits=1, operations=1, seed=11)


def offline_table(tasks: list[Task]) -> OfflineScores:
    rng = np.random.default_rng(0)
    return OfflineScores.from_lists({t.key: list(rng.integers(0, 2, size=8)) for t in tasks})


def make_learner(
    pool: SandboxPool,
    make_model: ModelFactory,
    tokenizer: PreTrainedTokenizerFast,
    args: LearnerArgs,
    *,
    max_batch_size: int = 8,
    checkpoint_dir: Path | None = None,
) -> Learner:
    policy = HFPolicy(make_model(0), tokenizer, max_batch_size=max_batch_size)
    return Learner(
        args,
        model=make_model(0),
        policy=policy,
        episode_fn=episode_fn(SPEC, policy, tokenizer, pool),
        tasks=TASKS,
        offline=offline_table(TASKS),
        checkpoint_dir=checkpoint_dir,
        pad_id=tokenizer.pad_token_id,
    )


def params(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learner.model.state_dict().items()}


async def test_a_short_run_trains_and_updates_exactly_the_sampled_prompts(
    learner_pool: SandboxPool,
    make_tiny_model: ModelFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    args = LearnerArgs.cpu(
        batch_size=6, extra=3, mini_batch_size=4, micro_batch_size=2, total_steps=None,
        episode_budget=24, eval_every=3,
    )  # fmt: skip
    reports: list[StepReport] = []
    learner = make_learner(learner_pool, make_tiny_model, tiny_tokenizer, args)
    learner.on_step = reports.append
    evaluations: list[tuple[int, bool, bool]] = []

    async def evaluate(state: Mapping[str, torch.Tensor], version: int) -> dict[str, float]:
        same = all(torch.equal(state[k], v) for k, v in learner.model.state_dict().items())
        evaluations.append((version, learner.engine.paused, same))
        return {"heldout_accuracy": version / 10}

    learner.evaluate = evaluate
    start = params(learner)
    rho = args.spo.rho
    try:
        while not learner.done:
            stats_before = learner.tracker.state_dict()["stats"]
            report = await learner.step()
            batch = learner.last_batch
            assert batch is not None
            keys = [t.prompt_key for t in batch.trajectories]
            assert len(keys) == len(set(keys)) == 6  # never a prompt twice in a batch
            sampled = {t.prompt_key for t in batch.trajectories if not t.masked}
            stats_after = learner.tracker.state_dict()["stats"]
            changed = np.flatnonzero((stats_before != stats_after).any(axis=0))
            assert sorted(changed) == sorted(learner.tracker.rows(sorted(sampled)))
            # α ← ρ·α + r per prompt: recover each ρ and check its range.
            rows = learner.tracker.rows([t.prompt_key for t in batch.trajectories])
            rewards = np.array([t.reward for t in batch.trajectories])
            factors = (stats_after[0, rows] - rewards) / stats_before[0, rows]
            assert np.all((factors >= rho.rho_min - 1e-12) & (factors <= rho.rho_max + 1e-12))
            assert report.rho_mean == pytest.approx(float(factors.mean()))
            # fp32 rollouts and fp32 learner: current-version tokens agree to 1e-5.
            assert report.behaviour_mismatch <= 1e-5
    finally:
        await learner.close()
    assert [r.step for r in reports] == [1, 2, 3, 4]
    # Every eval_every steps and after the last, with rollouts paused, on the pushed weights.
    assert evaluations == [(3, True, True), (4, True, True)]
    assert [r.eval for r in reports] == [
        {},
        {},
        {"heldout_accuracy": 0.3},
        {"heldout_accuracy": 0.4},
    ]
    assert reports[-1].episodes == 24 and reports[-1].policy_version == 4
    assert learner.policy.version == 4
    assert any(r.first_visit_share < 1 for r in reports)  # revisits re-scored their last response
    assert any(r.rho_mean < rho.rho_max for r in reports)
    assert all(r.grad_norm > 0 and np.isfinite(r.loss) for r in reports)
    moved = [k for k, v in params(learner).items() if not torch.equal(v, start[k])]
    assert moved, "no parameter changed"
    # The rollout policy received the learner's weights.
    policy_state = learner.policy.model.state_dict()  # type: ignore[attr-defined]
    assert all(torch.equal(policy_state[k], v) for k, v in params(learner).items())


async def test_checkpoint_resume_is_exact(
    learner_pool: SandboxPool,
    make_tiny_model: ModelFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
) -> None:
    # extra = 0: every batch is the B prompts drawn, whatever finishes first; batches are put in
    # canonical order by the learner. max_batch_size = 1: batched decoding pads rows, which
    # perturbs logits by ~1e-6 and could flip a sampled token between two runs whose requests
    # happen to be batched differently.
    args = LearnerArgs.cpu(
        batch_size=6, extra=0, mini_batch_size=4, micro_batch_size=2, total_steps=4,
        checkpoint_every=2,
    )  # fmt: skip

    async def run(learner: Learner, resume: Path | None = None) -> list[list[str]]:
        keys = []
        try:
            if resume is not None:
                await learner.resume(resume)
            while not learner.done:
                await learner.step()
                assert learner.last_batch is not None
                keys.append(sorted(t.prompt_key for t in learner.last_batch.trajectories))
        finally:
            await learner.close()
        return keys

    straight = make_learner(
        learner_pool, make_tiny_model, tiny_tokenizer, args, max_batch_size=1,
        checkpoint_dir=tmp_path / "straight",
    )  # fmt: skip
    straight_keys = await run(straight)

    first = make_learner(
        learner_pool, make_tiny_model, tiny_tokenizer, args.with_overrides(total_steps=2),
        max_batch_size=1, checkpoint_dir=tmp_path / "split",
    )  # fmt: skip
    first_keys = await run(first)
    second = make_learner(
        learner_pool, make_tiny_model, tiny_tokenizer, args, max_batch_size=1,
        checkpoint_dir=tmp_path / "split",
    )  # fmt: skip
    second_keys = await run(second, resume=tmp_path / "split")

    assert first_keys + second_keys == straight_keys
    assert second.steps == 4 and second.episodes == straight.episodes == 24
    a, b = params(straight), params(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.tracker.state_dict(), second.tracker.state_dict()
    np.testing.assert_array_equal(sa["stats"], sb["stats"])
    assert straight.engine.state_dict() == second.engine.state_dict()
    assert straight.store.state_dict()["keys"] == second.store.state_dict()["keys"]


async def test_no_prompt_is_lost_or_duplicated_across_a_live_resume(
    learner_pool: SandboxPool,
    make_tiny_model: ModelFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
) -> None:
    args = LearnerArgs.cpu(
        batch_size=4, extra=6, mini_batch_size=4, micro_batch_size=2, total_steps=2,
        checkpoint_every=2,
    )  # fmt: skip
    first = make_learner(
        learner_pool, make_tiny_model, tiny_tokenizer, args, checkpoint_dir=tmp_path
    )
    delivered: list[str] = []
    try:
        for _ in range(2):
            await first.step()
            assert first.last_batch is not None
            delivered += [t.prompt_key for t in first.last_batch.trajectories]
        in_flight = first.source.in_flight
    finally:
        await first.close()  # the process "dies": episodes in flight are lost with it
    state, _ = load_checkpoint(tmp_path)
    pending = [TASKS[r].key for r in state["source"]["pending"]]
    assert pending == in_flight and pending, "the checkpoint did not record the prompts in flight"
    assert not set(pending) & set(delivered[-4:])

    second = make_learner(
        learner_pool, make_tiny_model, tiny_tokenizer, args.with_overrides(total_steps=5)
    )
    after: list[list[str]] = []
    try:
        await second.resume(tmp_path)
        counts = state["engine"]["sample_counts"]
        while not second.done:
            await second.step()
            assert second.last_batch is not None
            after.append([t.prompt_key for t in second.last_batch.trajectories])
            if len(after) == 1:
                # The first admissions after the resume were the prompts in flight, once each.
                now = second.engine.state_dict()["sample_counts"]
                assert all(now[k] == counts[k] + 1 for k in pending)
        still = set(second.source.in_flight)
    finally:
        await second.close()
    for keys in after:
        assert len(keys) == len(set(keys))
    # Every prompt in flight at the checkpoint was re-run: delivered since, or running now.
    seen = {k for keys in after for k in keys}
    assert set(pending) <= seen | still
    # It was re-run exactly once before it could be delivered: not twice in the first batches.
    first_batches = [k for keys in after[:2] for k in keys]
    assert all(first_batches.count(k) <= 1 for k in pending)


async def test_grpo_groups_are_distinct_samples_of_one_prompt(
    learner_pool: SandboxPool,
    make_tiny_model: ModelFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    args = LearnerArgs.cpu(
        "grpo", group_size=4, groups_per_batch=2, extra_groups=1, mini_batch_size=8,
        micro_batch_size=4, total_steps=2,
    )  # fmt: skip
    learner = make_learner(learner_pool, make_tiny_model, tiny_tokenizer, args)
    tracker_before = learner.tracker.state_dict()["stats"]
    try:
        for _ in range(2):
            report = await learner.step()
            assert learner.last_batch is not None
            groups: dict[str | None, list] = {}
            for t in learner.last_batch.trajectories:
                groups.setdefault(t.group_id, []).append(t)
            assert len(groups) == 2 and None not in groups
            for members in groups.values():
                assert len(members) == 4 and len({t.prompt_key for t in members}) == 1
                assert len({t.sample_index for t in members}) == 4
                assert len({tuple(t.response_ids) for t in members}) > 1, "copies of one sample"
            # All-zero rewards from a random model: every group is degenerate, A = 0.
            assert report.degenerate_share == 1.0 and report.frac_zero_adv == 1.0
    finally:
        await learner.close()
    np.testing.assert_array_equal(tracker_before, learner.tracker.state_dict()["stats"])


async def test_a_prompt_is_never_twice_in_a_batch_over_many_steps(
    learner_pool: SandboxPool,
    make_tiny_model: ModelFactory,
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # Half the task set in flight at once: the sampler must keep excluding running prompts.
    args = LearnerArgs.cpu(
        batch_size=6, extra=6, mini_batch_size=6, micro_batch_size=6, total_steps=12,
        max_staleness=2,
    )  # fmt: skip
    learner = make_learner(learner_pool, make_tiny_model, tiny_tokenizer, args)
    carried = 0
    try:
        while not learner.done:
            report = await learner.step()
            assert learner.last_batch is not None
            keys = [t.prompt_key for t in learner.last_batch.trajectories]
            assert len(keys) == len(set(keys)) == 6
            assert report.staleness_max <= args.max_staleness
            carried += learner.last_batch.stats.carried_in
    finally:
        await learner.close()
    assert carried > 0  # episodes did carry over, so exclusion was exercised
    assert learner.source.draws >= 12


async def test_masked_episodes_are_skipped_by_loss_statistics_tracker_and_store(
    learner_pool: SandboxPool,
    make_coder_model: Callable[[], Qwen3ForCausalLM],
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # Two prompts play on a pool whose Docker daemon does not exist: their first code cell finds no
    # sandbox and the env masks the episode — a real infrastructure failure, not a stub.
    tasks = arithmetic_tasks(8, digits=1, operations=1, seed=12)
    lost = {tasks[0].key, tasks[1].key}
    dead = SandboxPool(
        SandboxConfig(docker_url="unix:///nonexistent/docker.sock", warm=0, acquire_timeout_s=0.5)
    )  # never started: it cannot be
    policy = HFPolicy(make_coder_model(), tiny_tokenizer, max_batch_size=8)
    spec = EpisodeSpec(
        SPEC.env_id,
        env_options={"system_template": "", "generation": {"max_turns": 2, "max_turn_tokens": 40}},
        sampling=SamplingParams(max_tokens=40, seed=7),
    )
    play = episode_fn(spec, policy, tiny_tokenizer, learner_pool)
    fail = episode_fn(spec, policy, tiny_tokenizer, dead)

    async def routed(request: EpisodeRequest) -> Trajectory:
        return await (fail if request.task.key in lost else play)(request)

    args = LearnerArgs.cpu(
        batch_size=6, extra=0, mini_batch_size=6, micro_batch_size=3, total_steps=3
    )
    learner = Learner(
        args, model=make_coder_model(), policy=policy, episode_fn=routed, tasks=tasks,
        offline=offline_table(tasks), pad_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    masked_seen = used_tool = 0
    try:
        while not learner.done:
            before = learner.tracker.state_dict()["stats"]
            report = await learner.step()
            batch = learner.last_batch
            assert batch is not None
            masked = [t for t in batch.trajectories if t.masked]
            kept = [t for t in batch.trajectories if not t.masked]
            assert {t.prompt_key for t in masked} <= lost
            # "no sandbox became free …", then the pool's breaker: "the Docker daemon failed …"
            assert all(t.termination_reason == "masked" and t.mask_reason for t in masked)
            assert report.masked == len(masked) and report.trajectories == 6
            assert report.tokens == sum(t.num_model_tokens for t in kept)
            assert report.reward_mean == pytest.approx(np.mean([t.reward for t in kept]))
            changed = np.flatnonzero((before != learner.tracker.state_dict()["stats"]).any(axis=0))
            assert sorted(changed) == sorted(learner.tracker.rows([t.prompt_key for t in kept]))
            masked_seen += len(masked)
            used_tool += sum(t.used_tool for t in kept)
    finally:
        await learner.close()
        await dead.close()
    assert masked_seen >= 2 and used_tool > 0  # the others reached the real sandbox
    assert not lost & set(learner.store.state_dict()["keys"])  # never stored, never re-scored


async def test_the_ci_nano_trains_in_its_env(learner_pool: SandboxPool, ci_nano: Path) -> None:
    """The warm-started CI nano (its char-level tokenizer and chat template, the nano env)."""
    policy = HFPolicy.from_pretrained(ci_nano, max_batch_size=16)
    model = AutoModelForCausalLM.from_pretrained(ci_nano, dtype=torch.float32)
    spec = EpisodeSpec("spo_gym/ReToolNano-v0", sampling=SamplingParams(max_tokens=96, seed=3))
    tasks = arithmetic_tasks(32, digits=1, operations=1, seed=5)
    args = LearnerArgs.cpu(
        batch_size=8, extra=4, mini_batch_size=4, micro_batch_size=4, total_steps=2
    )
    learner = Learner(
        args, model=model, policy=policy,
        episode_fn=episode_fn(spec, policy, policy.tokenizer, learner_pool), tasks=tasks,
        offline=offline_table(tasks), pad_id=policy.tokenizer.pad_token_id,
    )  # fmt: skip
    start = params(learner)
    try:
        reports = await learner.train()
    finally:
        await learner.close()
    assert all(np.isfinite(r.loss) and r.grad_norm > 0 for r in reports)
    assert all(r.behaviour_mismatch <= 1e-5 for r in reports)
    assert reports[-1].tokens > 0 and reports[-1].llm_s > 0
    assert any(not torch.equal(v, start[k]) for k, v in params(learner).items())
