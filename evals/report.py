"""Summaries as text: Markdown (``summary.md``, comparisons) and rich tables (the terminal)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table

from evals.compare import PairComparison
from evals.summary import EvalSummary, MetricPoint

__all__ = ["comparison_markdown", "comparison_table", "markdown_summary", "summary_table"]


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _with_ci(p: MetricPoint) -> str:
    if math.isnan(p.value):
        return "–"
    return f"{_pct(p.value)} [{_pct(p.ci_low)}, {_pct(p.ci_high)}]"


def _rows(s: EvalSummary) -> list[tuple[str, str]]:
    """(figure, value) rows shared by the Markdown and the terminal table."""
    rows = [
        ("problems", f"{s.problems}"),
        ("samples", f"{s.samples} finished, {s.lost} lost to infrastructure"),
        (
            f"avg@{s.k}",
            f"{_with_ci(s.avg)} (sd {_pct(s.avg_std)}, se {_pct(s.avg_stderr)})",
        ),
    ]
    for p in s.pass_at:
        rows.append((f"pass@{p.k}", f"{_with_ci(p)} over {p.problems}"))
    for p in s.maj_at:
        mc = f", MC se {_pct(p.mc_stderr)}" if p.mc_stderr else ""
        rows.append(
            (f"maj@{p.k}", f"{_with_ci(p)} over {p.problems}; ties {_pct(p.tie_share)}%{mc}")
        )
    t = s.tool_use
    rows += [
        (
            "tool use",
            f"{_pct(t['share_with_code'])}% of samples ran code, {t['mean_cells']:.2f} cells each; "
            f"right {_pct(t['accuracy_with_code'])}% with code, "
            f"{_pct(t['accuracy_without_code'])}% without",
        ),
        ("cell status", _counts(t["cell_status"])),
        (
            "time (s, summed)",
            " · ".join(f"{name} {secs:.1f}" for name, secs in s.time_s.items()),
        ),
        ("ended by", _counts(s.termination)),
        ("verdicts", _counts(s.score_status)),
        ("per sample", f"{s.mean_turns:.2f} turns, {s.mean_model_tokens:.0f} model tokens"),
    ]
    if s.lost:
        rows.append(("lost because", _counts(s.lost_reasons)))
    return rows


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "–"


def markdown_summary(s: EvalSummary) -> str:
    """``summary.md``: the figures, then one row per problem."""
    lines = [f"# {s.run_id}", "", "| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _rows(s)]
    lines += [
        "",
        "Intervals are 95% bootstrap intervals over problems; per-problem intervals are Wilson.",
        "",
        "| problem | right / n | rate [95% CI] | lost | majority answer | majority right | answers |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in s.per_problem:
        ci = f" [{_pct(p.rate_ci[0])}, {_pct(p.rate_ci[1])}]" if p.rate_ci else ""
        answer = (p.majority or "–").replace("|", "\\|")
        lines.append(
            f"| `{p.key}` | {p.correct} / {p.n} | {_pct(p.rate)}{ci} | {p.lost} | {answer} | "
            f"{'yes' if p.majority_correct else 'no'} | {p.classes} |"
        )
    return "\n".join(lines) + "\n"


def summary_table(s: EvalSummary) -> Table:
    """The figures as a rich table."""
    table = Table(title=f"spo-gym eval · {s.run_id}", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    for name, value in _rows(s):
        table.add_row(name, value)
    return table


def _side_rows(summaries: Sequence[EvalSummary]) -> list[tuple[str, list[str]]]:
    k = summaries[0].k
    rows = [(f"avg@{k}", [_with_ci(s.avg) for s in summaries])]
    for metric, name in (("pass", "pass"), ("maj", "maj")):
        for kk in [p.k for p in summaries[0].pass_at]:
            cells = []
            for s in summaries:
                point = s.point(metric, kk)
                cells.append(_with_ci(point) if point else "–")
            rows.append((f"{name}@{kk}", cells))
    rows.append(("lost", [str(s.lost) for s in summaries]))
    return rows


def comparison_markdown(
    summaries: Sequence[EvalSummary], labels: Sequence[str], pairs: Sequence[PairComparison]
) -> str:
    """Side-by-side figures, then each paired comparison."""
    lines = ["| figure | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in _side_rows(summaries)]
    for pair in pairs:
        d = pair.avg
        lines += [
            "",
            f"## {pair.b} − {pair.a} ({pair.problems} shared problems)",
            "",
            f"- per-problem success rate: {_signed(d.difference)} points "
            f"[{_signed(d.ci_low)}, {_signed(d.ci_high)}] (paired bootstrap 95%), "
            f"p = {d.p_value:.3f}",
            f"- solved only by {pair.a}: {len(pair.only_a)}"
            + (f" ({', '.join(f'`{k}`' for k in pair.only_a)})" if pair.only_a else ""),
            f"- solved only by {pair.b}: {len(pair.only_b)}"
            + (f" ({', '.join(f'`{k}`' for k in pair.only_b)})" if pair.only_b else ""),
        ]
    return "\n".join(lines) + "\n"


def comparison_table(summaries: Sequence[EvalSummary], labels: Sequence[str]) -> Table:
    """Side-by-side figures as a rich table."""
    table = Table(title="spo-gym eval · side by side")
    table.add_column("figure", style="bold")
    for label in labels:
        table.add_column(label)
    for name, cells in _side_rows(summaries):
        table.add_row(name, *cells)
    return table


def _signed(x: float) -> str:
    return f"{100 * x:+.1f}"
