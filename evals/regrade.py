"""Re-grading a run's stored samples offline (after a grader fix), without regenerating them.

Every sample whose verdict came from the grader (status "ok", "no_answer", "timeout" or
"error") is graded again: its stored response against the problem's gold answer, with the
problem's answer order. Verdicts of other kinds ("format": the env's own rule; "unscored") are
kept. ``samples.jsonl`` is never edited: the verdicts that differ from it are written to
``regrade.jsonl`` (rewritten whole on each re-grade) and applied on reading
(:func:`apply_regrades`), so answers, texts and timings cannot change, only verdicts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from envs.grading import Grader, default_grader, grader_version
from evals.sample import EvalSample
from evals.store import REGRADE, RunStore

__all__ = ["RegradeReport", "VerdictChange", "apply_regrades", "regrade_run"]

GRADER_STATUSES = frozenset({"ok", "no_answer", "timeout", "error"})


@dataclass(frozen=True)
class VerdictChange:
    """A sample whose verdict the re-grade changed (from the one in effect before it)."""

    id: str
    answer: str | None
    was_correct: bool
    now_correct: bool
    status: str
    detail: str


@dataclass(frozen=True)
class RegradeReport:
    """What a re-grade did.

    Attributes:
        checked: samples graded again.
        kept: samples whose verdict is not the grader's (kept as they are).
        unavailable: samples the grader could not judge now (their verdict kept).
        changed: verdicts that changed.
        grader_version: the grader that re-graded.
    """

    checked: int
    kept: int
    unavailable: int
    changed: list[VerdictChange]
    grader_version: str


def regrade_run(store: RunStore, grader: Grader | None = None) -> RegradeReport:
    """Re-grade every grader-judged sample of ``store`` and record the verdicts that differ
    from the stored ones (see the module docstring)."""
    grader = grader or default_grader()
    golds = {t.key: t for t in store.problems()}
    original = store.samples()
    before = apply_regrades(store, original)
    judged = [s for s in original.values() if s.score_status in GRADER_STATUSES]
    results = grader.grade_many(
        [
            (golds[s.problem_key].answer, s.response, golds[s.problem_key].answer_order)
            for s in judged
        ]
    )
    overrides: list[dict[str, object]] = []
    changed: list[VerdictChange] = []
    unavailable = 0
    for sample, result in zip(judged, results, strict=True):
        if result.status == "unavailable":
            unavailable += 1
            previous = before[sample.id]
            if previous != sample:  # keep an earlier re-grade's verdict
                overrides.append(_override(previous, grader_version()))
            continue
        now = replace(
            sample,
            correct=result.correct,
            reward=1.0 if result.correct else 0.0,
            score_status=result.status,
            grade_detail=f"{result.method}: {result.detail}",
        )
        if now.correct != sample.correct or now.score_status != sample.score_status:
            overrides.append(_override(now, grader_version()))
        if now.correct != before[sample.id].correct:
            changed.append(
                VerdictChange(
                    sample.id,
                    sample.answer,
                    before[sample.id].correct,
                    now.correct,
                    result.status,
                    now.grade_detail,
                )
            )
    _write_lines(store, overrides)
    return RegradeReport(
        checked=len(judged),
        kept=len(original) - len(judged),
        unavailable=unavailable,
        changed=changed,
        grader_version=grader_version(),
    )


def apply_regrades(store: RunStore, samples: Mapping[str, EvalSample]) -> dict[str, EvalSample]:
    """``samples`` with the verdicts of the run's last re-grade in place of the stored ones."""
    out = dict(samples)
    path = store.path(REGRADE)
    if not path.exists():
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            sample = out.get(record["id"])
            if sample is not None:
                out[record["id"]] = replace(
                    sample,
                    correct=bool(record["correct"]),
                    reward=float(record["reward"]),
                    score_status=str(record["score_status"]),
                    grade_detail=str(record["grade_detail"]),
                )
    return out


def _override(sample: EvalSample, version: str) -> dict[str, object]:
    return {
        "id": sample.id,
        "correct": sample.correct,
        "reward": sample.reward,
        "score_status": sample.score_status,
        "grade_detail": sample.grade_detail,
        "grader_version": version,
    }


def _write_lines(store: RunStore, records: list[dict[str, object]]) -> None:
    path = store.path(REGRADE)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)
