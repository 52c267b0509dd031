"""What runs inside a grader worker process: math-verify on batches of comparisons.

The process is started by :mod:`envs.grading.pool`, which loads this file on its own (not
through the ``envs`` package, whose other imports a worker does not need): it imports only
the standard library at top level, and math-verify and sympy in :func:`serve`.

Protocol, over two pipes of pickled objects: a request is
``("verify", [(gold, answer, gold_prose, answer_prose), …])`` or ``("check", [(gold, prose), …])``,
answered by one list with a result per item; ``None`` stops the worker. An answer is parsed
as LaTeX wrapped in ``\boxed{}``, or, when flagged as prose, with math-verify's own
extraction of a final answer from text. Results:

* verify: ``("true" | "false", detail)``, ``("error", detail)`` when math-verify fails on
  the answer, ``("gold", detail)`` when the gold has no mathematical reading;
* check: ``("ok", "")`` or ``("gold", detail)``.
"""

from __future__ import annotations

import contextlib
import logging
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["serve"]


def serve(read_fd: int, write_fd: int, memory_limit_mb: int) -> None:
    """Worker loop on the two inherited pipe descriptors, until ``None`` or the parent leaves."""
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Timeouts are disabled on purpose (the parent enforces them); silence the warning about it.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from sympy import Basic, Expr, MatrixBase, Rational

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    prose_config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parse_answer(text: str, prose: bool) -> list[Any]:
        """The expressions math-verify reads in an answer (no raw-string fallback)."""
        if prose:
            return mathematical(
                parse(text, prose_config, parsing_timeout=None, raise_on_error=True)
            )
        found = mathematical(
            parse("\\boxed{" + text + "}", config, parsing_timeout=None, raise_on_error=True)
        )
        if not found:  # some LaTeX (a percent sign) math-verify reads only between dollars
            found = mathematical(
                parse("$" + text + "$", prose_config, parsing_timeout=None, raise_on_error=True)
            )
        return found

    def mathematical(parsed: list[Any]) -> list[Any]:
        # math-verify falls back to the raw string when sympy cannot read the text
        return [p for p in parsed if isinstance(p, Basic | MatrixBase)]

    def exact_value(expr: Any, text: str) -> Any:
        """The exact rational value of a number written without decimals, else None."""
        if "." in text or not isinstance(expr, Expr) or not expr.is_number:
            return None
        try:
            if not expr.is_rational:
                return None
            value = expr.doit()
        except (OverflowError, ValueError):
            return None  # too large to evaluate exactly: math-verify decides, under the deadline
        return value if isinstance(value, Rational) else None

    parse_gold = lru_cache(maxsize=1024)(parse_answer)

    def compare(gold: str, answer: str, gold_prose: bool, answer_prose: bool) -> tuple[str, str]:
        try:
            gold_parsed = parse_gold(gold, gold_prose)
        except MemoryError:
            raise
        except Exception as e:  # a parser crash on the gold: the gold cannot be read
            return "gold", f"math-verify cannot parse the gold {gold!r} ({type(e).__name__})"
        if not gold_parsed:
            return "gold", f"math-verify cannot parse the gold {gold!r}"
        answer_parsed = parse_answer(answer, answer_prose)
        if not answer_parsed:
            return "false", f"math-verify found no expression in {answer!r}"
        exact = exact_value(gold_parsed[0], gold), exact_value(answer_parsed[0], answer)
        if exact[0] is not None and exact[1] is not None:
            # Exact rationals compare exactly: math-verify rounds to 6 decimals, which makes
            # 1/2^99 equal 1/2^98.
            ok = exact[0] == exact[1]
        else:
            ok = verify(gold_parsed, answer_parsed, timeout_seconds=None, raise_on_error=True)
        return ("true" if ok else "false"), f"answer {answer!r}"

    def check(gold: str, prose: bool) -> tuple[str, str]:
        """Whether answers can be graded against ``gold``: it parses, and a comparison with
        it (against 0) finishes; the parent's CPU budget bounds the request."""
        try:
            readable = bool(parse_gold(gold, prose))
        except MemoryError:
            raise
        except Exception as e:
            return "gold", f"math-verify cannot parse it ({type(e).__name__}: {e})"[:300]
        if not readable:
            return "gold", "math-verify finds no expression in it"
        with contextlib.suppress(Exception):  # a failure on one answer says nothing of others
            compare(gold, "0", prose, False)
        return "ok", ""

    def guarded(call: Any, *args: Any) -> tuple[str, str]:
        try:
            result: tuple[str, str] = call(*args)
        except MemoryError:
            return "error", "math-verify ran out of memory"
        except Exception as e:  # any sympy failure on the answer is reported, not raised
            return "error", f"math-verify failed: {type(e).__name__}: {e}"[:500]
        return result

    # Warm the LaTeX parser and sympy's simplification before reporting ready, so that the
    # first real answer is not charged for them.
    verify(parse_gold("(x+1)^2", False), parse_answer("x^2+2x+1", False), timeout_seconds=None)
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    outbox.send(("ready", ""))
    while True:
        try:
            request = inbox.recv()
        except EOFError:
            return  # the grader's process is gone
        if request is None:
            return
        kind, items = request
        call = compare if kind == "verify" else check
        outbox.send([guarded(call, *item) for item in items])
