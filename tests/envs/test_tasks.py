"""Task sets: prompt keys, task files (good and bad), arithmetic tasks, reasoning-gym."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.grading import Grader
from envs.tasks import (
    ChatMessage,
    Task,
    TaskDataError,
    arithmetic_tasks,
    load_tasks,
    normalize_prompt,
    prompt_key,
    reasoning_gym_tasks,
    score_reasoning_gym,
)

# shared/ sits beside the checkout, in CI too.
AIME24 = Path(__file__).resolve().parents[3] / "shared" / "data" / "aime24.jsonl"


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- prompt keys


def test_prompt_key_is_a_fixed_function_of_the_text():
    key = prompt_key("What is 1+1?")
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert key == hashlib.blake2b(b"What is 1+1?", digest_size=8).hexdigest()
    assert key == "6d52aa994781ec59"  # pinned: keys written by one release are read by the next


def test_keys_and_generated_tasks_are_the_same_in_a_fresh_process():
    code = (
        "from envs.tasks import arithmetic_tasks, prompt_key; "
        "print(prompt_key('What is 1+1?'), arithmetic_tasks(3, seed=3)[2].key)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = f"{prompt_key('What is 1+1?')} {arithmetic_tasks(3, seed=3)[2].key}"
    assert other.stdout.strip() == expected  # no hash randomisation, no global RNG state


def test_prompt_key_normalisation():
    assert normalize_prompt("  Find\t x,\n\n  if  x=２ ") == "Find x, if x=2"
    assert prompt_key("Find x,\nif x = 2.") == prompt_key("  Find x, if x = 2.  ")
    assert prompt_key("Ｆｉｎｄ ｘ") == prompt_key("Find x")  # full-width forms (NFKC)
    assert prompt_key("Find x") != prompt_key("find x")  # case matters
    assert prompt_key("$x^2$") != prompt_key("$x^{2}$")  # LaTeX is kept as written


def test_task_key_comes_from_the_problem_text():
    chat = (ChatMessage("system", "Use Python."), ChatMessage("user", "What is 2+2?"))
    task = Task.create(chat, "4", "demo")
    assert task.problem == "What is 2+2?"
    assert task.key == prompt_key("What is 2+2?") == Task.create("What is 2+2?", "4", "x").key
    assert task.messages()[0] == {"role": "system", "content": "Use Python."}
    assert Task.create("Q?", "1", "demo").messages() == [{"role": "user", "content": "Q?"}]


# --------------------------------------------------------------------------- task files


def test_load_plain_answer_file():
    # shared/ sits beside the checkout (in CI too): a missing file is a failure, not a skip.
    tasks = load_tasks(AIME24)
    assert len(tasks) == 30
    assert len({t.key for t in tasks}) == 30
    assert all(t.data_source == "aime24" and t.answer.isdigit() for t in tasks)
    assert tasks[0].answer == "45" and tasks[0].problem.startswith("Find the number of ways")
    assert len(load_tasks(AIME24, limit=5, data_source="aime")) == 5
    assert load_tasks(AIME24, limit=1, data_source="aime")[0].data_source == "aime"


VERL_ROWS = [
    {
        "data_source": "math_dapo",
        "prompt": [
            {"role": "system", "content": "Reason step by step."},
            {"role": "user", "content": "What is 6*7?"},
        ],
        "ability": "MATH",
        "reward_model": {"style": "rule", "ground_truth": "42"},
        "extra_info": {"index": 3, "split": "train"},
    },
    {"prompt": "What is 1+1?", "reward_model": {"ground_truth": 2}},
]


def test_load_verl_rows(tmp_path):
    first, second = load_tasks(write_jsonl(tmp_path / "train.jsonl", VERL_ROWS))
    assert first.answer == "42" and first.data_source == "math_dapo"
    assert first.prompt[0] == ChatMessage("system", "Reason step by step.")
    assert first.key == prompt_key("What is 6*7?")
    assert first.extra == {"ability": "MATH", "index": 3, "split": "train"}
    assert (second.answer, second.data_source, second.prompt) == ("2", "train", "What is 1+1?")


def test_load_parquet_and_json(tmp_path):
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(VERL_ROWS[:1]), parquet)
    (task,) = load_tasks(parquet)
    assert task.answer == "42" and task.problem == "What is 6*7?"
    as_json = tmp_path / "rows.json"
    as_json.write_text(json.dumps([{"question": "Q1", "answer": "1"}]), encoding="utf-8")
    assert load_tasks(as_json)[0].answer == "1"


def test_repeated_prompts(tmp_path):
    rows = [{"problem": "Q", "answer": "1"}, {"problem": " Q ", "answer": "1"}]
    assert len(load_tasks(write_jsonl(tmp_path / "dup.jsonl", rows))) == 1
    rows.append({"problem": "Q", "answer": "2"})
    with pytest.raises(TaskDataError) as err:
        load_tasks(write_jsonl(tmp_path / "conflict.jsonl", rows))
    assert (err.value.row, err.value.field) == (3, "answer")
    assert "row 1" in str(err.value)


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"problem": "What is 1+1?"}, "answer", "no answer"),
        ({"answer": "2"}, "problem", "no problem text"),
        ({"problem": "Q", "answer": "  "}, "answer", "is empty"),
        ({"problem": "Q", "answer": True}, "answer", "must be a string"),
        ({"problem": "Q", "output": [1, 2]}, "output", "must be a string"),
        ({"problem": "", "answer": "1"}, "problem", "is empty"),
        ({"prompt": "Q", "reward_model": {}}, "reward_model.ground_truth", "missing"),
        ({"prompt": "Q", "reward_model": "42"}, "reward_model", "must be an object"),
        ({"reward_model": {"ground_truth": "1"}}, "prompt", "missing"),
        ({"prompt": [], "reward_model": {"ground_truth": "1"}}, "prompt", "non-empty list"),
        (
            {"prompt": [{"role": "system", "content": "x"}], "reward_model": {"ground_truth": "1"}},
            "prompt",
            "no non-empty user message",
        ),
        (
            {"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}},
            "prompt[0].content",
            "must be a string",
        ),
        (
            {"prompt": ["hi"], "reward_model": {"ground_truth": "1"}},
            "prompt[0]",
            "must be an object",
        ),
        (
            {"prompt": "Q", "reward_model": {"ground_truth": "1"}, "extra_info": [1]},
            "extra_info",
            "must be an object",
        ),
        ({"problem": "Q", "answer": "1", "data_source": 7}, "data_source", "non-empty string"),
        (["Q", "1"], None, "must be an object"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row, field, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "fine", "answer": "1"}, row])
    with pytest.raises(TaskDataError) as err:
        load_tasks(path)
    assert (err.value.path, err.value.row, err.value.field) == (path, 2, field)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}, row 2")


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "Q", "answer": "1"}\n\n{"problem": \n', encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"broken.jsonl, row 3: invalid JSON"):
        load_tasks(broken)  # the blank line still counts: row numbers are line numbers
    not_a_list = tmp_path / "rows.json"
    not_a_list.write_text('{"problem": "Q"}', encoding="utf-8")
    with pytest.raises(TaskDataError, match="must hold a list"):
        load_tasks(not_a_list)
    with pytest.raises(TaskDataError, match="unsupported file type"):
        load_tasks(tmp_path / "tasks.csv")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(TaskDataError, match="cannot read parquet"):
        load_tasks(garbage)
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def grader():
    with Grader(workers=2, timeout=5.0) as g:
        yield g


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"problem": "Q3", "answer": "\\frac{1}{"}, "answer"),
        ({"problem": "Q3", "final_answer": "="}, "final_answer"),
        (
            {"prompt": "Q3", "reward_model": {"ground_truth": "(1, \\sqrt{)"}},
            "reward_model.ground_truth",
        ),
        ({"prompt": "Q3", "reward_model": {"ground_truth": "???"}}, "reward_model.ground_truth"),
    ],
)
def test_an_answer_the_grader_cannot_read_is_rejected_as_the_file_loads(
    tmp_path, grader, row, field
):
    fine = [{"problem": "Q1", "answer": "\\frac{\\sqrt{3}}{2}"}, {"problem": "Q2", "answer": "odd"}]
    path = write_jsonl(tmp_path / "bad_gold.jsonl", [*fine, row])
    with pytest.raises(TaskDataError) as err:
        load_tasks(path, grader=grader)
    assert (err.value.path, err.value.row, err.value.field) == (path, 3, field)
    assert "the grader cannot read it" in str(err.value)
    assert len(load_tasks(path, check_answers=False)) == 3  # for answers another scorer judges
    assert len(load_tasks(path, limit=2, grader=grader)) == 2


def test_readable_answers_load(tmp_path, grader):
    answers = ["42", "-3/4", "1,\\!000", "\\text{Evelyn}", "north-east", "(1, \\frac{\\pi}{2})",
               "\\{1, 2\\}", "1, 2, \\ldots, n", "x^2 + 1", "10\\%", "[0, 1)", "E'"]  # fmt: skip
    rows = [{"problem": f"Q{i}", "answer": a} for i, a in enumerate(answers)]
    tasks = load_tasks(write_jsonl(tmp_path / "fine.jsonl", rows), grader=grader)
    assert [t.answer for t in tasks] == answers


def test_answer_order_is_read_from_the_row(tmp_path):
    rows = [
        {"prompt": "Roots?", "reward_model": {"ground_truth": "1, 2"}, "extra_info": {"answer_order": "unordered"}},
        {"problem": "Point?", "answer": "(1, 2)", "answer_order": "ordered"},
        {"problem": "Pair?", "answer": "(1, 2)"},
    ]  # fmt: skip
    roots, point, pair = load_tasks(write_jsonl(tmp_path / "orders.jsonl", rows))
    assert (roots.answer_order, point.answer_order, pair.answer_order) == (
        "unordered",
        "ordered",
        "notation",
    )
    assert "answer_order" not in point.extra and roots.extra["answer_order"] == "unordered"
    rows[2]["answer_order"] = "sorted"
    with pytest.raises(TaskDataError) as err:
        load_tasks(write_jsonl(tmp_path / "bad_order.jsonl", rows))
    assert (err.value.row, err.value.field) == (3, "answer_order")
    rows[2] = {
        "prompt": "P",
        "reward_model": {"ground_truth": "1"},
        "extra_info": {"answer_order": 1},
    }
    with pytest.raises(TaskDataError) as err:
        load_tasks(write_jsonl(tmp_path / "bad_order.jsonl", rows))
    assert (err.value.row, err.value.field) == (3, "extra_info.answer_order")
    with pytest.raises(ValueError, match="answer_order"):
        Task.create("Q", "1", "demo", answer_order="sideways")  # type: ignore[arg-type]


def test_loading_a_dapo_sized_file_stays_fast(tmp_path):
    # DAPO-Math-17k's answers are integers: the check needs no math-verify worker at all.
    rows = [
        {"prompt": [{"role": "user", "content": f"Problem {i}"}], "reward_model": {"ground_truth": str(i * 7919 % 100_003)}}
        for i in range(17_000)
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "dapo.jsonl", rows)
    with Grader(workers=1) as grader:
        start = time.perf_counter()
        assert len(load_tasks(path, grader=grader)) == 17_000
        elapsed = time.perf_counter() - start
        assert grader.worker_pids() == []
    assert elapsed < 20.0  # ~2 s here; minutes would mean a worker call per row


# --------------------------------------------------------------------------- arithmetic


def _evaluate(expression: str) -> Fraction:
    exact = re.sub(r"\d+", lambda m: f"Fraction({m.group(0)})", expression)
    value: Fraction = eval(exact, {"__builtins__": {}, "Fraction": Fraction})
    return value


def test_arithmetic_tasks_are_exact_and_follow_the_knobs():
    tasks = arithmetic_tasks(40, digits=5, operations=3, seed=7)
    assert len({t.key for t in tasks}) == 40
    for task in tasks:
        expression = task.extra["expression"]
        assert expression in task.problem
        assert all(len(n) == 5 for n in re.findall(r"\d+", expression))
        assert len(re.findall(r" [-+*/] ", expression)) == 3
        value = _evaluate(expression)
        expected = str(value.numerator) if value.denominator == 1 else f"{value}"
        assert task.answer == expected  # Fraction's str is p/q in lowest terms
        assert task.data_source == "spo_gym/arithmetic"
    assert any("/" in t.answer for t in tasks)
    assert not any("/" in t.answer for t in arithmetic_tasks(20, division=False))


def test_arithmetic_tasks_are_deterministic():
    tasks = arithmetic_tasks(10, seed=3)
    assert tasks == arithmetic_tasks(10, seed=3)
    assert tasks[:4] == arithmetic_tasks(4, seed=3)  # a shorter list is a prefix
    assert {t.key for t in tasks}.isdisjoint(t.key for t in arithmetic_tasks(10, seed=4))


def test_arithmetic_answers_pass_the_gold_check_without_a_worker():
    with Grader(workers=1) as grader:
        golds = [t.answer for t in arithmetic_tasks(300, digits=4, operations=3, seed=5)]
        assert grader.check_golds(golds) == [None] * len(golds)
        assert grader.worker_pids() == []  # integers and p/q: judged without math-verify


def test_arithmetic_answers_grade_in_every_usual_form():
    task = next(t for t in arithmetic_tasks(20, seed=1) if "/" in t.answer)
    p, q = task.answer.split("/")
    with Grader(workers=1) as grader:
        for pred in (task.answer, f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}"):
            assert grader.grade(task.answer, f"\\boxed{{{pred}}}").correct, pred
        assert not grader.grade(task.answer, f"\\boxed{{{p}}}").correct


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be"),
        ({"n": 1, "digits": 0}, "digits must be"),
        ({"n": 1, "operations": 0}, "operations must be"),
        ({"n": 300, "digits": 1, "operations": 1, "division": False}, "distinct expressions"),
    ],
)
def test_arithmetic_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        arithmetic_tasks(**kwargs)


# --------------------------------------------------------------------------- reasoning-gym


def test_reasoning_gym_tasks_and_their_scorer():
    tasks = reasoning_gym_tasks("basic_arithmetic", 4, seed=1)
    assert len(tasks) == 4 and tasks == reasoning_gym_tasks("basic_arithmetic", 4, seed=1)
    first = tasks[0]
    assert first.data_source == "reasoning_gym/basic_arithmetic"
    assert first.key == prompt_key(first.problem) and first.answer
    assert score_reasoning_gym(first, first.answer) == 1.0
    assert score_reasoning_gym(first, first.answer + "1") < 1.0
    assert score_reasoning_gym(first, None) == 0.0
    configured = reasoning_gym_tasks("basic_arithmetic", 2, seed=1, min_terms=4, max_terms=4)
    assert configured[0].extra["reasoning_gym"]["config"] == {"min_terms": 4, "max_terms": 4}
    assert score_reasoning_gym(configured[0], configured[0].answer) == 1.0


def test_reasoning_gym_errors():
    with pytest.raises(ValueError, match="not registered"):
        reasoning_gym_tasks("no_such_family", 1)
    with pytest.raises(ValueError, match="not a reasoning-gym task"):
        score_reasoning_gym(Task.create("Q", "1", "demo"), "1")
