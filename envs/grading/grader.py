r"""The grader: the answer of a response (or an answer) against a gold answer.

An answer is graded in steps, cheapest first:

1. **string** — both answers normalised (:func:`~envs.grading.normalize.normalize_answer`) and
   compared as strings;
2. **numeric** / **structure** — plain numbers compared exactly (a percent sign on one side
   reads both ways, ``10%`` = 10 = 0.1; a decimal comma reads as a decimal point), lists,
   tuples, intervals and sets part by part with their order (:mod:`envs.grading.compare`);
3. **math_verify** — what is left goes to math-verify in worker processes
   (:mod:`envs.grading.pool`), with the gold wrapped in ``\boxed{}`` so it parses as LaTeX.
   Two exact rationals (no decimals written) are compared exactly there, since math-verify
   rounds to 6 decimals (``1/2^99`` would equal ``1/2^98``).

Steps 1–2 run in the caller and take microseconds.

Every outcome is a status. "timeout" and "error" are the answer's doing (it used the whole CPU
budget, or made math-verify fail); "unavailable" is not: the grader could not run (workers
that will not start, keep dying or cannot get CPU time, after retries) or the gold answer has
no reading — an environment must not score such an answer, it masks the episode.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from envs.grading.compare import AnswerOrder, Failure, Leaf, Plan, evaluate, leaves, plan
from envs.grading.extract import extract_boxed, is_prose, stated_answer
from envs.grading.normalize import (
    ELLIPSIS,
    as_number,
    comma_decimal,
    is_plain,
    light_latex,
    normalize_answer,
    split_items,
)
from envs.grading.pool import PoolResult, WorkerPool

__all__ = [
    "GradeMethod",
    "GradeResult",
    "GradeStatus",
    "Grader",
    "GraderUnavailable",
    "agrade",
    "default_grader",
    "grade",
    "grade_many",
]

GradeStatus = Literal["ok", "no_answer", "timeout", "error", "unavailable"]
GradeMethod = Literal["string", "numeric", "structure", "math_verify", "none"]
GradeRequest = tuple[str, str] | tuple[str, str, AnswerOrder]
"""(gold, pred) or (gold, pred, order) for :meth:`Grader.grade_many`."""

_CHECK_BATCH = 64  # gold answers per worker request when checking a task set
_CHECK_PART_S = 0.25  # CPU seconds per further gold in a batch (a parse takes milliseconds)


@dataclass(frozen=True)
class GradeResult:
    r"""The verdict on one answer.

    Attributes:
        correct: whether the answer matches the gold. Always ``False`` unless ``status`` is "ok".
        method: the step that decided: "string", "numeric", "structure" (parts of a list, or
            a rule on the written form), "math_verify", or "none" when no step could decide.
        status: "ok" (a verdict was reached), "no_answer" (no usable ``\boxed{}``), "timeout"
            (the answer used math-verify's whole CPU budget), "error" (math-verify failed on
            the answer), or "unavailable" (no verdict for reasons outside the answer: the
            grader could not run after retries, or the gold answer cannot be read).
        detail: a human-readable explanation: the extracted answer, or what went wrong.
    """

    correct: bool
    method: GradeMethod
    status: GradeStatus
    detail: str = ""


class GraderUnavailable(RuntimeError):
    """The grader could not run (its workers would not start or keep failing)."""


@dataclass(frozen=True)
class _Job:
    gold: str
    answer: str
    plan: Plan


class Grader:
    """Grades answers; owns a small pool of math-verify worker processes.

    Workers are spawned lazily (the first answer that needs math-verify pays ~1 s) and replaced
    when one overruns its budget or dies. Safe to share between threads and event loops.
    Close it (or use it as a context manager) to stop the workers.

    Args:
        workers: maximum number of math-verify processes (and answers graded in parallel).
        timeout: CPU seconds math-verify may spend on one answer. It is CPU time, not wall
            time, so that a machine busy with rollouts does not turn slow answers into
            timeouts; a wall-clock backstop (:data:`~envs.grading.pool.WALL_FACTOR` × ``timeout``,
            doubled on each retry) still bounds every wait.
        memory_limit_mb: address-space limit per worker (``None``: unlimited); an answer that
            exceeds it is graded "error".
        retries: further attempts when a worker will not start, is found broken, dies, or is
            starved of CPU; after them the answer is graded "unavailable".
    """

    def __init__(
        self,
        workers: int = 2,
        timeout: float = 5.0,
        memory_limit_mb: int | None = 4096,
        retries: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.workers = workers
        self.timeout = timeout
        self.memory_limit_mb = memory_limit_mb
        self.retries = retries
        self._pool = WorkerPool(workers, timeout, memory_limit_mb, retries)
        self._lock = threading.Lock()
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None

    # -- public API

    def grade(
        self, gold: str, pred: str, *, extract: bool = True, order: AnswerOrder = "notation"
    ) -> GradeResult:
        r"""Grade one prediction against the gold answer.

        Args:
            gold: the reference answer (see :func:`~envs.grading.extract.stated_answer`:
                its boxes, or the math in its prose, or the text).
            pred: a model response whose last ``\boxed{}`` is the answer, or, with
                ``extract=False``, the answer itself (read like ``gold``).
            order: whether the order of a list answer matters (:data:`AnswerOrder`).
        """
        job = self._prepare(gold, pred, extract, order)
        return job if isinstance(job, GradeResult) else self._finish(job)

    def grade_many(
        self, requests: Iterable[GradeRequest], *, extract: bool = True
    ) -> list[GradeResult]:
        """Grade (gold, pred) or (gold, pred, order) requests, math-verify ones in parallel;
        results in input order."""
        results: list[GradeResult | _Job] = []
        for request in requests:
            order: AnswerOrder = request[2] if len(request) == 3 else "notation"
            results.append(self._prepare(request[0], request[1], extract, order))
        pending = [(i, job) for i, job in enumerate(results) if isinstance(job, _Job)]
        if pending:
            executor = self._get_executor()
            futures = [(i, executor.submit(self._finish, job)) for i, job in pending]
            for i, future in futures:
                results[i] = future.result()
        return [r for r in results if isinstance(r, GradeResult)]

    async def agrade(
        self, gold: str, pred: str, *, extract: bool = True, order: AnswerOrder = "notation"
    ) -> GradeResult:
        """Async :meth:`grade`: the inline steps run here, math-verify in a thread."""
        job = self._prepare(gold, pred, extract, order)
        if isinstance(job, GradeResult):
            return job
        return await asyncio.to_thread(self._finish, job)

    def check_golds(self, golds: Sequence[str]) -> list[str | None]:
        """Whether each gold answer can be graded: ``None`` if so, else why not.

        A gold cannot be graded when it is empty, or when some part of it (the whole, or each
        part of a list) is neither a plain number or word, which the string and numeric steps
        judge, nor text math-verify can parse into an expression (within the CPU budget):
        such a gold would grade every answer wrong.

        Raises:
            GraderUnavailable: the workers could not run, after retries.
        """
        distinct = list(dict.fromkeys(golds))  # datasets repeat answers ("2", "1/2") a lot
        reasons: dict[str, str | None] = dict.fromkeys(distinct)
        parts_of: dict[str, list[tuple[str, bool]]] = {}
        for gold in distinct:
            stated = stated_answer(gold)
            if not normalize_answer(stated):
                reasons[gold] = "the answer is empty"
            elif is_prose(stated):
                parts_of[gold] = [(stated, True)]
            else:
                parts_of[gold] = [
                    (p, False) for p in _parts_needing_math_verify(light_latex(stated))
                ]
        verdicts = self._check_parts(list(dict.fromkeys(p for ps in parts_of.values() for p in ps)))
        for gold, parts in parts_of.items():
            bad = next((p for p in parts if verdicts[p]), None)
            if bad is not None:
                reasons[gold] = f"{bad[0]!r}: {verdicts[bad]}"
        return [reasons[gold] for gold in golds]

    def worker_pids(self) -> list[int]:
        """Process ids of the running math-verify workers (for monitoring)."""
        return self._pool.pids()

    def close(self) -> None:
        """Stop all workers. Calls in flight finish; later calls raise ``RuntimeError``."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        self._pool.close()
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals

    def _prepare(
        self, gold: str, pred: str, extract: bool, order: AnswerOrder
    ) -> GradeResult | _Job:
        if self._closed:
            raise RuntimeError("the grader is closed")
        gold_answer = stated_answer(gold)
        if not normalize_answer(gold_answer):
            return GradeResult(False, "none", "unavailable", f"the gold answer {gold!r} is empty")
        answer = (extract_boxed(pred) or "") if extract else stated_answer(pred)
        if not normalize_answer(answer):
            why = "no \\boxed{} answer in the response" if extract else "the answer is empty"
            return GradeResult(False, "none", "no_answer", why)
        gold_prose = is_prose(gold_answer)
        answer_prose = not extract and is_prose(answer)
        decided = plan(gold_answer, answer, order, gold_prose=gold_prose, answer_prose=answer_prose)
        if isinstance(decided.node, bool):
            return GradeResult(decided.node, decided.method, "ok", f"answer {answer!r}")
        return _Job(gold_answer, answer, decided)

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the grader is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="grader")
            return self._executor

    def _finish(self, job: _Job) -> GradeResult:
        needed = leaves(job.plan.node)
        items = [(leaf.gold, leaf.answer, leaf.gold_prose, leaf.answer_prose) for leaf in needed]
        result = self._pool.run(("verify", items))
        if result.status != "ok" or result.replies is None:
            return _failed(result)
        verdicts: dict[Leaf, bool | Failure] = {}
        for leaf, (verdict, detail) in zip(needed, result.replies, strict=True):
            if verdict == "error":
                verdicts[leaf] = Failure("error", detail)
            elif verdict == "gold":
                # A gold with no mathematical reading: judged by the string step alone if it
                # is plain words or digits, else it cannot be graded at all.
                plain = is_plain(normalize_answer(leaf.gold))
                verdicts[leaf] = False if plain else Failure("unavailable", detail)
            else:
                verdicts[leaf] = verdict == "true"
        value = evaluate(job.plan.node, verdicts)
        if isinstance(value, Failure):
            return GradeResult(False, "none", value.status, value.detail)
        return GradeResult(value, "math_verify", "ok", f"answer {job.answer!r}")

    def _check_parts(self, parts: list[tuple[str, bool]]) -> dict[tuple[str, bool], str | None]:
        """math-verify's reading of each (part, prose): ``None`` if it has one, else why not."""
        found: dict[tuple[str, bool], str | None] = {}
        batches = [parts[i : i + _CHECK_BATCH] for i in range(0, len(parts), _CHECK_BATCH)]
        if not batches:
            return found
        executor = self._get_executor()
        for batch, result in zip(batches, executor.map(self._check_batch, batches), strict=True):
            found.update(zip(batch, result, strict=True))
        return found

    def _check_batch(self, batch: list[tuple[str, bool]]) -> list[str | None]:
        # Parsing is what a gold costs on every answer it grades: a part may use the whole
        # budget of an answer; a batch that overruns is split until the culprit is found.
        budget = self.timeout + _CHECK_PART_S * (len(batch) - 1)
        result = self._pool.run(("check", batch), cpu_budget=budget)
        if result.status == "timeout" and len(batch) > 1:
            half = len(batch) // 2
            return self._check_batch(batch[:half]) + self._check_batch(batch[half:])
        if result.status == "timeout":
            return [f"math-verify takes more than {self.timeout:g} s of CPU to parse it"]
        if result.status != "ok" or result.replies is None:
            raise GraderUnavailable(f"cannot check gold answers: {result.detail}")
        reasons: list[str | None] = []
        for part, (verdict, detail) in zip(batch, result.replies, strict=True):
            ok = verdict == "ok" or is_plain(normalize_answer(part[0]))
            reasons.append(None if ok else f"{detail}, and it is not a plain number or word")
        return reasons


def _parts_needing_math_verify(gold: str) -> list[str]:
    """The parts of a gold (:func:`light_latex`) that only math-verify can read: not numbers,
    not ellipses."""
    if gold == ELLIPSIS or comma_decimal(gold) is not None:
        return []
    if as_number(normalize_answer(gold)) is not None:
        return []
    items = split_items(gold)
    if items is None:
        return [gold]
    return [p for part in items.parts for p in _parts_needing_math_verify(part)]


def _failed(result: PoolResult) -> GradeResult:
    status: GradeStatus = "unavailable" if result.status == "ok" else result.status
    return GradeResult(False, "none", status, result.detail)


# --------------------------------------------------------------------------- module API

_default_lock = threading.Lock()
_default: Grader | None = None


def default_grader() -> Grader:
    """The process-wide grader behind :func:`grade`, created on first use, closed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader()
            atexit.register(_default.close)
        return _default


def grade(
    gold: str, pred: str, *, extract: bool = True, order: AnswerOrder = "notation"
) -> GradeResult:
    """Grade one prediction with the default grader (see :meth:`Grader.grade`)."""
    return default_grader().grade(gold, pred, extract=extract, order=order)


def grade_many(requests: Iterable[GradeRequest], *, extract: bool = True) -> list[GradeResult]:
    """Grade many (gold, pred[, order]) requests in parallel with the default grader."""
    return default_grader().grade_many(requests, extract=extract)


async def agrade(
    gold: str, pred: str, *, extract: bool = True, order: AnswerOrder = "notation"
) -> GradeResult:
    """Async :func:`grade` with the default grader."""
    return await default_grader().agrade(gold, pred, extract=extract, order=order)
