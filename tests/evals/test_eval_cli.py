"""``spo-gym eval``: bad input is a one-line error; comparisons; re-grading from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spo_gym.cli import app

SCRIPTED = "agents.scripted_policy:arithmetic_policy"
COMMON = ["--temperature", "1.0", "--max-tokens", "128", "--max-turns", "3", "--no-progress"]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.stdout, result.stderr


def test_a_missing_dataset_file_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = _invoke("--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path))
    assert code == 2 and "nope.jsonl does not exist" in err


def test_a_dataset_row_without_an_answer_names_the_row(tmp_path: Path) -> None:
    data = tmp_path / "tasks.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?"}\n')
    out = tmp_path / "out"
    code, _, err = _invoke("--dataset", str(data), "--policy-factory", SCRIPTED, "--out", str(out))
    assert code == 2 and "row 2" in err and "answer" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "aime-2024"], "unknown dataset 'aime-2024'"),
        (["--dataset", "tiers:d9x"], "bad tier name"),
        (["--dataset", "tiers:d1o1:0"], "bad task count"),
        (["--dataset", "tiers:d1o1", "--env-options", "[1]"], "must be a JSON object"),
        (["--dataset", "tiers:d1o1", "--env-options", "{"], "not JSON"),
        (["--dataset", "tiers:d1o1", "--policy-factory", "nocolon"], "module:callable"),
        (["--dataset", "tiers:d1o1", "--top-p", "0"], "top_p"),
        ([], "--dataset is required"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], message: str, tmp_path: Path) -> None:
    code, out, err = _invoke(*args, "--out", str(tmp_path))
    assert code == 2, err
    assert message in err and "Traceback" not in err and out == ""


def test_an_unimportable_factory_is_a_clear_error(tmp_path: Path) -> None:
    code, _, err = _invoke(
        "--dataset", "tiers:d1o1:2", "--policy-factory", "no_such_module:make",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 2 and "cannot import policy factory 'no_such_module:make'" in err


@pytest.mark.docker
def test_two_policies_side_by_side_with_a_paired_comparison_then_regrade(tmp_path: Path) -> None:
    code, out, err = _invoke(
        "--dataset", "tiers:d2o1,d2o2:4", "-k", "4", *COMMON, "--out", str(tmp_path),
        "--policy-factory", SCRIPTED, "--policy-factory", "tests.evals.policies:weaker",
    )  # fmt: skip
    assert code == 0, err
    figures = json.loads(out.strip().splitlines()[-1])
    strong, weak = figures["runs"]
    assert strong["avg@4"] > weak["avg@4"]
    (pair,) = figures["comparison"]["pairs"]
    assert pair["difference"] == pytest.approx(weak["avg@4"] - strong["avg@4"])
    assert pair["ci"][0] <= pair["difference"] <= pair["ci"][1]
    folder = Path(figures["comparison"]["folder"])
    assert (folder / "pass_at_k.png").stat().st_size > 0
    assert "paired bootstrap" in (folder / "comparison.md").read_text()
    assert "side by side" in err
    # re-grading a run from the CLI: nothing changes with the same grader
    code, out, err = _invoke("--regrade", strong["folder"])
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["checked"] == 32 and report["changed"] == []
    assert report["avg@4"] == pytest.approx(strong["avg@4"])


def test_regrade_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    code, _, err = _invoke("--regrade", str(tmp_path))
    assert code == 2 and "is not an eval run" in err
