"""The learner's parts without the sandbox: settings, the sampler as prompt source, batch tensors,
log-prob recomputation, the PPO update on a tiny model, the §4 store and checkpoint errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from agents.episode_request import EpisodeRequest
from agents.hf_policy import HFPolicy
from agents.policy import SamplingParams
from agents.trajectory import Trajectory
from envs import Task, arithmetic_tasks
from spo_core.config import SamplerConfig, SPOConfig, TrackerConfig
from spo_core.learner import (
    CheckpointError,
    Learner,
    LearnerArgs,
    LearnerArgsError,
    LogProbModeError,
    ResponseStore,
    SamplerSource,
    collate,
    load_checkpoint,
    pad,
    score,
    tracker_for,
)
from spo_core.learner.batch import Row
from spo_core.losses import policy_loss
from spo_core.sampler import PromptSampler
from spo_core.tracker import ValueTracker

ModelFactory = Callable[[int], Qwen3ForCausalLM]


# -- settings -----------------------------------------------------------------------------------


def test_paper_profile_is_the_default_and_cpu_profile_is_sized_for_a_nano() -> None:
    paper = LearnerArgs.paper(total_steps=10)
    assert (paper.lr, paper.batch_size, paper.mini_batch_size, paper.weight_decay) == (
        1e-6,
        2048,
        256,
        0.01,
    )
    assert paper.spo.loss.dual_clip == 10.0 and paper.spo.loss.is_cap == 2.0
    cpu = LearnerArgs.cpu()
    assert cpu.lr == pytest.approx(1e-4) and cpu.batch_size <= 64
    grpo = LearnerArgs.cpu("grpo")
    assert grpo.method == "grpo" and grpo.spo.advantage.estimator == "grpo"
    assert grpo.spo.sampler.mode == "uniform" and grpo.trajectories_per_step == 4 * 8


def test_ablations_are_switches_of_one_config() -> None:
    base = LearnerArgs.cpu()
    assert base.ablation("no_baseline").spo.advantage.estimator == "no_baseline"
    assert base.ablation("no_offline_init").spo.offline.pseudo_count == 0
    assert base.ablation("uniform_sampling").spo.sampler.mode == "uniform"
    # Everything else is untouched.
    assert replace(base.ablation("uniform_sampling"), spo=base.spo) == base


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LearnerArgs.cpu(micro_batch_size=32, mini_batch_size=16), "micro_batch_size"),
        (lambda: LearnerArgs.cpu(total_steps=None), "needs an end"),
        (lambda: LearnerArgs.paper(), "needs an end"),
        (lambda: LearnerArgs.cpu(bogus=1), "unknown learner setting"),
        (lambda: LearnerArgs.cpu().with_overrides(method="grpo"), "estimator 'grpo'"),
        (
            lambda: LearnerArgs.cpu("grpo").with_overrides(
                spo=replace(LearnerArgs.cpu("grpo").spo, sampler=SamplerConfig())
            ),
            "uniformly",
        ),
        (lambda: LearnerArgs.cpu(lr=0.0), "lr"),
        (lambda: LearnerArgs.cpu(lr_warmup_steps=-1), "lr_warmup_steps must be >= 0"),
        (
            lambda: LearnerArgs.cpu(spo=SPOConfig(sampler=SamplerConfig(pool_size=16))),
            "pool_size 16 is smaller than the 40 prompts",
        ),
        (
            lambda: LearnerArgs.cpu(
                spo=SPOConfig(
                    sampler=SamplerConfig(mode="thompson"), tracker=TrackerConfig(mode="ema")
                )
            ),
            "Thompson",
        ),
        (lambda: LearnerArgs.cpu().ablation("bogus"), "unknown ablation"),  # type: ignore[arg-type]
    ],
)
def test_unsatisfiable_settings_fail_with_one_line(
    make: Callable[[], LearnerArgs], message: str
) -> None:
    with pytest.raises(LearnerArgsError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_a_task_set_smaller_than_the_prompts_in_flight_fails_before_any_work() -> None:
    with pytest.raises(LearnerArgsError, match="cannot keep 40 distinct"):
        LearnerArgs.cpu().check_dataset(39)


def test_spo_core_never_loads_the_learner_or_agents() -> None:
    code = (
        "import sys, spo_core; "
        "bad = [m for m in ('spo_core.learner', 'agents', 'envs', 'sandbox') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120).returncode == 0


# -- the prompt source --------------------------------------------------------------------------


def make_source(n: int = 50, draw: int = 8, mode: str = "prioritised") -> SamplerSource:
    tasks = arithmetic_tasks(n, digits=2, operations=1, seed=3)
    tracker = tracker_for(tasks, ValueTracker())
    sampler = PromptSampler(SamplerConfig(mode=mode), seed=5)  # type: ignore[arg-type]
    return SamplerSource(tasks, tracker, sampler, draw_size=draw)


def test_source_draws_a_whole_wave_at_once_and_never_hands_out_a_prompt_in_flight() -> None:
    source = make_source()
    taken = [source.take() for _ in range(8)]
    assert source.draws == 1  # one O(N) draw for eight prompts
    keys = [t.key for t in taken if t is not None]
    assert len(set(keys)) == 8 and source.in_flight == keys
    for _ in range(200):  # churn: release some, take more; nothing in flight twice
        task = source.take()
        assert task is not None
        assert source.in_flight.count(task.key) == 1
        first = next(t for t in source.tasks if t.key == source.in_flight[0])
        source.release(first, [])
    assert len(source.in_flight) == 8


def test_source_runs_dry_only_when_every_prompt_is_in_flight() -> None:
    source = make_source(n=10, draw=4)
    got = [source.take() for _ in range(10)]
    assert all(t is not None for t in got) and source.take() is None
    source.release(got[3], [])  # type: ignore[arg-type]
    again = source.take()
    assert again is not None and again.key == got[3].key  # type: ignore[union-attr]


def test_refresh_drops_rows_drawn_under_the_old_weights() -> None:
    source = make_source(draw=8)
    source.take()
    source.refresh()
    source.take()
    assert source.draws == 2


def test_a_resumed_source_hands_out_the_prompts_in_flight_first_then_draws_the_same() -> None:
    source = make_source()
    in_flight = [source.take() for _ in range(5)]
    state = source.state_dict()
    later = [source.take() for _ in range(12)]
    resumed = make_source()
    resumed.load_state_dict(state)
    again = [resumed.take() for _ in range(17)]
    assert [t.key for t in again[:5]] == [t.key for t in in_flight]  # type: ignore[union-attr]
    # Rows drawn but not handed out came back too, so the rest follows the same sequence.
    assert [t.key for t in again[5:]] == [t.key for t in later]  # type: ignore[union-attr]


# -- batch tensors ------------------------------------------------------------------------------


def trajectory(
    key: str,
    prompt: list[int],
    response: list[int],
    mask: list[int],
    *,
    masked: bool = False,
    versions: list[int] | None = None,
    reward: float = 1.0,
    mode: str = "tempered",
) -> Trajectory:
    return Trajectory(
        prompt_key=key,
        episode_id=f"e-{key}",
        prompt_ids=prompt,
        response_ids=response,
        response_mask=mask,
        response_logprobs=[-0.5 * m for m in mask],
        reward=reward,
        score_status="unscored",
        grade_detail="",
        turns=1,
        tool_results=[],
        termination_reason="answered",
        masked=masked,
        policy_version=min(versions or [0]),
        response_versions=versions or [0] * len(response),
        log_prob_mode=mode,  # type: ignore[arg-type]
        sampling=SamplingParams(temperature=0.7),
    )


def test_collate_drops_masked_trajectories_and_aligns_responses() -> None:
    batch = collate(
        [
            trajectory("a", [5, 6, 7], [8, 9, 10, 11], [1, 1, 0, 1], versions=[1, 1, 1, 2]),
            trajectory("lost", [5], [3, 3], [1, 1], masked=True),
            trajectory("b", [5], [12], [1], versions=[2]),
        ],
        pad_id=0,
        policy_version=2,
    )
    assert batch.keys == ["a", "b"] and batch.prompt_width == 3
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11], [0, 0, 5, 12, 0, 0, 0]]
    assert batch.position_ids[1, 2:4].tolist() == [0, 1]
    assert batch.response_mask.tolist() == [[1, 1, 0, 1], [1, 0, 0, 0]]
    assert batch.stale_tokens.tolist() == [[True, True, False, False], [False] * 4]
    assert batch.carried.tolist() == [True, False]
    assert batch.num_tokens == 4
    assert batch.temperatures.tolist() == pytest.approx([0.7, 0.7])
    part = batch.select([1])
    assert part.input_ids.tolist() == [[5, 12]] and part.prompt_width == 1


def test_non_tempered_log_probs_are_rejected_with_one_line() -> None:
    with pytest.raises(LogProbModeError, match="'raw' log-probs") as info:
        collate([trajectory("a", [1], [2], [1], mode="raw")], pad_id=0, policy_version=0)
    assert "\n" not in str(info.value)
    # A masked one is never trained on, so its kind does not matter.
    collate(
        [trajectory("a", [1], [2], [1], mode="raw", masked=True), trajectory("b", [1], [2], [1])],
        pad_id=0,
        policy_version=0,
    )


# -- log-probs and the update on a tiny model -------------------------------------------------


async def test_recomputed_log_probs_match_the_rollouts_in_fp32(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    policy = HFPolicy(make_tiny_model(1), tiny_tokenizer, max_batch_size=4, seed=0)
    prompts = [tiny_tokenizer.encode(t) for t in ("What is 1+2?", "Hi", "The answer is 408")]
    rows = []
    for i, prompt in enumerate(prompts):
        temperature = (0.6, 1.0, 1.3)[i]
        sampling = SamplingParams(max_tokens=24, temperature=temperature, seed=i)
        out = await policy.generate(prompt, sampling)
        rows.append(
            Row(
                key=str(i),
                prompt_ids=prompt,
                response_ids=out.token_ids,
                response_mask=[1] * len(out.token_ids),
                logprobs=out.log_probs,
                versions=[0] * len(out.token_ids),
                temperature=temperature,
            )
        )
    learner_copy = make_tiny_model(1)
    batch = pad(rows, tiny_tokenizer.pad_token_id, 0)
    recomputed = score(learner_copy, batch, micro_batch_size=2)
    gap = (recomputed - batch.behaviour_logp).abs() * batch.response_mask
    assert float(gap.max()) <= 1e-5
    # At another temperature the log-probs differ: the temperature is really applied.
    hot = score(learner_copy, replace(batch, temperatures=batch.temperatures * 2), 2)
    assert float(((hot - batch.behaviour_logp).abs() * batch.response_mask).max()) > 1e-2


async def never_played(request: EpisodeRequest) -> Trajectory:
    raise AssertionError("no episode runs in this test")


def tiny_learner(
    make_tiny_model: ModelFactory,
    tokenizer: PreTrainedTokenizerFast,
    problems: int = 4,
    **overrides: object,
) -> Learner:
    settings: dict[str, object] = {"lr": 1e-2, **overrides}
    args = LearnerArgs.cpu(batch_size=2, extra=0, mini_batch_size=2, micro_batch_size=1, **settings)
    tasks = [Task.create(f"problem {i}", str(i), "test") for i in range(problems)]
    policy = HFPolicy(make_tiny_model(2), tokenizer, max_batch_size=2)
    return Learner(
        args,
        model=make_tiny_model(2),
        policy=policy,
        episode_fn=never_played,
        tasks=tasks,
        pad_id=tokenizer.pad_token_id,
    )


def two_rows(tokenizer: PreTrainedTokenizerFast) -> list[Row]:
    prompt = tokenizer.encode("What is 2 * 3?")
    response = tokenizer.encode("The answer is \\boxed{6}.")
    tool = tokenizer.encode("<interpreter>6</interpreter>")
    mask = [1] * len(response) + [0] * len(tool) + [1] * len(response)
    ids = response + tool + response
    return [Row(str(i), prompt, ids, mask, [0.0] * len(ids), [0] * len(ids), 1.0) for i in range(2)]


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_loss_sign_follows_the_advantage_sign(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast, advantage: float
) -> None:
    learner = tiny_learner(make_tiny_model, tiny_tokenizer)
    data = pad(two_rows(tiny_tokenizer)[:1], tiny_tokenizer.pad_token_id, 0)
    before = score(learner.model, data, 2)
    data = replace(data, behaviour_logp=before)
    result = learner.update(data, torch.tensor([advantage]))
    after = score(learner.model, data, 2)
    assert result.optimizer_steps == 1 and result.grad_norm > 0
    assert result.behaviour_mismatch <= 1e-5
    # The PPO loss is −Ã·ratio: minimising it moves the sequence's log-prob with Ã's sign.
    assert np.sign(result.loss) == -np.sign(advantage)
    change = float(((after - before) * data.response_mask).sum())
    assert np.sign(change) == np.sign(advantage)


def test_the_learning_rate_warms_up_linearly_then_holds(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    learner = tiny_learner(make_tiny_model, tiny_tokenizer, lr=1e-3, lr_warmup_steps=4)
    data = pad(two_rows(tiny_tokenizer), tiny_tokenizer.pad_token_id, 0)
    data = replace(data, behaviour_logp=score(learner.model, data, 2))
    seen = []
    for step in range(6):
        learner.steps = step  # the loop's step counter, as after ``step`` training steps
        result = learner.update(data, torch.tensor([1.0, -1.0]))
        seen.append(result.metrics["lr"])
        assert learner.optimizer.param_groups[0]["lr"] == result.metrics["lr"]
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    constant = tiny_learner(make_tiny_model, tiny_tokenizer, lr=1e-3)
    assert constant.update(data, torch.tensor([1.0, -1.0])).metrics["lr"] == 1e-3


def test_a_bf16_learner_reports_its_mismatch_and_can_weight_every_token(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    fp32 = make_tiny_model(2)
    data = pad(two_rows(tiny_tokenizer), tiny_tokenizer.pad_token_id, 0)
    data = replace(data, behaviour_logp=score(fp32, data, 2))  # fp32 "rollouts"
    learner = tiny_learner(make_tiny_model, tiny_tokenizer, dtype="bfloat16", is_every_token=True)
    assert next(learner.model.parameters()).dtype == torch.bfloat16
    result = learner.update(data, torch.tensor([1.0, -1.0]))
    assert result.behaviour_mismatch > 1e-4  # bf16 against fp32: why the weight goes on every token
    assert result.metrics["is_weight_mean"] > 0  # no token is stale, yet every one is weighted
    plain = tiny_learner(make_tiny_model, tiny_tokenizer)
    assert plain.update(data, torch.tensor([1.0, -1.0])).metrics["is_weight_mean"] == 0.0


def test_tool_tokens_and_masked_episodes_get_no_gradient(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    from spo_core.learner import response_logprobs

    model = make_tiny_model(3)
    data = pad(two_rows(tiny_tokenizer), tiny_tokenizer.pad_token_id, 0)
    logp = response_logprobs(model, data)
    logp.retain_grad()
    loss = policy_loss(logp, logp.detach(), torch.tensor([1.0, -0.5]), data.response_mask).loss
    loss.backward()
    assert logp.grad is not None
    off = data.response_mask == 0
    assert float(logp.grad[off].abs().max()) == 0.0
    assert float(logp.grad[~off].abs().min()) > 0
    # A masked episode in the list changes nothing: not the tensors, not the token mean.
    good = trajectory("a", [5, 6], [7, 8, 9], [1, 0, 1])
    lost = trajectory("b", [5], [9, 9, 9, 9, 9], [1, 1, 1, 1, 1], masked=True)
    with_lost = collate([good, lost], 0, 0)
    without = collate([good], 0, 0)
    assert with_lost.num_tokens == without.num_tokens == 2
    assert torch.equal(with_lost.input_ids, without.input_ids)


# -- the §4 store and checkpoints ---------------------------------------------------------------


def test_response_store_is_bounded_lru_and_round_trips() -> None:
    store = ResponseStore(max_entries=2)
    for key in ("a", "b", "c"):
        store.put(key, [1, 2], [3, 4, 5], [1, 0, 1], torch.tensor([-1.0, -9.0, -2.0]), 0.8)
    assert "a" not in store and len(store) == 2
    entry = store.get("c")
    assert entry is not None
    assert entry.logprobs.tolist() == [-1.0, 0.0, -2.0]  # tool token's log-prob not kept
    store.put("b", [1], [3], [1], torch.tensor([-0.5]), 1.0)  # b is now the most recent
    store.put("d", [1], [3], [1], torch.tensor([-0.5]), 1.0)
    assert sorted(store.state_dict()["keys"]) == ["b", "d"]
    copy = ResponseStore(max_entries=5)
    copy.load_state_dict(store.state_dict())
    assert copy.state_dict()["keys"] == store.state_dict()["keys"]
    assert torch.equal(copy.get("d").response_ids, store.get("d").response_ids)  # type: ignore[union-attr]


def test_unreadable_or_missing_checkpoints_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path)
    broken = tmp_path / "step_00000003"
    broken.mkdir()
    (broken / "learner.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


async def test_a_checkpoint_of_another_run_is_refused(
    make_tiny_model: ModelFactory, tiny_tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    learner = tiny_learner(make_tiny_model, tiny_tokenizer)
    path = await learner.save(tmp_path)
    assert path.name == "step_00000000" and not list(tmp_path.glob(".tmp-*"))
    other = tiny_learner(make_tiny_model, tiny_tokenizer, problems=5)
    with pytest.raises(CheckpointError, match="different run: its n_tasks differs"):
        await other.resume(tmp_path)
    same = tiny_learner(make_tiny_model, tiny_tokenizer)
    assert await same.resume(tmp_path) == path
    np.testing.assert_array_equal(
        same.tracker.state_dict()["stats"], learner.tracker.state_dict()["stats"]
    )
