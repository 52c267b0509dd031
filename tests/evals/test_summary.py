"""Summaries from stored samples: voting over equivalent answers, lost samples, k slices."""

from __future__ import annotations

import pytest

from envs.grading import Grader
from envs.tasks import Task
from evals.sample import EvalSample, Lost
from evals.summary import k_values, summarize


@pytest.fixture(scope="module")
def grader() -> Grader:
    with Grader() as g:
        yield g


def _sample(key: str, index: int, answer: str | None, correct: bool, **kw: object) -> EvalSample:
    return EvalSample(
        problem_key=key,
        sample_index=index,
        answer=answer,
        correct=correct,
        reward=float(correct),
        score_status="ok" if answer is not None else "no_answer",
        grade_detail="",
        termination_reason="answered",
        turns=2,
        tool_calls=kw.pop("tool_calls", 1),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def _samples(*rows: EvalSample) -> dict[str, EvalSample]:
    return {s.id: s for s in rows}


def test_k_values() -> None:
    assert k_values(1) == [1]
    assert k_values(8) == [1, 2, 4, 8]
    assert k_values(6) == [1, 2, 4, 6]


def test_votes_count_equivalent_but_different_strings_as_one_answer(grader: Grader) -> None:
    task = Task.create("What is one half?", "1/2", "t")
    # the right answer written three ways outvotes a wrong answer written one way twice
    samples = _samples(
        _sample(task.key, 0, "3", False),
        _sample(task.key, 1, "1/2", True),
        _sample(task.key, 2, "0.5", True),
        _sample(task.key, 3, "3", False),
        _sample(task.key, 4, r"\frac{1}{2}", True),
    )
    summary = summarize("r", [task], samples, {}, 5, grader=grader)
    (problem,) = summary.per_problem
    assert problem.classes == 2
    assert problem.majority == "1/2" and problem.majority_correct
    assert summary.point("maj", 5).value == 1.0  # type: ignore[union-attr]
    # exact strings alone would split the right answer three ways and elect "3"
    assert summary.point("pass", 1).value == pytest.approx(3 / 5)  # type: ignore[union-attr]


def test_lost_samples_are_in_no_denominator(grader: Grader) -> None:
    a = Task.create("problem a", "7", "t")
    b = Task.create("problem b", "8", "t")
    samples = _samples(
        _sample(a.key, 0, "7", True),
        _sample(a.key, 1, "6", False),
        _sample(a.key, 2, "7", True),
        _sample(a.key, 3, "5", False),
        _sample(b.key, 0, "8", True),
        _sample(b.key, 2, "8", True),
    )
    lost = {
        "x": Lost(b.key, 1, 3, "masked: sandbox unavailable"),
        "y": Lost(b.key, 3, 3, "masked: sandbox unavailable"),
    }
    summary = summarize("r", [a, b], samples, lost, 4, grader=grader)
    assert summary.samples == 6 and summary.lost == 2
    assert summary.lost_reasons == {"masked": 2}
    rows = {p.key: p for p in summary.per_problem}
    assert (rows[b.key].n, rows[b.key].correct, rows[b.key].lost) == (2, 2, 2)
    # avg@4 is the mean of per-problem rates: (2/4 + 2/2) / 2 — b's lost samples are not wrong
    assert summary.avg.value == pytest.approx(0.75)
    # pass@4 is over the problem that has 4 finished samples only, and says so
    pass4 = summary.point("pass", 4)
    assert pass4 is not None and pass4.problems == 1 and pass4.value == 1.0
    assert summary.point("pass", 2).problems == 2  # type: ignore[union-attr]


def test_only_the_first_k_samples_count(grader: Grader) -> None:
    task = Task.create("problem", "1", "t")
    samples = _samples(
        _sample(task.key, 0, "1", True),
        _sample(task.key, 1, "2", False),
        _sample(task.key, 2, "2", False),
        _sample(task.key, 3, "2", False),
    )
    two = summarize("r", [task], samples, {}, 2, grader=grader)
    assert two.samples == 2 and two.avg.value == 0.5
    four = summarize("r", [task], samples, {}, 4, grader=grader)
    assert four.samples == 4 and four.avg.value == 0.25
    assert four.point("maj", 4).value == 0.0  # type: ignore[union-attr]


def test_tool_use_time_and_endings(grader: Grader) -> None:
    task = Task.create("problem", "1", "t")
    samples = _samples(
        _sample(task.key, 0, "1", True, tool_calls=2, tool_statuses=["ok", "error"], llm_s=1.0),
        _sample(task.key, 1, None, False, tool_calls=0, llm_s=2.0, sandbox_s=0.5),
    )
    summary = summarize("r", [task], samples, {}, 2, grader=grader)
    assert summary.tool_use["share_with_code"] == 0.5
    assert summary.tool_use["cell_status"] == {"ok": 1, "error": 1}
    assert summary.tool_use["accuracy_with_code"] == 1.0
    assert summary.tool_use["accuracy_without_code"] == 0.0
    assert summary.time_s["llm"] == pytest.approx(3.0)
    assert summary.score_status == {"ok": 1, "no_answer": 1}
    assert summary.per_problem[0].no_answer == 1
    data = summary.to_dict()
    assert data["per_problem"][0]["rate"] == 0.5
