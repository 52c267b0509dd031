"""Continued SFT of a warm start for a wall-time budget: it trains (weights move, the held-out
trace loss does not rise), stops at the first step past the budget, is deterministic for a
seed, writes a complete nano folder atomically, and ``spo-gym nano --continue-from``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from agents.hf_policy import HFPolicy
from agents.nano import CI_CONFIG, DEFAULT_CONFIG, NanoConfig, save_nano
from spo_core.learner.sft import CI_RECIPE, DEFAULT_RECIPE, RECIPE_FILE, load_recipe, load_report
from spo_core.learner.sft_continue import SFTContinueError, continue_sft
from spo_gym.cli import app


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_the_final_learning_rate_is_where_the_warm_start_schedule_ends() -> None:
    for recipe in (CI_RECIPE, DEFAULT_RECIPE):
        assert recipe.final_lr == pytest.approx(0.1 * recipe.lr)
        assert recipe.lr_at(recipe.max_steps - 1) > recipe.final_lr
        assert recipe.lr_at(recipe.warmup_steps - 1) == pytest.approx(recipe.lr)


def test_continuing_trains_for_the_wall_budget_and_writes_a_nano_folder(
    ci_nano: Path, tmp_path: Path
) -> None:
    out = tmp_path / "continued"
    lines: list[str] = []
    t0 = time.monotonic()
    report = continue_sft(
        ci_nano, CI_RECIPE, 0, wall_s=3.0, out=out, num_threads=1, progress=lines.append
    )
    total = time.monotonic() - t0
    # The clock is read between steps: at least the budget, at most one step (~0.1 s) more.
    assert report.stopped == "wall" and report.steps >= 5
    assert 3.0 <= report.train_s < 3.0 + 1.0
    assert total < 3.0 + 15.0  # loading, traces, two held-out passes and the save
    before, after = report.heldout_loss[0], report.heldout_loss[-1]
    assert before[0] == 0 and after[0] == report.steps
    # The same held-out traces as the warm start's own last measurement, and no worse after.
    assert before[1] == pytest.approx(load_report(ci_nano).heldout_loss[-1][1], rel=1e-4)
    assert after[1] <= before[1]
    old, new = _weights(ci_nano), _weights(out)
    assert old.keys() == new.keys() and not all(torch.equal(old[k], new[k]) for k in old)
    # The warm start's layout, and a report that says where it came from.
    assert {p.name for p in out.iterdir()} == {p.name for p in ci_nano.iterdir()}
    assert NanoConfig.from_dict(json.loads((out / "nano.json").read_text())) == CI_CONFIG
    saved = load_report(out)
    assert saved == report and saved.continued is not None
    assert saved.continued.source == str(ci_nano.resolve()) and saved.continued.seed == 0
    assert saved.continued.lr == pytest.approx(0.1 * CI_RECIPE.lr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left
    policy = HFPolicy.from_pretrained(out, num_threads=1)
    assert policy.max_context_tokens == CI_CONFIG.context
    assert lines and "held-out loss" in lines[-1]


def test_continuing_is_deterministic_for_a_seed(ci_nano: Path, tmp_path: Path) -> None:
    def run(seed: int, name: str) -> dict[str, torch.Tensor]:
        report = continue_sft(
            ci_nano, CI_RECIPE, seed, wall_s=60.0, out=tmp_path / name, max_steps=3, num_threads=1
        )
        assert report.stopped == "max_steps" and report.steps == 3
        return _weights(tmp_path / name)

    a, b, c = run(1, "a"), run(1, "b"), run(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # another seed, another batch order


def test_an_empty_out_folder_is_replaced(ci_nano: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    continue_sft(ci_nano, CI_RECIPE, 0, wall_s=60.0, out=out, max_steps=1, num_threads=1)
    assert (out / "sft.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not-nano", "is not a nano model folder"),
        ("wall-zero", "wall-time budget must be > 0"),
        ("wall-nan", "wall-time budget must be > 0"),
        ("max-steps", "max_steps must be >= 1"),
        ("out-full", "exists and is not an empty folder"),
        ("no-weights", "cannot load the nano model"),
    ],
)
def test_bad_continuations_are_refused(
    ci_nano: Path, tmp_path: Path, case: str, message: str
) -> None:
    folder, wall, max_steps, out = ci_nano, 1.0, None, tmp_path / "out"
    if case == "not-nano":
        folder = tmp_path
    elif case == "wall-zero":
        wall = 0.0
    elif case == "wall-nan":
        wall = float("nan")
    elif case == "max-steps":
        max_steps = 0
    elif case == "out-full":
        out.mkdir()
        (out / "x").write_text("x")
    else:
        folder = tmp_path / "broken"
        folder.mkdir()
        for name in ("nano.json", "config.json", "tokenizer.json", "tokenizer_config.json"):
            (folder / name).write_bytes((ci_nano / name).read_bytes())
    with pytest.raises(SFTContinueError, match=message) as caught:
        continue_sft(folder, CI_RECIPE, 0, wall_s=wall, out=out, max_steps=max_steps)
    assert "\n" not in str(caught.value)
    assert case == "out-full" or not out.exists()


def test_cli_continues_a_warm_start(ci_nano: Path, tmp_path: Path) -> None:
    out = tmp_path / "continued"
    args = ["nano", "--ci", "--continue-from", str(ci_nano), "--wall-s", "1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--seed", "3", "--threads", "1"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["model"] == str(out) and figures["continued_from"] == str(ci_nano)
    assert figures["stopped"] == "wall" and figures["steps"] >= 1 and figures["seed"] == 3
    assert figures["train_s"] >= 1.0 and figures["lr"] == pytest.approx(0.1 * CI_RECIPE.lr)
    assert figures["heldout_loss_after"] <= figures["heldout_loss_before"]
    assert load_report(out).steps == figures["steps"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--continue-from", "{tmp}/nowhere", "--wall-s", "1", "--out", "{tmp}/o"], "not a nano"),
        (["--continue-from", "{tmp}", "--wall-s", "1", "--out", "{tmp}/o"], "not a nano"),
        (["--continue-from", "{nano}", "--wall-s", "0", "--out", "{tmp}/o"], "--wall-s must be >"),
        (["--continue-from", "{nano}", "--wall-s", "-2", "--out", "{tmp}/o"], "--wall-s must be"),
        (["--continue-from", "{nano}", "--out", "{tmp}/o"], "--wall-s must be > 0"),
        (["--continue-from", "{nano}", "--wall-s", "1"], "needs --out"),
        (["--continue-from", "{nano}", "--wall-s", "1", "--out", "{tmp}"], "not an empty folder"),
        (["--wall-s", "1"], "--wall-s goes with --continue-from"),
    ],
)
def test_cli_continue_errors_are_one_line(
    ci_nano: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    filled = [a.format(tmp=tmp_path, nano=ci_nano) for a in args]
    result = CliRunner().invoke(app, ["nano", "--ci", *filled])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cli_continues_a_nano_with_the_recipe_it_was_built_with(
    ci_nano: Path, tmp_path: Path
) -> None:
    # A folder that names its recipe continues with it, and the new folder names it too.
    assert load_recipe(ci_nano) == (CI_RECIPE, 0)
    out = tmp_path / "named"
    args = ["--continue-from", str(ci_nano), "--wall-s", "1", "--out", str(out), "--threads", "1"]
    result = CliRunner().invoke(app, ["nano", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["recipe"] == CI_RECIPE.to_dict()
    assert load_recipe(out) == (CI_RECIPE, 0)
    # A folder that names none: the CI nano takes --ci, any other nano does not.
    bare = tmp_path / "bare"
    shutil.copytree(ci_nano, bare)
    (bare / RECIPE_FILE).unlink()
    default = save_nano(tmp_path / "default", DEFAULT_CONFIG)
    for folder, flags, message in (
        (bare, [], "add --ci"),
        (default, ["--ci"], "not the CI nano: drop --ci"),
    ):
        args = ["--continue-from", str(folder), "--wall-s", "1", "--out", str(tmp_path / "o")]
        result = CliRunner().invoke(app, ["nano", *flags, *args])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]
        assert not (tmp_path / "o").exists()
