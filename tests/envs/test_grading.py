"""Grading: the labelled set, the grader's infrastructure failures, list order, timeouts, the
boxed extractor, voting, pass@k and the CLI."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from envs import Episode, ReToolEnv, ScoreUnavailable, Task
from envs.grading import (
    WALL_FACTOR,
    Grader,
    GradeResult,
    equivalence_classes,
    extract_boxed,
    majority_vote,
    normalize_answer,
    pass_at_k,
)
from spo_gym.cli import app

CASES_FILE = Path(__file__).resolve().parents[1] / "data" / "grading_cases.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text(encoding="utf-8").splitlines()]
REGULAR = [c for c in CASES if not c.get("pathological")]
PATHOLOGICAL = [c for c in CASES if c.get("pathological")]
# Classes of answers graders commonly get wrong: every case of these must be graded right.
NAMED_CLASSES = (
    "percent", "thousands", "trailing_backslash", "font", "prime", "ellipsis", "list_order",
    "prose", "comma_decimal", "comma_list",
)  # fmt: skip


def grade_cases(grader: Grader, cases: list[dict[str, Any]]) -> list[GradeResult]:
    """Grade labelled cases as ``spo-gym grade --cases`` does: raw ones as answers, with each
    case's answer_order."""
    results: dict[int, GradeResult] = {}
    for raw in (True, False):
        indices = [i for i, c in enumerate(cases) if bool(c.get("raw")) == raw]
        requests = [
            (cases[i]["gold"], cases[i]["pred"], cases[i].get("answer_order", "notation"))
            for i in indices
        ]
        results.update(zip(indices, grader.grade_many(requests, extract=not raw), strict=True))
    return [results[i] for i in range(len(cases))]


def worker_processes(besides: set[int] = frozenset()) -> list[psutil.Process]:  # type: ignore[assignment]
    """This process's grader workers (but ``besides``), found the way an operator would: by
    command line."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.pid not in besides and "spo_gym_grading_worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def worker_pids() -> set[int]:
    return {p.pid for p in worker_processes()}


@pytest.fixture(scope="module")
def grader():
    # A generous deadline: the machine is shared, and these cases are not the timeout tests.
    with Grader(workers=2, timeout=20.0) as g:
        yield g


# --------------------------------------------------------------------------- labelled set


def test_labelled_set_covers_the_required_kinds():
    assert len(CASES) >= 150
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert all(c["source"].strip() for c in CASES)
    assert all(isinstance(c["expected_equal"], bool) for c in CASES)
    kinds = Counter(c["category"] for c in CASES)
    for kind in (
        "integer", "fraction", "decimal", "thousands", "latex", "interval", "set", "tuple",
        "matrix", "units", "percent", "degrees", "multiple_boxes", "no_box", "nested_braces",
        "pathological", *NAMED_CLASSES,
    ):  # fmt: skip
        assert kinds[kind] >= 3, kind
    for kind in NAMED_CLASSES:  # each class has cases both ways
        assert {c["expected_equal"] for c in CASES if c["category"] == kind} == {True, False}
    assert Counter(c["expected_equal"] for c in CASES)[False] >= 50
    assert {c.get("answer_order", "notation") for c in CASES} == {
        "notation",
        "ordered",
        "unordered",
    }


def test_labelled_set_accuracy(grader):
    results = grade_cases(grader, REGULAR)
    wrong = [
        c["id"] for c, r in zip(REGULAR, results, strict=True) if r.correct != c["expected_equal"]
    ]
    assert 1 - len(wrong) / len(REGULAR) >= 0.97, wrong
    assert not [r for r in results if r.status in ("timeout", "error", "unavailable")]
    # every step of the cascade decides some cases
    assert {r.method for r in results} >= {"string", "numeric", "math_verify", "none"}
    no_box = [r for c, r in zip(REGULAR, results, strict=True) if c["category"] == "no_box"]
    assert all(r.status == "no_answer" and not r.correct for r in no_box)


@pytest.mark.parametrize("kind", NAMED_CLASSES)
def test_named_error_classes_are_graded_right(grader, kind):
    cases = [c for c in REGULAR if c["category"] == kind]
    results = grade_cases(grader, cases)
    wrong = [
        (c["gold"], c["pred"], r.correct)
        for c, r in zip(cases, results, strict=True)
        if r.correct != c["expected_equal"]
    ]
    assert not wrong


def test_pathological_inputs_time_out_and_the_grader_recovers():
    with Grader(workers=2, timeout=0.5) as g:
        results = g.grade_many([(c["gold"], c["pred"]) for c in PATHOLOGICAL])
        assert [r.status for r in results] == ["timeout"] * len(PATHOLOGICAL)
        assert not any(r.correct for r in results)
        assert g.grade("\\sqrt{2}", "\\boxed{2^{1/2}}") == GradeResult(
            True, "math_verify", "ok", "answer '2^{1/2}'"
        )


def test_a_timeout_comes_back_within_its_bound():
    with Grader(workers=1, timeout=1.0) as g:
        assert g.grade("\\sqrt{2}", "\\boxed{2^{1/2}}").correct  # a live worker: not timed
        start = time.monotonic()
        verdict = g.grade("5", "\\boxed{9^{9^{9^{9}}}}")
        elapsed = time.monotonic() - start
    # The answer uses its whole CPU budget: the model's doing, scored, never retried away.
    assert verdict.status == "timeout"
    # Within the wall-clock backstops of the attempts a starved worker would get (3x the CPU
    # budget, doubled on each retry), plus killing the worker.
    assert 1.0 <= elapsed < WALL_FACTOR * 1.0 * (1 + 2 + 4) + 1.5


# --------------------------------------------------------------------------- grader behaviour


def test_cheap_steps_decide_without_a_worker():
    others = worker_pids()
    with Grader(workers=1, timeout=1.0) as g:
        start = time.perf_counter()
        assert g.grade("1,000", "so \\boxed{1000}").method == "string"
        assert g.grade("3/4", "\\boxed{0.75}").method == "numeric"
        verdict = g.grade("12", "\\boxed{13}")
        assert (verdict.correct, verdict.method, verdict.status) == (False, "numeric", "ok")
        verdict = g.grade("(1, 2)", "\\boxed{(2, 1)}")
        assert (verdict.correct, verdict.method) == (False, "structure")
        assert time.perf_counter() - start < 0.5
        assert g.worker_pids() == [] and worker_processes(others) == []  # no worker started


def test_statuses_for_missing_answers_and_bad_gold(grader):
    assert grader.grade("5", "no box here").status == "no_answer"
    assert grader.grade("5", "\\boxed{}").status == "no_answer"
    assert grader.grade("5", "\\boxed{5", extract=True).status == "no_answer"
    # A gold that cannot be read is not the answer's fault: no verdict, not a 0.
    bad_gold = grader.grade("  ", "\\boxed{5}")
    assert (bad_gold.correct, bad_gold.status) == (False, "unavailable")
    unreadable = grader.grade("\\frac{1}{", "\\boxed{5}")
    assert (unreadable.correct, unreadable.status) == (False, "unavailable")
    assert "gold" in unreadable.detail
    plain = grader.grade("odd", "\\boxed{even}")  # words: the string step judges them
    assert (plain.correct, plain.status) == (False, "ok")
    assert grader.grade("\\boxed{\\frac{1}{2}}", "$\\boxed{0.5}$").correct  # gold given boxed
    assert grader.grade("5", "5", extract=False).correct


def test_grading_works_off_the_main_thread_and_in_asyncio(grader):
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(grader.grade, "x^2+2x+1", "\\boxed{(x+1)^2}") for _ in range(2)]
        assert all(f.result().correct for f in futures)


async def test_agrade(grader):
    verdict = await grader.agrade("\\frac{\\pi}{3}", "\\boxed{\\pi/3}")
    assert verdict.correct and verdict.method == "math_verify"


# --------------------------------------------------------------------------- infrastructure


def test_a_worker_killed_while_idle_is_replaced_without_losing_the_answer():
    others = worker_pids()
    with Grader(workers=1, timeout=20.0) as g:
        assert g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}").correct
        (worker,) = worker_processes(others)
        worker.kill()  # the OOM killer, or an operator
        worker.wait(10)
        verdict = g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}")
        assert (verdict.correct, verdict.status) == (True, "ok"), verdict
        assert [p.pid for p in worker_processes(others)] != [worker.pid]


def _wrapper(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_worker_that_fails_to_start_once_is_retried(monkeypatch, tmp_path):
    # The interpreter exits at once on the first start (a transient failure), then works.
    marker = tmp_path / "failed-once"
    python = _wrapper(
        tmp_path,
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; echo "transient failure" >&2; exit 3; fi\n'
        f'exec "{sys.executable}" "$@"',
    )
    monkeypatch.setattr(sys, "executable", python)
    with Grader(workers=1, timeout=20.0) as g:
        verdict = g.grade("\\sqrt{2}", "\\boxed{2^{1/2}}")
    assert marker.exists()
    assert (verdict.correct, verdict.status) == (True, "ok"), verdict


def test_a_worker_that_never_starts_makes_the_grade_unavailable():
    # 40 MB of address space cannot hold sympy: every start fails for real.
    with Grader(workers=1, timeout=5.0, memory_limit_mb=40, retries=1) as g:
        start = time.monotonic()
        verdict = g.grade("\\sqrt{2}", "\\boxed{2^{1/2}}")
        assert time.monotonic() - start < 30
        assert (verdict.correct, verdict.status) == (False, "unavailable"), verdict
        assert "failed to start" in verdict.detail and "MemoryError" in verdict.detail
        assert g.grade("2", "\\boxed{2}").correct  # the inline steps need no worker


def test_a_stalled_worker_is_retried_not_graded_timeout():
    others = worker_pids()
    with Grader(workers=1, timeout=1.0) as g:
        assert g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}").correct
        (worker,) = worker_processes(others)
        worker.suspend()  # no CPU time at all: a machine too busy to run it
        start = time.monotonic()
        verdict = g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}")
        elapsed = time.monotonic() - start
        assert (verdict.correct, verdict.status) == (True, "ok"), verdict
        assert elapsed >= WALL_FACTOR * 1.0  # the backstop fired, then a fresh worker answered
        assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE


def test_a_worker_starved_of_cpu_is_not_graded_timeout():
    # Real contention: the worker, at the lowest priority, shares one CPU with busy loops.
    hog = "import os; os.nice(-5) if os.geteuid() == 0 else None\nwhile True: pass"
    others = worker_pids()
    with Grader(workers=1, timeout=0.5, retries=0) as g:
        assert g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}").correct
        (worker,) = worker_processes(others)
        cpu = sorted(os.sched_getaffinity(0))[0]
        hogs = [subprocess.Popen([sys.executable, "-c", hog]) for _ in range(3)]
        try:
            for p in [worker, *(psutil.Process(h.pid) for h in hogs)]:
                p.cpu_affinity([cpu])
            worker.nice(19)
            # sympy's simplify needs far more than the worker's share of 3x the budget
            verdict = g.grade("\\sin^2(x) + \\cos^2(x) + \\tan(x)", "\\boxed{1 + \\tan(x)}")
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    # Without retries left, the grade cannot be computed: unavailable, never a timeout (0).
    assert (verdict.correct, verdict.status) == (False, "unavailable"), verdict
    assert "CPU budget" in verdict.detail


def _kill_busy_workers(
    stop: threading.Event, limit: int, others: set[int], ready_cpu_s: float
) -> list[int]:
    """Kill each worker that has used 0.8 s of CPU more than a ready idle worker (so: one
    computing an answer, not one starting), up to ``limit`` of them."""
    killed: list[int] = []

    def run() -> None:
        while not stop.is_set() and len(killed) < limit:
            for p in worker_processes(others):
                try:
                    if p.pid not in killed and sum(p.cpu_times()[:2]) > ready_cpu_s + 0.8:
                        p.kill()
                        killed.append(p.pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)

    threading.Thread(target=run, daemon=True).start()
    return killed


def test_a_worker_killed_during_an_answer_is_retried_and_twice_is_the_answers_doing():
    answer = "\\boxed{9^{9^{9^{9}}}}"  # computes until its CPU budget is spent
    others = worker_pids()
    with Grader(workers=1, timeout=2.0) as g:
        assert g.grade("\\sqrt{8}", "\\boxed{2\\sqrt{2}}").correct
        (ready,) = worker_processes(others)
        ready_cpu_s = sum(ready.cpu_times()[:2])
        stop = threading.Event()
        killed = _kill_busy_workers(stop, 1, others, ready_cpu_s)
        verdict = g.grade("5", answer)
        stop.set()
        assert killed == [ready.pid]
        assert verdict.status == "timeout", verdict  # the retry ran the answer to its budget
        stop = threading.Event()
        killed = _kill_busy_workers(stop, 2, others, ready_cpu_s)
        verdict = g.grade("5", answer)
        stop.set()
        assert len(killed) == 2
        assert (verdict.correct, verdict.status) == (False, "error"), verdict
        assert "killed two workers" in verdict.detail


async def test_retool_masks_an_episode_the_grader_cannot_score():
    unreadable = Task.create("What is the value?", "\\frac{1}{", "demo")
    env = ReToolEnv(tasks=[unreadable])
    episode = Episode(task=unreadable, episode_id="e", messages=[], actions=["\\boxed{5}"])
    with pytest.raises(ScoreUnavailable, match="gold"):
        await env.score(episode)
    await env.areset(options={"task": unreadable})
    _, reward, terminated, _, info = await env.astep("So the answer is \\boxed{5}.")
    assert (reward, terminated, info["masked"]) == (0.0, True, True)
    assert info["termination_reason"] == "masked" and "gold" in info["detail"]


async def test_retool_grades_with_the_tasks_answer_order():
    roots = Task.create("Find both roots.", "-3, 2", "demo", answer_order="unordered")
    pair = Task.create("Find the point (x, y).", "-3, 2", "demo")
    env = ReToolEnv(tasks=[roots])
    answer = ["The roots are \\boxed{2, -3}."]
    assert (await env.score(Episode(roots, "e", [], actions=answer))).reward == 1.0
    assert (await env.score(Episode(pair, "e", [], actions=answer))).reward == 0.0


def test_closed_grader_refuses_work():
    g = Grader(workers=1)
    g.close()
    with pytest.raises(RuntimeError, match="closed"):
        g.grade("1", "\\boxed{1}")


def test_grader_arguments_are_validated():
    with pytest.raises(ValueError):
        Grader(workers=0)
    with pytest.raises(ValueError):
        Grader(timeout=0)
    with pytest.raises(ValueError):
        Grader(retries=-1)


# --------------------------------------------------------------------------- list order


@pytest.mark.parametrize(
    ("gold", "answer", "order", "correct"),
    [
        ("(1, 2)", "(2, 1)", "notation", False),  # a tuple is ordered
        ("(1, 2)", "(2, 1)", "unordered", True),
        ("\\{1, 2\\}", "\\{2, 1\\}", "notation", True),  # a set is not
        ("\\{1, 2\\}", "\\{2, 1\\}", "ordered", False),
        ("3, 5", "5, 3", "notation", False),  # nor does a bare list say: ordered
        ("3, 5", "5, 3", "unordered", True),
        ("3, 5", "3, 5, 5", "unordered", True),  # set semantics
        ("(1, 2), (3, 4)", "(3, 4), (1, 2)", "notation", True),  # a collection of pairs
        ("(1, 2), (3, 4)", "(3, 4), (2, 1)", "unordered", False),  # inner tuples keep order
        ("x = 1, y = 2", "y = 2, x = 1", "notation", True),  # named values
        ("1, 2, \\ldots, 9", "2, 1, \\ldots, 9", "unordered", False),  # a sequence always is
        ("[0, 1)", "(0, 1]", "unordered", False),  # brackets are part of an interval
        ("\\{1, 2\\}", "(1, 2)", "unordered", False),  # a set is not a tuple
    ],
)
def test_answer_order(grader, gold, answer, order, correct):
    verdict = grader.grade(gold, answer, extract=False, order=order)
    assert (verdict.correct, verdict.status) == (correct, "ok")


def test_answer_order_reaches_math_verify_parts(grader):
    # parts only math-verify can compare, in either order
    gold, answer = "\\sqrt{8}, \\frac{\\pi}{2}", "\\frac{\\pi}{2}, 2\\sqrt{2}"
    assert not grader.grade(gold, answer, extract=False).correct
    verdict = grader.grade(gold, answer, extract=False, order="unordered")
    assert (verdict.correct, verdict.method) == (True, "math_verify")


# --------------------------------------------------------------------------- gold answers


def test_check_golds(grader):
    golds = [
        "42",
        "1,\\!000",
        "\\frac{\\sqrt{3}}{2}",
        "odd",
        "(1, \\frac{1}{",
        "",
        "=",
        "1, 2, \\ldots",
    ]
    reasons = grader.check_golds(golds)
    assert reasons[:4] == [None, None, None, None]
    assert reasons[4] is not None and "\\frac{1}{" in reasons[4]  # the part that fails
    assert reasons[5] == "the answer is empty"
    assert reasons[6] is not None and reasons[7] is None


def test_check_golds_rejects_a_gold_no_answer_can_be_compared_with_in_budget():
    with Grader(workers=2, timeout=0.5) as g:
        reasons = g.check_golds(["\\sqrt{2}", "9^{9^{9^{9}}}"])
    assert reasons[0] is None
    assert reasons[1] is not None and "CPU" in reasons[1]


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("a \\boxed{\\frac{1}{2}} b \\boxed{3}", "3"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        (
            "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        ),
        ("\\boxed 5$ more", "5"),
        ("\\fbox{x}", "x"),
        ("\\boxed  {7}", "7"),
        ("\\boxed{12", None),
        ("\\boxed{1} then \\boxed{2", None),
        ("\\boxed{ }", None),
        ("\\boxed", None),
        ("\\boxeds{5}", None),
        ("no box", None),
    ],
)
def test_extract_boxed_examples(text, expected):
    assert extract_boxed(text) == expected


_PLAIN = st.text(st.characters(blacklist_characters="\\{}", blacklist_categories=("Cs",)))
_BALANCED = st.recursive(
    _PLAIN, lambda inner: st.builds(lambda a, b: "{" + a + "}" + b, inner, inner), max_leaves=8
)


@given(before=st.text(), after=_PLAIN, answer=_BALANCED)
def test_extract_boxed_returns_the_last_box(before, after, answer):
    extracted = extract_boxed(before + "\\boxed{" + answer + "}" + after)
    assert extracted == (answer.strip() or None)


@given(first=_BALANCED, second=_BALANCED.filter(lambda s: s.strip()), middle=_PLAIN)
def test_extract_boxed_last_box_wins(first, second, middle):
    text = "\\boxed{" + first + "}" + middle + "\\fbox{" + second + "}"
    assert extract_boxed(text) == second.strip()


@given(st.text())
def test_extract_boxed_never_fails_and_returns_a_substring(text):
    extracted = extract_boxed(text)
    assert extracted is None or (extracted and extracted in text)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("\\dfrac12", "\\frac{1}{2}"),
        ("$x = 5$", "5"),
        ("125\\text{ miles}", "125"),
        ("15\\mbox{ cm}^2", "15"),
        ("28\\%", "28"),
        ("28 percent", "28"),
        ("90^\\circ", "90"),
        ("1{,}000", "1000"),
        ("56,\\!017,\\!895", "56017895"),
        ("\\$16,386.17", "16386.17"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("4 4/9", "4 4/9"),
        ("x \\in [0,1)", "[0,1)"),
        ("2x", "2x"),
        ("1, 234", "1,234"),  # a list, not one thousand two hundred thirty-four
        ("0,111", "0,111"),  # a decimal comma, not a thousands separator
        ("185\\", "185"),
        ("\\mathcal{B}", "B"),
        ("E'", "E^{\\prime}"),
        ("1, 2, \\dots", "1,2,\\ldots"),
        ("\\\\dfrac{1}{2}", "\\frac{1}{2}"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


# --------------------------------------------------------------------------- voting, pass@k


def test_equivalence_classes(grader):
    answers = ["1/2", "0.5", "\\frac{1}{2}", "2", None, "", "2.0", "x+1", "1+x"]
    assert equivalence_classes(answers, grader) == [[0, 1, 2], [3, 6], [7, 8]]
    assert equivalence_classes([None, " "], grader) == []


def test_majority_vote(grader):
    assert majority_vote(["3", "4", "\\frac{8}{2}", "3.0", "4"], grader) == "4"
    assert majority_vote(["1", "2"], grader) == "1"  # a tie goes to the class seen first
    assert majority_vote([None, ""], grader) is None


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),
        (5, 5, 1, 1.0),
        (10, 3, 1, 0.3),
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2)
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
        (3, 1, 3, 1.0),  # fewer wrong samples than k
        # the product form of the Codex paper: 1 - prod_{i=n-c+1}^{n} (1 - k/i)
        (100, 10, 10, 1 - math.prod(1 - 10 / i for i in range(91, 101))),
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# --------------------------------------------------------------------------- CLI


def test_cli_grades_one_pair():
    runner = CliRunner()
    ok = runner.invoke(app, ["grade", "1/2", "so $\\boxed{0.5}$"])
    assert ok.exit_code == 0 and "correct" in ok.stdout
    wrong = runner.invoke(app, ["grade", "7", "\\boxed{8}"])
    assert wrong.exit_code == 1 and "wrong" in wrong.stdout
    raw = runner.invoke(app, ["grade", "--raw", "7", "7"])
    assert raw.exit_code == 0
    neither = runner.invoke(app, ["grade"])
    assert neither.exit_code == 2


def test_cli_grades_a_cases_file(tmp_path):
    cases = tmp_path / "cases.jsonl"
    rows = [
        {"id": "a", "gold": "5", "pred": "\\boxed{5}", "expected_equal": True},
        {"id": "b", "gold": "5", "pred": "\\boxed{6}", "expected_equal": True},
        {"gold": "5", "pred": "none"},
    ]
    cases.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    runner = CliRunner()
    table = runner.invoke(app, ["grade", "--cases", str(cases)])
    assert table.exit_code == 0
    assert "accuracy 50.0% (1/2 labelled)" in table.stderr
    assert "answers/s" in table.stderr
    lines = runner.invoke(app, ["grade", "--cases", str(cases), "--json"])
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert records == [
        {"id": "a", "correct": True, "status": "ok", "method": "string"},
        {"id": "b", "correct": False, "status": "ok", "method": "numeric"},
        {"id": "3", "correct": False, "status": "no_answer", "method": "none"},
    ]


def test_cli_order_and_raw_cases(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["grade", "--raw", "(1, 2)", "(2, 1)"]).exit_code == 1
    unordered = runner.invoke(app, ["grade", "--raw", "--order", "unordered", "(1, 2)", "(2, 1)"])
    assert unordered.exit_code == 0
    bad = runner.invoke(app, ["grade", "--order", "sideways", "1", "1"])
    assert bad.exit_code == 2 and "--order" in bad.stderr
    cases = tmp_path / "cases.jsonl"
    rows = [
        {"id": "a", "gold": "-3, 2", "pred": "\\boxed{2, -3}", "answer_order": "unordered"},
        {"id": "b", "gold": "-3, 2", "pred": "\\boxed{2, -3}"},
        {"id": "c", "gold": "9", "pred": "Answer $ 9 $", "raw": True},
        {"id": "d", "gold": "9", "pred": "Answer $ 9 $"},
    ]
    cases.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    lines = runner.invoke(app, ["grade", "--cases", str(cases), "--json"])
    assert [json.loads(line)["correct"] for line in lines.stdout.splitlines()] == [
        True,
        False,
        True,
        False,
    ]
    cases.write_text(json.dumps({"gold": "1", "pred": "1", "answer_order": "x"}) + "\n")
    result = runner.invoke(app, ["grade", "--cases", str(cases)])
    assert result.exit_code == 2 and "answer_order" in result.stderr


def test_cli_reports_the_bad_line_of_a_cases_file(tmp_path):
    cases = tmp_path / "bad.jsonl"
    cases.write_text('{"gold": "1", "pred": "1"}\n{"gold": 1, "pred": "1"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["grade", "--cases", str(cases)])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.stderr and "'gold'" in result.stderr
