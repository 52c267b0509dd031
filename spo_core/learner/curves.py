"""The learning-curve figure: held-out accuracy against training episodes and against wall
time, and the training reward, for one run or several on the same axes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spo_core.learner.metrics_log import read_metrics

__all__ = ["plot_learning_curves"]

Records = Sequence[Mapping[str, Any]]


def _series(records: Records, x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the records that carry a finite number for both."""
    xs: list[float] = []
    ys: list[float] = []
    for r in records:
        a, b = r.get(x), r.get(y)
        if isinstance(a, int | float) and isinstance(b, int | float):
            xs.append(float(a))
            ys.append(float(b))
    return xs, ys


def plot_learning_curves(
    runs: Mapping[str, str | os.PathLike[str] | Records],
    out: str | os.PathLike[str],
    *,
    accuracy: str = "heldout/greedy_accuracy",
    reward: str = "reward/mean",
    episodes: str = "episodes",
    wall: str = "wall_s",
    title: str | None = None,
    offsets: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write a PNG with three panels — ``accuracy`` vs ``episodes``, ``accuracy`` vs ``wall``
    (minutes) and ``reward`` vs ``episodes`` — one line per run.

    Args:
        runs: label → a ``metrics.jsonl``, its run folder, or records already read.
        out: the PNG to write (its folder is created).
        accuracy / reward / episodes / wall: the metric names to plot.
        title: the figure's title.
        offsets: label → (episodes, seconds) spent before training, added to that run's x
            values: SPO's offline episodes counted in its budget (runs not named: none).

    Returns:
        ``out`` as a path.

    Raises:
        ValueError: no runs, or no run has a held-out accuracy to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("no runs to plot")
    loaded = {
        label: read_metrics(src) if isinstance(src, str | os.PathLike) else list(src)
        for label, src in runs.items()
    }
    if not any(_series(r, episodes, accuracy)[0] for r in loaded.values()):
        raise ValueError(f"no run has both {episodes!r} and {accuracy!r} to plot")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    shift = dict(offsets or {})
    what = "episodes, offline included" if offsets else "training episodes"
    when = "wall time, offline included (min)" if offsets else "training wall time (min)"
    panels = (
        (axes[0], episodes, accuracy, 1.0, 0, what, "held-out accuracy"),
        (axes[1], wall, accuracy, 60.0, 1, when, "held-out accuracy"),
        (axes[2], episodes, reward, 1.0, 0, what, "training reward (mean)"),
    )
    for ax, x, y, scale, which, xlabel, ylabel in panels:
        for label, records in loaded.items():
            xs, ys = _series(records, x, y)
            offset = shift.get(label, (0.0, 0.0))[which]
            if xs:
                ax.plot(
                    [(v + offset) / scale for v in xs], ys, marker="o", markersize=3, label=label
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target
