r"""Math answer grading: the last ``\boxed{}`` of a response (or an answer) against a gold.

* :mod:`~envs.grading.extract` — where the answer is in a text;
* :mod:`~envs.grading.normalize` — LaTeX clean-up, canonical strings, numbers, lists;
* :mod:`~envs.grading.compare` — what is decided without math-verify, and list order
  (:data:`AnswerOrder`);
* :mod:`~envs.grading.pool` / :mod:`~envs.grading.worker` — math-verify in worker processes,
  with CPU budgets and retries;
* :mod:`~envs.grading.grader` — :class:`Grader`, its statuses, and the default grader;
* :mod:`~envs.grading.voting` — equivalence classes, majority voting, pass@k;
* :mod:`~envs.grading.version` — the grader's version (a hash of its source).
"""

from envs.grading.compare import AnswerOrder
from envs.grading.extract import extract_boxed, stated_answer
from envs.grading.grader import (
    GradeMethod,
    Grader,
    GradeRequest,
    GradeResult,
    GraderUnavailable,
    GradeStatus,
    agrade,
    default_grader,
    grade,
    grade_many,
)
from envs.grading.normalize import normalize_answer
from envs.grading.pool import WALL_FACTOR
from envs.grading.version import grader_version
from envs.grading.voting import equivalence_classes, majority_vote, pass_at_k

__all__ = [
    "WALL_FACTOR",
    "AnswerOrder",
    "GradeMethod",
    "GradeRequest",
    "GradeResult",
    "GradeStatus",
    "Grader",
    "GraderUnavailable",
    "agrade",
    "default_grader",
    "equivalence_classes",
    "extract_boxed",
    "grade",
    "grade_many",
    "grader_version",
    "majority_vote",
    "normalize_answer",
    "pass_at_k",
    "stated_answer",
]
