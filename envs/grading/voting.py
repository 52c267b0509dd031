"""Using several answers to one problem: equivalence classes, majority voting, pass@k."""

from __future__ import annotations

import math
from collections.abc import Sequence

from envs.grading.grader import Grader, default_grader
from envs.grading.normalize import normalize_answer

__all__ = ["equivalence_classes", "majority_vote", "pass_at_k"]


def equivalence_classes(
    answers: Sequence[str | None], grader: Grader | None = None
) -> list[list[int]]:
    """Group answers that grade equal, for majority voting.

    Answers are compared to each class's first member, which plays the gold (grading is not
    symmetric: ``x = 5`` as gold accepts ``5``). ``None`` and empty answers join no class; a
    comparison that times out or errors counts as "different". Classes are in order of first
    appearance, indices ascending within each class.
    """
    grader = grader or default_grader()
    classes: list[list[int]] = []
    by_form: dict[str, int] = {}  # normalised form -> class index: skips most grading calls
    for i, answer in enumerate(answers):
        if not answer or not answer.strip():
            continue
        form = normalize_answer(answer)
        if not form:
            continue
        if form in by_form:
            classes[by_form[form]].append(i)
            continue
        reps = [answers[c[0]] or "" for c in classes]
        verdicts = grader.grade_many([(rep, answer) for rep in reps], extract=False)
        match = next((c for c, v in enumerate(verdicts) if v.correct), None)
        if match is None:
            classes.append([i])
            match = len(classes) - 1
        else:
            classes[match].append(i)
        by_form[form] = match
    return classes


def majority_vote(answers: Sequence[str | None], grader: Grader | None = None) -> str | None:
    """The answer of the largest equivalence class (ties: the class seen first); ``None`` if
    no answer is usable."""
    classes = equivalence_classes(answers, grader)
    if not classes:
        return None
    best = max(classes, key=len)  # max keeps the first of equal-sized classes
    return answers[best[0]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator: 1 - C(n-c, k) / C(n, k) for ``c`` correct of ``n`` samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
