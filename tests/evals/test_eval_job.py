"""Eval jobs end to end against the real env, Docker sandbox and grader.

The policy is scripted and seeded-stochastic (:mod:`agents.scripted_policy`): each sample runs a
real code cell, then answers from its own seed, so a sample is the same whenever it is played.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agents.policy import SamplingParams
from agents.policy_spec import PolicySpec
from agents.seeds import turn_seed
from evals import EvalConfig, plan_run, run_eval
from evals.job import CURVE_PNG, OFFLINE_VALUES, SUMMARY_JSON, SUMMARY_MD
from evals.regrade import regrade_run
from evals.store import SAMPLES, RunLocked, RunStore
from sandbox import SandboxConfig
from spo_core import OfflineConfig, ValueTracker, read_offline_jsonl
from tests.evals import policies

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = "agents.scripted_policy:arithmetic_policy"


def _config(out: Path, factory: str = SCRIPTED, **changes: object) -> EvalConfig:
    config = EvalConfig(
        dataset="tiers:d2o1,d2o2:3",
        policy=PolicySpec(factory=factory, seed=5),
        env_options={"generation": {"max_turns": 3}},
        k=4,
        sampling=SamplingParams(max_tokens=128, temperature=1.0, seed=5),
        out=out,
        concurrency=4,
        sandbox=SandboxConfig(warm=1, memory_mb=512, reuse=True),
    )
    return replace(config, **changes)  # type: ignore[arg-type]


async def test_eval_writes_every_output_and_a_finished_run_only_summarises(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    outcome = await run_eval(config)
    store = outcome.store
    assert outcome.played == 24
    summary = outcome.summary
    assert (summary.problems, summary.samples, summary.lost) == (6, 24, 0)
    for name in (SUMMARY_JSON, SUMMARY_MD, CURVE_PNG, OFFLINE_VALUES, "manifest.json"):
        assert store.path(name).stat().st_size > 0, name
    assert store.path(CURVE_PNG).read_bytes()[:4] == b"\x89PNG"
    stored = json.loads(store.path(SUMMARY_JSON).read_text())
    assert stored["avg"]["value"] == pytest.approx(summary.avg.value)
    assert [p["k"] for p in stored["pass_at"]] == [1, 2, 4]
    manifest = store.manifest()
    (session,) = manifest["sessions"]
    assert session["grader_version"] and session["sandbox_image"]["id"].startswith("sha256:")
    assert {"python", "torch", "transformers"} <= set(session["versions"])
    # every sample ran a real cell: the sandbox printed the expression's value
    samples = store.samples()
    assert all(s.tool_calls == 1 and s.tool_statuses == ["ok"] for s in samples.values())
    assert 0 < summary.avg.value < 1  # the scripted policy is right sometimes, not always
    # the same command again: nothing sampled, the same summary at once
    t0 = time.monotonic()
    again = await run_eval(config)
    assert again.played == 0 and time.monotonic() - t0 < 10
    assert again.summary.to_dict() == summary.to_dict()
    assert len(store.manifest()["sessions"]) == 1


async def test_run_ids_are_content_addressed(tmp_path: Path) -> None:
    _, base, _ = plan_run(_config(tmp_path))
    assert plan_run(_config(tmp_path))[1].folder == base.folder
    assert plan_run(_config(tmp_path, k=16))[1].folder == base.folder  # k extends a run
    for changed in (
        _config(tmp_path, sampling=SamplingParams(max_tokens=128, temperature=0.7, seed=5)),
        _config(tmp_path, sampling=SamplingParams(max_tokens=128, temperature=1.0, seed=6)),
        _config(tmp_path, dataset="tiers:d2o1,d2o2:4"),
        _config(tmp_path, limit=5),
        _config(tmp_path, env_options={"generation": {"max_turns": 2}}),
        _config(tmp_path, "tests.evals.policies:slow"),
    ):
        assert plan_run(changed)[1].folder != base.folder


async def test_a_larger_k_extends_the_run_with_the_same_first_samples(tmp_path: Path) -> None:
    small = await run_eval(_config(tmp_path, k=2))
    first = small.store.samples()
    large = await run_eval(_config(tmp_path, k=4))
    assert large.store.folder == small.store.folder and large.played == 12
    grown = large.store.samples()
    assert all(grown[i] == s for i, s in first.items())
    assert len(grown) == 24


async def test_masked_episodes_are_retried_and_what_still_fails_is_lost_not_wrong(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, "tests.evals.policies:flaky", max_attempts=2)
    dataset, _, _ = plan_run(config)
    a, b = dataset.tasks[0], dataset.tasks[1]
    once, always = turn_seed(5, a.key, 1, 0), turn_seed(5, b.key, 2, 0)
    policies.SEEN.clear()
    policies.FAIL_ONCE.clear()
    policies.FAIL_ALWAYS.clear()
    policies.FAIL_ONCE.add(once)
    policies.FAIL_ALWAYS.add(always)
    outcome = await run_eval(config)
    summary = outcome.summary
    assert (summary.samples, summary.lost) == (23, 1)
    retried = outcome.store.samples()[f"{a.key}#1"]
    assert retried.attempts == 2
    (loss,) = outcome.store.lost().values()
    assert (loss.problem_key, loss.sample_index, loss.attempts) == (b.key, 2, 2)
    assert "unreachable" in loss.reason or "masked" in loss.reason
    rows = {p.key: p for p in summary.per_problem}
    assert (rows[b.key].n, rows[b.key].lost) == (3, 1)  # not a fourth, wrong sample
    assert summary.point("pass", 4).problems == 5  # type: ignore[union-attr]
    # the infrastructure recovers: a resumed run plays only the lost sample
    policies.FAIL_ALWAYS.clear()
    resumed = await run_eval(config)
    assert resumed.played == 1
    assert (resumed.summary.samples, resumed.summary.lost) == (24, 0)


async def test_regrade_changes_only_verdicts(tmp_path: Path) -> None:
    outcome = await run_eval(_config(tmp_path))
    store = outcome.store
    log = store.path(SAMPLES)
    lines = log.read_text().splitlines()
    # a buggy grader had flipped three verdicts
    flipped = set()
    for i in (0, 5, 9):
        row = json.loads(lines[i])
        row["correct"] = not row["correct"]
        row["reward"] = float(row["correct"])
        lines[i] = json.dumps(row)
        flipped.add(row["id"])
    log.write_text("\n".join(lines) + "\n")
    before_bytes = log.read_bytes()
    report = regrade_run(store)
    assert {c.id for c in report.changed} == flipped
    assert report.checked == 24 and report.unavailable == 0
    assert log.read_bytes() == before_bytes  # the sample log is never edited
    from evals.job import summarize_run

    regraded = summarize_run(store, 4)
    assert regraded.avg.value == pytest.approx(outcome.summary.avg.value)
    assert regraded.to_dict()["per_problem"] == outcome.summary.to_dict()["per_problem"]
    # a second re-grade finds nothing new to change
    assert regrade_run(store).changed == []


async def test_offline_values_round_trip_into_the_tracker(tmp_path: Path) -> None:
    outcome = await run_eval(_config(tmp_path))
    path = outcome.store.path(OFFLINE_VALUES)
    tasks = outcome.store.problems()
    scores = read_offline_jsonl(path)
    tracker = ValueTracker([t.key for t in tasks])
    report = tracker.init_offline(scores, OfflineConfig())
    assert report.match_rate == 1.0 and report.matched == len(tasks)
    samples = outcome.store.samples()
    table = {json.loads(line)["key"]: json.loads(line)["scores"] for line in path.open()}
    for task in tasks:
        assert table[task.key] == [samples[f"{task.key}#{i}"].reward for i in range(4)]


async def test_a_second_job_on_the_same_run_is_refused(tmp_path: Path) -> None:
    _, store, _ = plan_run(_config(tmp_path))
    with store.lock(), pytest.raises(RunLocked, match="another job"):
        await run_eval(_config(tmp_path))


def _cli(out: Path, k: int) -> list[str]:
    return [
        sys.executable, "-c", "from spo_gym.cli import main; main()",
        "eval", "--dataset", "tiers:d2o1,d2o2:4", "-k", str(k), "--temperature", "1.0",
        "--max-tokens", "128", "--max-turns", "3", "--seed", "3", "--concurrency", "4",
        "--policy-factory", "tests.evals.policies:slow", "--out", str(out), "--no-progress",
    ]  # fmt: skip


def _rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    k, problems = 6, 8
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    log: Path | None = None
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            _cli(tmp_path, k), cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            before = len(_rows(log)) if log else 0
            # kill once this session has added samples, at a random moment after that
            while time.monotonic() < deadline and proc.poll() is None:
                found = list(tmp_path.glob(f"*/{SAMPLES}"))
                log = found[0] if found else None
                if log is not None and len(_rows(log)) > before:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert kills >= 2 and log is not None
    partial = _rows(log)
    assert 0 < len(partial) < k * problems
    done = subprocess.run(_cli(tmp_path, k), cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])["runs"][0]
    rows = _rows(log)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == k * problems
    assert figures["samples"] == k * problems and figures["played"] == k * problems - len(
        {r["id"] for r in partial}
    )
    # the samples written before the kills are those an uninterrupted run writes
    fresh = tmp_path / "fresh"
    clean = subprocess.run(_cli(fresh, k), cwd=ROOT, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    (fresh_log,) = fresh.glob(f"*/{SAMPLES}")
    strip = ("llm_s", "sandbox_s", "grader_s", "total_s")

    def same(r: dict[str, object]) -> dict[str, object]:
        return {key: v for key, v in r.items() if key not in strip}

    assert sorted(map(json.dumps, map(same, rows))) == sorted(
        map(json.dumps, map(same, _rows(fresh_log)))
    )
    assert RunStore(log.parent).lost() == {}
