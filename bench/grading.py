"""Grading benchmark: our grader vs math-verify alone vs exact string match, in one run.

All three grade every case of the labelled set (tests/data/grading_cases.jsonl); accuracy is
the share of cases whose verdict equals the label, answers/s is cases over wall time. Cases
marked ``raw`` hold an answer, not a response (ours grades them with ``extract=False``);
a case's ``answer_order`` is passed to ours.

* **ours** — :class:`envs.grading.Grader`: last ``\\boxed{}``, string → numeric / structure →
  math-verify in worker processes with a hard deadline per answer.
* **math-verify alone** — the library as its README shows it, in this process's main thread
  (its SIGALRM timeouts only work there): ``verify(parse("$gold$"), parse(response))``. It
  also accepts answers outside ``\\boxed{}``, which the labels (an env's boxed-answer contract)
  count as wrong, so accuracy is also reported without the ``no_box`` cases.
* **exact match** — the last ``\\boxed{}`` content equals the gold string after ``strip()``.

Usage: ``python bench/grading.py [--quick] [--timeout S] [--workers N] [--cases FILE]``
(``--quick``: without the pathological cases, which cost math-verify alone its whole timeout
each). The last stdout line is one JSON object with every figure, accuracy per category
included; keys holding ratios contain "ratio".
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from envs.grading import Grader, GradeResult, extract_boxed

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "grading_cases.jsonl"


def _accuracy(cases: list[dict[str, Any]], verdicts: list[bool], *, boxed_only: bool) -> float:
    kept = [
        (c, v)
        for c, v in zip(cases, verdicts, strict=True)
        if not (boxed_only and c["category"] == "no_box")
    ]
    return round(sum(c["expected_equal"] == v for c, v in kept) / len(kept), 4)


def _ratio(ours: float, base: float) -> float:
    return float(f"{ours / base:.3g}")


def _grade(grader: Grader, cases: list[dict[str, Any]]) -> list[GradeResult]:
    """Our verdicts in case order: raw cases as answers, the others as responses."""
    verdicts: dict[int, GradeResult] = {}
    for raw in (True, False):
        indices = [i for i, c in enumerate(cases) if bool(c.get("raw")) == raw]
        requests = [
            (cases[i]["gold"], cases[i]["pred"], cases[i].get("answer_order", "notation"))
            for i in indices
        ]
        results = grader.grade_many(requests, extract=not raw)
        verdicts.update(zip(indices, results, strict=True))
    return [verdicts[i] for i in range(len(cases))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=CASES)
    parser.add_argument(
        "--timeout",
        type=int,
        default=3,
        help="seconds per answer: our CPU budget, math-verify's alarm",
    )
    parser.add_argument("--workers", type=int, default=2, help="our grader's worker processes")
    parser.add_argument("--quick", action="store_true", help="skip the pathological cases")
    args = parser.parse_args()
    cases = [json.loads(line) for line in args.cases.read_text(encoding="utf-8").splitlines()]
    if args.quick:
        cases = [c for c in cases if not c.get("pathological")]
    # Every grader sees every case once, regular cases first, then the pathological ones: a
    # training run sees each answer once, so no grader gets to reuse a cached parse.
    cases.sort(key=lambda c: bool(c.get("pathological")))
    pairs = [(c["gold"], c["pred"]) for c in cases]
    regular = [not c.get("pathological") for c in cases]
    n_regular = sum(regular)

    # ours: workers started (and warmed) before the clock starts, as in a training run
    with Grader(workers=args.workers, timeout=args.timeout) as grader:
        grader.grade_many([("\\sqrt{2}", "\\boxed{2^{1/2}}")] * args.workers)
        start = time.perf_counter()
        ours = _grade(grader, cases[:n_regular])
        ours_regular_s = time.perf_counter() - start
        ours += _grade(grader, cases[n_regular:])
        ours_s = time.perf_counter() - start

    # math-verify alone, warmed the same way
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import parse, verify

    def math_verify_alone(gold: str, pred: str) -> bool:
        gold_parsed = parse(f"${gold}$", parsing_timeout=args.timeout)
        pred_parsed = parse(pred, parsing_timeout=args.timeout)
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=args.timeout))

    math_verify_alone("\\sqrt{2}", "\\boxed{2^{1/2}}")
    start = time.perf_counter()
    mv = [math_verify_alone(g, p) for g, p in pairs[:n_regular]]
    mv_regular_s = time.perf_counter() - start
    mv += [math_verify_alone(g, p) for g, p in pairs[n_regular:]]
    mv_s = time.perf_counter() - start

    start = time.perf_counter()
    exact = [
        ((p if c.get("raw") else extract_boxed(p) or "").strip() == g.strip())
        for c, (g, p) in zip(cases, pairs, strict=True)
    ]
    exact_s = time.perf_counter() - start

    n = len(cases)
    figures: dict[str, Any] = {"cases": n, "regular_cases": n_regular, "timeout_s": args.timeout}
    for name, verdicts, seconds, regular_seconds in (
        ("ours", [r.correct for r in ours], ours_s, ours_regular_s),
        ("math_verify", mv, mv_s, mv_regular_s),
        ("exact_match", exact, exact_s, None),
    ):
        figures[f"{name}_accuracy"] = _accuracy(cases, verdicts, boxed_only=False)
        figures[f"{name}_accuracy_boxed_only"] = _accuracy(cases, verdicts, boxed_only=True)
        figures[f"{name}_answers_per_s"] = round(n / seconds, 1)
        if regular_seconds is not None:
            figures[f"{name}_answers_per_s_regular"] = round(n_regular / regular_seconds, 1)
    figures["ours_timeouts"] = sum(r.status == "timeout" for r in ours)
    figures["ours_errors"] = sum(r.status in ("error", "unavailable") for r in ours)
    for category in sorted({c["category"] for c in cases}):
        members = [i for i, c in enumerate(cases) if c["category"] == category]
        for name, verdicts in (("ours", [r.correct for r in ours]), ("math_verify", mv)):
            agree = sum(cases[i]["expected_equal"] == verdicts[i] for i in members)
            figures[f"{name}_accuracy_{category}"] = round(agree / len(members), 4)
    for base in ("math_verify", "exact_match"):
        for metric in ("accuracy", "accuracy_boxed_only", "answers_per_s"):
            figures[f"{metric}_ratio_vs_{base}"] = _ratio(
                figures[f"ours_{metric}"], figures[f"{base}_{metric}"]
            )
    figures["answers_per_s_regular_ratio_vs_math_verify"] = _ratio(
        figures["ours_answers_per_s_regular"], figures["math_verify_answers_per_s_regular"]
    )

    print(f"{n} labelled cases ({n - n_regular} pathological), timeout {args.timeout} s")
    print(f"{'':14}{'accuracy':>10}{'w/o no_box':>12}{'answers/s':>12}{'regular/s':>12}")
    for name in ("ours", "math_verify", "exact_match"):
        regular_rate = figures.get(f"{name}_answers_per_s_regular", "")
        print(
            f"{name:14}{figures[f'{name}_accuracy']:>10.1%}"
            f"{figures[f'{name}_accuracy_boxed_only']:>12.1%}"
            f"{figures[f'{name}_answers_per_s']:>12}{regular_rate:>12}"
        )
    print(
        f"ours vs math-verify: accuracy ×{figures['accuracy_ratio_vs_math_verify']}, "
        f"answers/s ×{figures['answers_per_s_ratio_vs_math_verify']} "
        f"(×{figures['answers_per_s_regular_ratio_vs_math_verify']} without pathological cases)"
    )
    mismatches = [
        c["id"] for c, r in zip(cases, ours, strict=True) if r.correct != c["expected_equal"]
    ]
    print(f"ours disagrees with the label on: {', '.join(mismatches) or 'none'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
