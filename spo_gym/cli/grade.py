r"""``spo-gym grade``: grade one answer, or a JSONL file of labelled cases."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from envs.grading import AnswerOrder, GradeResult

console = Console(stderr=True)
_ORDERS: tuple[AnswerOrder, ...] = ("notation", "ordered", "unordered")


def _order(value: object) -> AnswerOrder | None:
    return next((o for o in _ORDERS if o == value), None)


@dataclass(frozen=True)
class _Case:
    id: str
    gold: str
    pred: str
    expected: bool | None
    order: AnswerOrder = "notation"
    raw: bool = False


def _read_cases(path: Path) -> list[_Case]:
    """Parse a cases file; raise ``ValueError`` naming the line of the first bad row."""
    cases = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object")
            for field in ("gold", "pred"):
                if not isinstance(row.get(field), str):
                    raise ValueError(f"{where}: field '{field}' must be a string")
            expected = row.get("expected_equal")
            if expected is not None and not isinstance(expected, bool):
                raise ValueError(f"{where}: field 'expected_equal' must be true or false")
            order = _order(row.get("answer_order", "notation"))
            if order is None:
                raise ValueError(
                    f"{where}: field 'answer_order' must be one of {', '.join(_ORDERS)}"
                )
            raw = row.get("raw", False)
            if not isinstance(raw, bool):
                raise ValueError(f"{where}: field 'raw' must be true or false")
            case_id = str(row.get("id", number))
            cases.append(_Case(case_id, row["gold"], row["pred"], expected, order, raw))
    return cases


def grade(
    gold: str | None = typer.Argument(None, help="The gold answer."),
    pred: str | None = typer.Argument(
        None, help="A response whose last \\boxed{} is graded (see --raw)."
    ),
    cases: Path | None = typer.Option(
        None,
        "--cases",
        help="JSONL file: {gold, pred, expected_equal?, id?, answer_order?, raw?} per line, "
        "graded in parallel.",
    ),
    json_lines: bool = typer.Option(
        False, "--json", help="Print one JSON object per case on stdout (summary on stderr)."
    ),
    raw: bool = typer.Option(False, "--raw", help="PRED is the answer itself, not a response."),
    order: str = typer.Option(
        "notation",
        "--order",
        help="Whether the order of a list answer matters: notation (a set is unordered, a "
        "tuple or list ordered), ordered, unordered. A cases row's answer_order overrides it.",
    ),
    workers: int = typer.Option(2, min=1, help="math-verify worker processes."),
    timeout: float = typer.Option(
        5.0, min=0.01, help="CPU seconds math-verify may spend on one answer."
    ),
) -> None:
    r"""Grade GOLD against PRED, or every case of a --cases file.

    Exit status: for one pair 0 if PRED is graded correct, else 1; for --cases 0, or 2 if the
    file cannot be read.
    """
    from envs.grading import Grader, GradeRequest

    default_order = _order(order)
    if default_order is None:
        console.print(f"[red]error:[/red] --order must be one of {', '.join(_ORDERS)}")
        raise typer.Exit(2)
    if (cases is None) == (gold is None or pred is None):
        console.print("[red]error:[/red] give GOLD and PRED, or --cases FILE (not both)")
        raise typer.Exit(2)
    if cases is not None:
        try:
            rows = _read_cases(cases)
        except (OSError, ValueError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from exc
    else:
        assert gold is not None and pred is not None
        rows = [_Case("1", gold, pred, None, default_order)]

    def request(case: _Case) -> GradeRequest:
        return (case.gold, case.pred, case.order if case.order != "notation" else default_order)

    with Grader(workers=workers, timeout=timeout) as grader:
        start = time.perf_counter()
        # Rows marked raw (or all, with --raw) hold answers; the others whole responses.
        answers = [i for i, c in enumerate(rows) if raw or c.raw]
        responses = [i for i, c in enumerate(rows) if not (raw or c.raw)]
        graded: dict[int, GradeResult] = {}
        for indices, extract in ((answers, False), (responses, True)):
            verdicts = grader.grade_many([request(rows[i]) for i in indices], extract=extract)
            graded.update(zip(indices, verdicts, strict=True))
        results = [graded[i] for i in range(len(rows))]
        elapsed = time.perf_counter() - start

    if json_lines:
        for case, result in zip(rows, results, strict=True):
            record = {
                "id": case.id,
                "correct": result.correct,
                "status": result.status,
                "method": result.method,
            }
            sys.stdout.write(json.dumps(record) + "\n")
    elif cases is None:
        result = results[0]
        verdict = "[green]correct[/green]" if result.correct else "[red]wrong[/red]"
        Console().print(
            f"{verdict}  status={result.status}  method={result.method}  {escape(result.detail)}"
        )
    else:
        table = Table("id", "verdict", "expected", "status", "method", "detail")
        for case, result in zip(rows, results, strict=True):
            verdict = "[green]correct[/green]" if result.correct else "[red]wrong[/red]"
            expected = "" if case.expected is None else str(case.expected).lower()
            if case.expected is not None and case.expected != result.correct:
                expected = f"[yellow]{expected} (mismatch)[/yellow]"
            table.add_row(
                escape(case.id),
                verdict,
                expected,
                result.status,
                result.method,
                escape(result.detail[:80]),
            )
        Console().print(table)

    labelled = [(c, r) for c, r in zip(rows, results, strict=True) if c.expected is not None]
    if labelled:
        agree = sum(c.expected == r.correct for c, r in labelled)
        console.print(f"accuracy {agree / len(labelled):.1%} ({agree}/{len(labelled)} labelled)")
    if cases is not None:
        rate = len(rows) / elapsed if elapsed > 0 else float("inf")
        console.print(f"{len(rows)} answers in {elapsed:.2f} s ({rate:.1f} answers/s)")
    else:
        raise typer.Exit(0 if results[0].correct else 1)
