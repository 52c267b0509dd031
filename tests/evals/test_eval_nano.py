"""``spo-gym eval`` of a real model: the CI nano model on the built-in task family, k = 8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evals.job import CURVE_PNG, OFFLINE_VALUES, SUMMARY_JSON, SUMMARY_MD
from spo_core import read_offline_jsonl
from spo_gym.cli import app

pytestmark = pytest.mark.docker


def test_nano_eval_on_the_builtin_family_writes_every_output(ci_nano: Path, tmp_path: Path) -> None:
    args = [
        "eval", "--model", str(ci_nano), "--env", "spo_gym/ReToolNano-v0",
        "--dataset", "tiers:d1o1,d2o1:4", "-k", "8", "--temperature", "1.0", "--top-p", "1",
        "--top-k", "0", "--max-tokens", "200", "--out", str(tmp_path), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    assert (run["problems"], run["samples"], run["lost"], run["played"]) == (8, 64, 0, 64)
    folder = Path(run["folder"])
    for name in (SUMMARY_JSON, SUMMARY_MD, CURVE_PNG, OFFLINE_VALUES):
        assert (folder / name).stat().st_size > 0, name
    summary = json.loads((folder / SUMMARY_JSON).read_text())
    pass_at = [p["value"] for p in summary["pass_at"]]
    assert pass_at == sorted(pass_at)  # pass@k never falls as k grows
    assert summary["tool_use"]["share_with_code"] > 0  # the warm start writes code cells
    scores = read_offline_jsonl(folder / OFFLINE_VALUES)
    assert len(scores.keys) == 8 and scores.counts.tolist() == [8] * 8
