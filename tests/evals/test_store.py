"""A run's files: torn tails, duplicate lines, corrupt lines, the writer lock, problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.tasks import ChatMessage, Task
from evals.sample import EvalSample, Lost
from evals.store import LOST, SAMPLES, RunCorrupt, RunLocked, RunStore


def _sample(index: int, correct: bool = True) -> EvalSample:
    return EvalSample(
        problem_key="p",
        sample_index=index,
        answer="1",
        correct=correct,
        reward=float(correct),
        score_status="ok",
        grade_detail="",
        termination_reason="answered",
        turns=1,
        tool_calls=0,
    )


def test_a_torn_last_line_is_ignored_and_cut_before_appending(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.lock(), store.appender() as log:
        log.append(_sample(0).to_dict())
        log.append(_sample(1).to_dict())
    path = store.path(SAMPLES)
    whole = path.read_bytes()
    torn = json.dumps(_sample(2).to_dict()).encode()[:37]  # killed mid-write
    path.write_bytes(whole + torn)
    assert sorted(store.samples()) == ["p#0", "p#1"]
    with store.appender() as log:  # the next session appends after a clean cut
        log.append(_sample(2).to_dict())
    assert path.read_bytes() == whole + (json.dumps(_sample(2).to_dict()) + "\n").encode()
    assert sorted(store.samples()) == ["p#0", "p#1", "p#2"]


def test_the_first_line_of_a_sample_id_wins(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.appender() as log:
        log.append(_sample(0, correct=True).to_dict())
        log.append(_sample(0, correct=False).to_dict())
    (only,) = store.samples().values()
    assert only.correct


def test_a_corrupt_line_inside_the_log_is_an_error_naming_it(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.folder.mkdir()
    good = json.dumps(_sample(0).to_dict())
    store.path(SAMPLES).write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(RunCorrupt, match=r"samples.jsonl:2"):
        store.samples()
    store.path(SAMPLES).write_text('{"id": "p#0", "problem_key": "p"}\n')
    with pytest.raises(RunCorrupt, match=r"samples.jsonl:1: not an eval sample"):
        store.samples()


def test_finished_samples_clear_their_losses(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.appender(LOST) as lost:
        lost.append(Lost("p", 0, 3, "masked: no sandbox").to_dict())
        lost.append(Lost("p", 1, 3, "masked: no sandbox").to_dict())
    with store.appender() as log:
        log.append(_sample(0).to_dict())
    assert list(store.lost()) == ["p#1"]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    with store.lock(), pytest.raises(RunLocked), RunStore(tmp_path / "run").lock():
        pass
    with store.lock():  # released
        pass


def test_problems_round_trip(tmp_path: Path) -> None:
    tasks = [
        Task.create("What is 1 + 1?", "2", "src", {"level": 3}, answer_order="ordered"),
        Task.create((ChatMessage("system", "Be brief."), ChatMessage("user", "2 + 2?")), "4", "s"),
    ]
    store = RunStore(tmp_path / "run")
    store.create({"anything": 1}, tasks)
    assert store.problems() == tasks
    assert store.manifest()["identity"] == {"anything": 1}
    store.add_session({"k": 4})
    assert store.manifest()["sessions"] == [{"k": 4}]
