"""A run's summary: every figure of :mod:`evals.metrics`, computed from its stored samples.

Only the first ``k`` samples of each problem (indices ``0 … k−1``) count, so a run that holds
more samples (an earlier, larger ``k``) summarises the same at any smaller ``k``. Lost samples
(:class:`~evals.sample.Lost`) are in no denominator: a problem with ``n < k`` finished samples
counts towards pass@k' and maj@k' only for ``k' ≤ n``, and every figure says over how many
problems it was taken.

**Voting.** Each problem's answers are grouped into equivalence classes by
:func:`envs.grading.equivalence_classes`: answers with the same canonical form share a class
without a grading call; an answer of a new form is graded against each class's first answer, in
order of first appearance, and joins the first class that accepts it (the grader's equality is
neither symmetric nor transitive, so this order is part of the definition). A class is right
when its first answer's sample was judged right. Samples that boxed nothing do not vote.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from envs.grading import Grader, equivalence_classes
from envs.tasks import Task
from evals.metrics import (
    bootstrap_ci,
    majority_at_k,
    mean_std_stderr,
    pass_at_k,
    wilson_interval,
)
from evals.sample import EvalSample, Lost

__all__ = ["EvalSummary", "MetricPoint", "ProblemResult", "k_values", "summarize"]


def k_values(k: int) -> list[int]:
    """The k' a summary reports: powers of two below ``k``, and ``k``."""
    ks = [1 << i for i in range(k.bit_length()) if (1 << i) < k]
    return [*ks, k]


@dataclass(frozen=True)
class MetricPoint:
    """One figure over problems.

    Attributes:
        k: its k.
        value: the mean over problems.
        ci_low / ci_high: the 95% bootstrap interval over problems.
        problems: problems it was taken over (those with at least ``k`` finished samples).
        mc_stderr: for maj@k: the Monte Carlo standard error of ``value`` (0 when exact).
        tie_share: for maj@k: the share of votes decided by the tie rule.
    """

    k: int
    value: float
    ci_low: float
    ci_high: float
    problems: int
    mc_stderr: float = 0.0
    tie_share: float = 0.0


@dataclass(frozen=True)
class ProblemResult:
    """One problem's samples.

    Attributes:
        key: the problem's key.
        n: finished samples (of the first ``k``).
        correct: right ones among them.
        lost: samples lost to infrastructure.
        rate_ci: the Wilson 95% interval of ``correct / n`` (``None`` when ``n = 0``).
        majority: the answer of the largest class over all ``n`` samples.
        majority_correct: whether that class is right.
        classes: distinct answers (equivalence classes).
        no_answer: samples that boxed nothing.
    """

    key: str
    n: int
    correct: int
    lost: int
    rate_ci: tuple[float, float] | None
    majority: str | None
    majority_correct: bool
    classes: int
    no_answer: int

    @property
    def rate(self) -> float | None:
        """``correct / n``; ``None`` when nothing finished."""
        return self.correct / self.n if self.n else None


@dataclass(frozen=True)
class EvalSummary:
    """Everything a run's report shows.

    Attributes:
        run_id: the run.
        k: samples asked for per problem.
        problems: problems in the run.
        samples: finished samples counted.
        lost: samples lost to infrastructure (in no denominator), with ``lost_reasons``.
        avg: avg@k over problems with a finished sample (mean of per-problem success rates).
        avg_std / avg_stderr: the spread of per-problem rates and the mean's standard error.
        pass_at / maj_at: one point per k' of :func:`k_values`.
        per_problem: see :class:`ProblemResult`.
        tool_use: share of samples that ran code, mean cells, cell statuses, and the success
            rate with and without code.
        time_s: seconds summed over samples: llm, sandbox, grader, episode.
        termination: how episodes ended.
        score_status: how verdicts were reached.
        mean_turns / mean_model_tokens: per sample.
    """

    run_id: str
    k: int
    problems: int
    samples: int
    lost: int
    lost_reasons: dict[str, int]
    avg: MetricPoint
    avg_std: float
    avg_stderr: float
    pass_at: list[MetricPoint]
    maj_at: list[MetricPoint]
    per_problem: list[ProblemResult]
    tool_use: dict[str, Any]
    time_s: dict[str, float]
    termination: dict[str, int]
    score_status: dict[str, int]
    mean_turns: float
    mean_model_tokens: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``summary.json``)."""
        data = asdict(self)
        for row, problem in zip(data["per_problem"], self.per_problem, strict=True):
            row["rate"] = problem.rate
        return data

    def point(self, metric: str, k: int) -> MetricPoint | None:
        """The ``pass``/``maj`` point at ``k``."""
        points = self.pass_at if metric == "pass" else self.maj_at
        return next((p for p in points if p.k == k), None)


def summarize(
    run_id: str,
    tasks: Sequence[Task],
    samples: Mapping[str, EvalSample],
    lost: Mapping[str, Lost],
    k: int,
    *,
    grader: Grader | None = None,
    seed: int = 0,
) -> EvalSummary:
    """Summarise a run's first ``k`` samples of each problem (see the module docstring)."""
    if k < 1:
        raise ValueError(f"need k >= 1, got {k}")
    by_problem: dict[str, list[EvalSample]] = {t.key: [] for t in tasks}
    for sample in samples.values():
        if sample.sample_index < k and sample.problem_key in by_problem:
            by_problem[sample.problem_key].append(sample)
    lost_by: Counter[str] = Counter(
        loss.problem_key for loss in lost.values() if loss.sample_index < k
    )
    counted = [s for rows in by_problem.values() for s in rows]
    results: list[ProblemResult] = []
    labels_of: dict[str, tuple[list[int | None], set[int]]] = {}
    for key, rows in by_problem.items():
        rows.sort(key=lambda s: s.sample_index)
        result, labels, right = _problem(key, rows, lost_by[key], grader)
        results.append(result)
        labels_of[key] = (labels, right)

    rates = [r.rate for r in results if r.rate is not None]
    avg_mean, avg_std, avg_se = mean_std_stderr(rates) if rates else (math.nan, 0.0, 0.0)
    avg = _point(k, rates, seed)
    pass_points, maj_points = [], []
    for kk in k_values(k):
        eligible = [r for r in results if r.n >= kk]
        pass_points.append(_point(kk, [pass_at_k(r.n, r.correct, kk) for r in eligible], seed))
        majors = [
            majority_at_k(*labels_of[r.key], kk, seed=seed + index)
            for index, r in enumerate(eligible)
        ]
        point = _point(kk, [m.value for m in majors], seed)
        se = math.sqrt(sum(m.stderr**2 for m in majors)) / len(majors) if majors else 0.0
        ties = statistics.fmean(m.tie_share for m in majors) if majors else 0.0
        maj_points.append(
            MetricPoint(kk, point.value, point.ci_low, point.ci_high, point.problems, se, ties)
        )
    return EvalSummary(
        run_id=run_id,
        k=k,
        problems=len(tasks),
        samples=len(counted),
        lost=sum(lost_by.values()),
        lost_reasons=dict(
            Counter(loss.reason.split(":", 1)[0] for loss in lost.values() if loss.sample_index < k)
        ),
        avg=MetricPoint(k, avg_mean, avg.ci_low, avg.ci_high, len(rates)),
        avg_std=avg_std,
        avg_stderr=avg_se,
        pass_at=pass_points,
        maj_at=maj_points,
        per_problem=results,
        tool_use=_tool_use(counted),
        time_s={
            "llm": sum(s.llm_s for s in counted),
            "sandbox": sum(s.sandbox_s for s in counted),
            "grader": sum(s.grader_s for s in counted),
            "episode": sum(s.total_s for s in counted),
        },
        termination=dict(Counter(s.termination_reason for s in counted)),
        score_status=dict(Counter(s.score_status for s in counted)),
        mean_turns=statistics.fmean(s.turns for s in counted) if counted else 0.0,
        mean_model_tokens=statistics.fmean(s.model_tokens for s in counted) if counted else 0.0,
    )


def _problem(
    key: str, rows: list[EvalSample], lost: int, grader: Grader | None
) -> tuple[ProblemResult, list[int | None], set[int]]:
    answers = [s.answer for s in rows]
    classes = equivalence_classes(answers, grader) if any(answers) else []
    labels: list[int | None] = [None] * len(rows)
    for c, members in enumerate(classes):
        for i in members:
            labels[i] = c
    right = {c for c, members in enumerate(classes) if rows[members[0]].correct}
    best = max(range(len(classes)), key=lambda c: len(classes[c])) if classes else None
    n, c = len(rows), sum(s.correct for s in rows)
    result = ProblemResult(
        key=key,
        n=n,
        correct=c,
        lost=lost,
        rate_ci=wilson_interval(c, n) if n else None,
        majority=answers[classes[best][0]] if best is not None else None,
        majority_correct=best in right,
        classes=len(classes),
        no_answer=sum(a is None for a in answers),
    )
    return result, labels, right


def _point(k: int, values: list[float], seed: int) -> MetricPoint:
    if not values:
        return MetricPoint(k, math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_ci(values, seed=seed)
    return MetricPoint(k, statistics.fmean(values), low, high, len(values))


def _tool_use(samples: list[EvalSample]) -> dict[str, Any]:
    with_tool = [s for s in samples if s.tool_calls]
    without = [s for s in samples if not s.tool_calls]
    statuses: Counter[str] = Counter(status for s in samples for status in s.tool_statuses)
    return {
        "share_with_code": len(with_tool) / len(samples) if samples else 0.0,
        "mean_cells": statistics.fmean(s.tool_calls for s in samples) if samples else 0.0,
        "cell_status": dict(statuses),
        "accuracy_with_code": _accuracy(with_tool),
        "accuracy_without_code": _accuracy(without),
    }


def _accuracy(samples: list[EvalSample]) -> float | None:
    return sum(s.correct for s in samples) / len(samples) if samples else None
