"""pass@k and maj@k curves with their bootstrap bands, one run or several overlaid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from evals.summary import EvalSummary

__all__ = ["plot_pass_at_k"]


def plot_pass_at_k(
    summaries: Sequence[EvalSummary], path: Path, labels: Sequence[str] | None = None
) -> None:
    """Draw pass@k (solid, 95% band) and maj@k (dashed) against k (log scale) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels is not None else [s.run_id for s in summaries]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for index, (summary, label) in enumerate(zip(summaries, labels, strict=True)):
        color = f"C{index}"
        points = [p for p in summary.pass_at if not math.isnan(p.value)]
        ks = [p.k for p in points]
        ax.plot(ks, [100 * p.value for p in points], "o-", color=color, label=f"{label} pass@k")
        ax.fill_between(
            ks,
            [100 * p.ci_low for p in points],
            [100 * p.ci_high for p in points],
            color=color,
            alpha=0.15,
        )
        majors = [p for p in summary.maj_at if not math.isnan(p.value)]
        ax.plot(
            [p.k for p in majors],
            [100 * p.value for p in majors],
            "s--",
            color=color,
            alpha=0.8,
            label=f"{label} maj@k",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("% of problems")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("pass@k and maj@k (bands: 95% bootstrap over problems)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
