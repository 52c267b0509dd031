"""``spo-gym data prepare``: verl parquet that verl's own RLHFDataset loads, keyed like
``spo-gym eval``; bad rows and an unreachable hub are one-line errors that write nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from evals.datasets import load_dataset
from spo_core.verl.data import (
    SCHEMA,
    DataPrepareError,
    hub_unreachable_reason,
    parse_source,
    prepare,
)
from spo_core.verl.fields import AGENT_NAME, PROMPT_KEY
from spo_gym.cli import app

ROOT = Path(__file__).resolve().parents[3]
# ../shared/data beside the checkout (or beside the folder of worktrees).
AIME24 = next(
    p / "shared" / "data" / "aime24.jsonl"
    for p in ROOT.parents
    if (p / "shared" / "data" / "aime24.jsonl").is_file()
)
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("verl-data")
    files = prepare(
        [parse_source(f"aime24={AIME24}"), parse_source("tiers:d2o1,d3o1:8")],
        out,
        heldout_per_tier=4,
    )
    return {f.path.stem: f.path for f in files}


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_files_splits_and_the_exact_schema(prepared: dict[str, Path]) -> None:
    assert sorted(prepared) == ["aime24", "tiers-d2o1-d3o1-test", "tiers-d2o1-d3o1-train"]
    for path in prepared.values():
        assert pq.read_schema(path).names == SCHEMA.names == [
            "data_source", "prompt", "ability", "reward_model", "agent_name", PROMPT_KEY,
            "extra_info",
        ]  # fmt: skip
    aime = _rows(prepared["aime24"])
    assert len(aime) == 30
    first = json.loads(AIME24.read_text().splitlines()[0])
    row = aime[0]
    assert row["prompt"] == [{"role": "user", "content": first["input"]}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": first["output"]}
    assert (row["data_source"], row["ability"], row["agent_name"]) == ("aime24", "math", AGENT_NAME)
    assert row["extra_info"] == {
        "index": 0, "question": first["input"], "answer": first["output"], "env": "retool",
        "split": "test",
    }  # fmt: skip
    assert [r["extra_info"]["index"] for r in aime] == list(range(30))
    train, test = _rows(prepared["tiers-d2o1-d3o1-train"]), _rows(prepared["tiers-d2o1-d3o1-test"])
    assert (len(train), len(test)) == (16, 8)
    assert {r["extra_info"]["split"] for r in train} == {"train"}
    assert {r["extra_info"]["split"] for r in test} == {"test"}
    # the held-out file shares no problem with the training file
    assert not {r[PROMPT_KEY] for r in train} & {r[PROMPT_KEY] for r in test}


def test_prompt_keys_are_the_keys_spo_gym_eval_gives_the_same_problems(
    prepared: dict[str, Path],
) -> None:
    # `spo-gym eval` keys its offline_values.jsonl by these keys: the source file, the parquet
    # and the built-in family's own spec all name each problem the same.
    aime_keys = [r[PROMPT_KEY] for r in _rows(prepared["aime24"])]
    assert aime_keys == [t.key for t in load_dataset(str(AIME24)).tasks]
    assert aime_keys == [t.key for t in load_dataset(str(prepared["aime24"])).tasks]
    train_keys = [r[PROMPT_KEY] for r in _rows(prepared["tiers-d2o1-d3o1-train"])]
    assert train_keys == [t.key for t in load_dataset("tiers:d2o1,d3o1:8").tasks]
    assert train_keys == [t.key for t in load_dataset(str(prepared["tiers-d2o1-d3o1-train"])).tasks]


def test_verls_rlhf_dataset_loads_the_files(prepared: dict[str, Path], tmp_path: Path) -> None:
    from omegaconf import open_dict
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from agents.nano.tokenizer import save_tokenizer
    from spo_core.verl.launch import compose_config

    save_tokenizer(tmp_path / "tok")  # the nano model's real tokenizer, chat template included
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    config = compose_config("spo_smoke", ["actor_rollout_ref.model.path=/unused"])
    with open_dict(config):
        config.data.cache_dir = str(tmp_path / "cache")  # verl copies the files there
    data_config = config.data
    files = [str(prepared["aime24"]), str(prepared["tiers-d2o1-d3o1-train"])]
    dataset = RLHFDataset(files, tokenizer, data_config)  # filters overlong prompts with it
    assert len(dataset) == 30 + 16
    item = dataset[0]
    row = _rows(prepared["aime24"])[0]
    assert item["raw_prompt"] == row["prompt"]
    assert item[PROMPT_KEY] == row[PROMPT_KEY] and item["agent_name"] == AGENT_NAME
    assert item["index"] == 0 and item["extra_info"]["split"] == "test"
    assert item["reward_model"]["ground_truth"] == row["reward_model"]["ground_truth"]
    batch = collate_fn([dataset[i] for i in (0, 30)])  # what the trainer's dataloader yields
    assert list(batch[PROMPT_KEY]) == [
        row[PROMPT_KEY],
        _rows(prepared["tiers-d2o1-d3o1-train"])[0][PROMPT_KEY],
    ]
    assert list(batch["data_source"]) == ["aime24", "spo_gym/arithmetic"]


def test_a_row_without_an_answer_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "1+1?", "output": "2"}\n{"input": "2+2?"}\n', encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataPrepareError) as caught:
        # the good source first: nothing of it may be written either
        prepare([parse_source("tiers:d2o1:4"), parse_source(str(bad))], out)
    message = str(caught.value)
    assert f"{bad}, row 2, field 'answer'" in message and "\n" not in message
    assert not out.exists() or not any(out.iterdir())
    result = CliRunner().invoke(app, ["data", "prepare", f"x={bad}", "--out", str(out)])
    assert result.exit_code == 2
    assert "row 2" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_file_is_replaced_whole(tmp_path: Path) -> None:
    (first,) = prepare([parse_source(f"aime24={AIME24}")], tmp_path)
    (again,) = prepare([parse_source(f"aime24={AIME24}")], tmp_path)
    assert first.path == again.path and len(_rows(again.path)) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aime24.parquet"]  # no temp left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tiers:d9x", "bad tier name"),
        ("nothing", "unknown source 'nothing'"),
        ("a/b=/x.jsonl", "plain NAME"),
    ],
)
def test_bad_sources_are_one_line(text: str, message: str) -> None:
    with pytest.raises(DataPrepareError, match=message):
        parse_source(text)


def test_two_sources_for_one_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataPrepareError, match=r"both write aime24\.parquet"):
        prepare([parse_source(f"aime24={AIME24}"), parse_source(str(AIME24))], tmp_path)


def test_hub_names_fail_fast_without_the_hub(tmp_path: Path) -> None:
    env_closed = {"HF_ENDPOINT": CLOSED_PORT, "PYTHONPATH": str(ROOT)}
    cli = str(Path(sys.executable).with_name("spo-gym"))
    started = time.monotonic()
    proc = subprocess.run(
        [cli, "data", "prepare", "aime24", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_base_env(), **env_closed},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not reachable" in lines[0]
    assert "aime24=/path/to/file.jsonl" in lines[0] and "Maxwell-Jia/AIME_2024" in lines[0]
    assert time.monotonic() - started < 30  # the interpreter's start-up included
    assert not any(tmp_path.iterdir())


def test_the_hub_probe_is_bounded_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        reason = hub_unreachable_reason("org/set", timeout_s=0.5)
        assert reason is not None and time.monotonic() - started < 2.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable_reason("org/set") == "HF_HUB_OFFLINE is set"
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "127.0.0.1:9" in (hub_unreachable_reason("org/set") or "")


def test_the_paper_flag_names_every_hub_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    result = CliRunner().invoke(app, ["data", "prepare", "--paper", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "dapo_math_17k" in result.stderr  # the first one fails
    result = CliRunner().invoke(app, ["data", "prepare", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nothing to prepare" in result.stderr


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}


@pytest.mark.docker
def test_an_eval_of_a_prepared_file_keys_its_offline_values_by_prompt_key(tmp_path: Path) -> None:
    from evals.job import OFFLINE_VALUES
    from spo_core import read_offline_jsonl

    (train,) = prepare([parse_source("tiers:d2o1:3")], tmp_path / "data", heldout_per_tier=0)
    args = [
        "eval", "--dataset", str(train.path), "-k", "2",
        "--policy-factory", "agents.scripted_policy:arithmetic_policy", "--temperature", "1.0",
        "--max-tokens", "128", "--max-turns", "3", "--no-progress", "--out", str(tmp_path / "runs"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    (run,) = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    scores = read_offline_jsonl(Path(run["folder"]) / OFFLINE_VALUES)
    assert sorted(scores.keys) == sorted(r[PROMPT_KEY] for r in _rows(train.path))
    assert scores.counts.tolist() == [2, 2, 2]
