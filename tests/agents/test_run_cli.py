"""`spo-gym run`: the ReTool agent with the embedded model, end to end, and its input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(ROOT / ".venv" / "bin" / "spo-gym")


def test_dataset_row_without_answer_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    proc = subprocess.run(
        [CLI, "run", "--data", str(data)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "tasks.jsonl" in proc.stderr and "row 2" in proc.stderr and "answer" in proc.stderr


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [CLI, "run", "-n", "1", "--model", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "cannot resolve model" in proc.stderr


def test_env_without_a_task_source_or_option_is_a_clear_error(tmp_path: Path) -> None:
    plugin = tmp_path / "bare_env.py"
    plugin.write_text(
        "from envs import Score, ToolEnv\n"
        "class BareEnv(ToolEnv):\n"
        "    async def score(self, episode):\n"
        "        return Score(0.0)\n"
    )
    register = (
        "import sys, envs\n"
        "from spo_gym.cli import main\n"
        "envs.register('bare/Bare-v0', 'bare_env:BareEnv')\n"
        "sys.argv = ['spo-gym', 'run', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for args, expected in (
        (["--env", "bare/Bare-v0"], "declares no task source"),
        (["--env", "bare/Bare-v0", "--demonstrations", "2"], "does not take --demonstrations"),
        (["--env", "nope/Nope-v0"], "no env 'nope/Nope-v0' is registered"),
        (["--env", "Nope"], "must look like namespace/Name-vN"),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", register, *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-2000:]
        assert expected in lines[0]


@pytest.mark.docker
@pytest.mark.slow
def test_run_a_third_party_env_with_its_own_tasks(
    tmp_path: Path, smollm2_dir: Path, calculator_site: Path
) -> None:
    out = tmp_path / "run.jsonl"
    cmd = [CLI, "run", "--env", "calculator/Calculator-v0", "-n", "2", "-c", "2",
           "--max-tokens", "40", "--max-turns", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(calculator_site)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(not row["masked"] for row in rows)
    # The env's own task source (warehouse word problems), not the built-in arithmetic.
    assert {row["data_source"] for row in rows} == {"calculator"}
    assert all(sum(row["response_mask"]) > 0 for row in rows)


@pytest.mark.docker
@pytest.mark.slow
def test_run_with_the_embedded_model(tmp_path: Path, smollm2_dir: Path) -> None:
    out = tmp_path / "run.jsonl"
    cmd = [
        CLI,
        "run",
        "-n",
        "2",
        "-c",
        "2",
        "--max-tokens",
        "48",
        "--max-turns",
        "2",
        "--digits",
        "2",
        "--operations",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "accuracy" in proc.stderr and "tool-use rate" in proc.stderr and "time split" in proc.stderr
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["masked"] is False
        assert (
            len(row["response_ids"]) == len(row["response_mask"]) == len(row["response_logprobs"])
        )
        assert sum(row["response_mask"]) > 0
        assert row["termination_reason"] in {
            "answered",
            "no_tool_call",
            "max_turns",
            "token_budget",
        }
