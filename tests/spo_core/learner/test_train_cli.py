"""`spo-gym train` (./run_retool.sh): input errors before any work, the dry-run plan, and a tiny
real run end to end (CI nano model, real sandbox) whose last stdout line is the result JSON."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from spo_core.learner.args import LearnerArgsError
from spo_core.learner.job import JobConfig, JobError, validate

ROOT = Path(__file__).resolve().parents[3]
CLI = str(ROOT / ".venv" / "bin" / "spo-gym")
REQUIRED = {
    "method",
    "model",
    "episodes",
    "train_wall_s",
    "wall_s",
    "heldout_n",
    "decoding",
    "heldout_accuracy_before",
    "heldout_accuracy_after",
}


def _train(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "train", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "ppo"], "unknown method 'ppo'"),
        (["--ablation", "nothing"], "unknown ablation 'nothing'"),
        (["--method", "grpo", "--ablation", "uniform_sampling"], "ablations apply to SPO"),
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--tiers", "d3x"], "bad tier name 'd3x'"),
        (["--model", "/nonexistent/model"], "/nonexistent/model"),
        (["--set", "lr=-1"], "lr must be > 0"),
        (["--set", "nonsense=1"], "--set 'nonsense=1'"),
        (["--set", "batch_size=500"], "cannot keep 508 distinct prompts"),
        (["--backend", "verl"], "verl backend cannot run here"),
    ],
)
def test_bad_input_is_one_line_before_any_work(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = _train(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_resume_without_checkpoints_is_an_error(tmp_path: Path) -> None:
    proc = _train("--resume", "--out", str(tmp_path))
    assert proc.returncode == 2 and "no checkpoints" in proc.stderr


def test_an_evaluation_only_job_checks_its_settings_but_needs_no_train_set() -> None:
    # 500 distinct prompts per batch cannot be kept by a training run, but nothing trains.
    validate(JobConfig(steps=0, tiers=("d1o1",), train_per_tier=8, learner={"batch_size": 500}))
    with pytest.raises(LearnerArgsError, match="distinct prompts"):
        validate(JobConfig(steps=1, tiers=("d1o1",), train_per_tier=8, learner={"batch_size": 500}))
    with pytest.raises(LearnerArgsError, match="lr must be > 0"):
        validate(JobConfig(steps=0, learner={"lr": -1.0}))
    with pytest.raises(JobError, match="steps must be >= 0"):
        validate(JobConfig(steps=-1))
    with pytest.raises(JobError, match="evaluation-only"):
        validate(JobConfig(steps=0, resume=Path("runs/x/checkpoints")))


def test_steps_zero_is_an_evaluation_only_plan(tmp_path: Path) -> None:
    proc = _train("--dry-run", "--steps", "0", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert plan["steps"] == 0 and plan["episode_budget"] is None
    (tmp_path / "checkpoints").mkdir()
    proc = _train("--steps", "0", "--resume", "--out", str(tmp_path))
    assert proc.returncode == 2 and "evaluation-only" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_the_plan_and_verl_launch_command(tmp_path: Path) -> None:
    proc = _train("--dry-run", "--backend", "verl", "--method", "grpo", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    plan = json.loads(lines[-1])
    assert plan["dry_run"] and plan["backend"] == "verl" and plan["method"] == "grpo"
    command = lines[-2]
    assert "-m spo_core.verl.main" in command and "--config-name grpo_qwen3_8b" in command
    assert "algorithm.adv_estimator=grpo" in command
    assert "  adv_estimator: grpo" in lines  # the composed configuration
    warm = _train(
        "--dry-run", "--backend", "verl", "--method", "grpo", "--set", "lr_warmup_steps=5",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert "actor_rollout_ref.actor.optim.lr_warmup_steps=5" in warm.stdout.splitlines()[-2]
    assert not any(tmp_path.iterdir())
    local = json.loads(_train("--dry-run", "--out", str(tmp_path)).stdout.strip().splitlines()[-1])
    assert local["backend"] == "local"  # auto without a GPU


@pytest.mark.docker
def test_a_tiny_run_end_to_end(ci_nano: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _train(
        "--model", "nano-ci", "--tiers", "d1o1", "--train-per-tier", "24",
        "--heldout-n", "8", "--heldout-k", "1", "--offline-k", "2",
        "--steps", "2", "--eval-every", "1",
        "--set", "batch_size=8", "--set", "extra=2", "--set", "mini_batch_size=8",
        "--concurrency", "8", "--quiet", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= REQUIRED
    assert result["steps"] == 2 and result["episodes"] >= 16
    assert result["decoding"] == "greedy" and result["heldout_n"] == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    # Evaluations during training are greedy only: no empty avg@k on the console.
    assert "held-out step 1: greedy" in proc.stderr
    assert "avg@0" not in proc.stderr and not re.search(r"\bnan\b", proc.stderr)
    assert "heldout/greedy_accuracy" in records[0] and "heldout/greedy_accuracy" in records[2]
    assert (out / "curve.png").stat().st_size > 1000
    assert any((out / "checkpoints").iterdir())
    assert json.loads((out / "result.json").read_text()) == result
    # A second run from the same model reads the initial held-out report from the cache.
    again = _train(
        "--model", "nano-ci", "--tiers", "d1o1", "--train-per-tier", "24",
        "--heldout-n", "8", "--heldout-k", "1", "--offline-k", "2",
        "--steps", "1", "--eval-every", "0",
        "--set", "batch_size=8", "--set", "extra=2", "--set", "mini_batch_size=8",
        "--concurrency", "8", "--quiet", "--out", str(tmp_path / "again"),
        timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "before: 8 problems (cached)" in again.stderr
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["heldout_accuracy_before"] == result["heldout_accuracy_before"]
    assert second["heldout_avg@1_before"] == result["heldout_avg@1_before"]


@pytest.mark.docker
def test_no_tier_to_train_on_is_one_line(ci_nano: Path, tmp_path: Path) -> None:
    # The CI nano solves nothing at three digits: no tier is in the 20-60% band.
    proc = _train(
        "--model", "nano-ci", "--candidate-tiers", "d3o2", "--train-per-tier", "16",
        "--offline-k", "2", "--heldout-n", "8", "--steps", "1", "--eval-every", "0",
        "--set", "batch_size=8", "--set", "extra=0", "--set", "mini_batch_size=8",
        "--concurrency", "8", "--quiet", "--out", str(tmp_path / "run"),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no tier has pass@1 in 20%-60%" in proc.stderr and "d3o2" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.docker
def test_continued_sft_then_an_evaluation_only_run(ci_nano: Path, tmp_path: Path) -> None:
    model = tmp_path / "continued"
    cont = subprocess.run(
        [CLI, "nano", "--ci", "--continue-from", str(ci_nano), "--wall-s", "2", "--out", str(model)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert cont.returncode == 0, cont.stderr[-3000:]
    assert json.loads(cont.stdout.strip().splitlines()[-1])["model"] == str(model)
    out = tmp_path / "run"
    proc = _train(
        "--model", str(model), "--tiers", "d1o1", "--train-per-tier", "24",
        "--heldout-n", "8", "--heldout-k", "1", "--steps", "0",
        "--concurrency", "8", "--quiet", "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= REQUIRED and result["model"] == str(model)
    assert result["steps"] == 0 and result["episodes"] == 0 and result["train_wall_s"] == 0
    assert result["offline_episodes"] == 0 and result["heldout_n"] == 8
    # "after" is the report "before", not a second evaluation.
    assert result["heldout_accuracy_after"] == result["heldout_accuracy_before"]
    assert result["heldout_avg@1_after"] == result["heldout_avg@1_before"]
    assert result["heldout_per_tier_after"] == result["heldout_per_tier_before"]
    assert proc.stderr.count("held-out: before: 8 problems") == 1
    assert "held-out: after" not in proc.stderr and "held-out after" not in proc.stderr
    assert "offline values: skipped" in proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0] and "loss" not in records[0]
    assert "heldout/greedy_accuracy" in records[0]
    assert not (out / "checkpoints").exists() and not (out / "curve.png").exists()
    assert json.loads((out / "result.json").read_text()) == result


def _eval(ci_nano: Path, out: Path, dataset: str) -> Path:
    """``spo-gym eval`` of the CI nano at the training sampling parameters; its offline values."""
    proc = subprocess.run(
        [
            CLI, "eval", "--model", str(ci_nano), "--env", "spo_gym/ReToolNano-v0",
            "--dataset", dataset, "-k", "2", "--temperature", "1.0", "--top-p", "1",
            "--top-k", "0", "--max-tokens", "200", "--out", str(out), "--no-progress",
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(proc.stdout.strip().splitlines()[-1])["runs"]
    return Path(run["folder"]) / "offline_values.jsonl"


@pytest.mark.docker
def test_offline_values_from_an_eval_run_start_the_tracker(ci_nano: Path, tmp_path: Path) -> None:
    values = _eval(ci_nano, tmp_path / "eval", "tiers:d1o1:24")
    common = (
        "--model", "nano-ci", "--tiers", "d1o1", "--train-per-tier", "24",
        "--heldout-n", "8", "--heldout-k", "1", "--offline-k", "2",
        "--steps", "1", "--eval-every", "0",
        "--set", "batch_size=8", "--set", "extra=2", "--set", "mini_batch_size=8",
        "--concurrency", "8", "--quiet",
    )  # fmt: skip
    proc = _train(*common, "--offline-values", str(values), "--out", str(tmp_path / "run"),
                  timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"samples read from {values}" in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["offline_episodes"] == 0 and result["steps"] == 1
    # a file of other prompts is a one-line error naming what is missing
    other = _eval(ci_nano, tmp_path / "other", "tiers:d2o1:4")
    proc = _train(*common, "--offline-values", str(other), "--out", str(tmp_path / "bad"),
                  timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "has no sample for" in proc.stderr and "Traceback" not in proc.stderr
