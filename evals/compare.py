"""Two or more runs on the same problems, side by side, and a paired comparison of each pair.

Runs are compared on the problems they share. The paired figure is the mean per-problem
difference of success rates (avg@k, B − A) with a paired bootstrap interval — the same problems
resampled for both runs, which is far tighter than comparing two independent intervals — and
the problems only one of them solves (at least one right sample of ``k``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evals.metrics import PairedComparison, paired_bootstrap
from evals.summary import EvalSummary

__all__ = ["PairComparison", "compare_pair", "compare_runs"]


@dataclass(frozen=True)
class PairComparison:
    """Run ``b`` against run ``a``.

    Attributes:
        a / b: the runs' labels.
        avg: the paired comparison of per-problem success rates.
        only_a / only_b: problems one run solves at least once and the other never.
        problems: problems both runs have finished samples of.
    """

    a: str
    b: str
    avg: PairedComparison
    only_a: list[str]
    only_b: list[str]
    problems: int


def compare_pair(a: EvalSummary, b: EvalSummary, labels: tuple[str, str]) -> PairComparison:
    """Compare two runs on their shared problems.

    Raises:
        ValueError: the runs share no problem with finished samples.
    """
    rows_a = {p.key: p for p in a.per_problem if p.n}
    rows_b = {p.key: p for p in b.per_problem if p.n}
    shared = [key for key in rows_a if key in rows_b]
    if not shared:
        raise ValueError(f"{labels[0]} and {labels[1]} share no problem with finished samples")
    rates_a = [rows_a[key].correct / rows_a[key].n for key in shared]
    rates_b = [rows_b[key].correct / rows_b[key].n for key in shared]
    return PairComparison(
        a=labels[0],
        b=labels[1],
        avg=paired_bootstrap(rates_a, rates_b),
        only_a=[key for key in shared if rows_a[key].correct and not rows_b[key].correct],
        only_b=[key for key in shared if rows_b[key].correct and not rows_a[key].correct],
        problems=len(shared),
    )


def compare_runs(summaries: Sequence[EvalSummary], labels: Sequence[str]) -> list[PairComparison]:
    """Every later run against the first."""
    return [
        compare_pair(summaries[0], s, (labels[0], label))
        for s, label in zip(summaries[1:], labels[1:], strict=True)
    ]
