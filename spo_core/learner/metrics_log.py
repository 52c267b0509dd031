"""Per-step metrics: one JSON object per line in ``metrics.jsonl``, the same scalars in
TensorBoard.

A run that resumes opens the same folder and appends: nothing written before is lost. Steps
logged after the last checkpoint and logged again after the resume appear twice in the file;
:func:`read_metrics` keeps the last record of each step.

Names the learning-curve plot reads (:mod:`spo_core.learner.curves`): ``episodes`` (training
episodes so far), ``wall_s`` (training wall seconds so far), ``reward/mean`` and the held-out
figures of :meth:`~spo_core.learner.heldout.HeldoutReport.to_metrics`
(``heldout/greedy_accuracy``, ...).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends each step's metrics to ``run_dir/metrics.jsonl`` and to TensorBoard
    (``run_dir/tb``).

    Args:
        run_dir: the run's folder (created if missing).
        tensorboard: also write TensorBoard event files.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def log(self, step: int, metrics: Mapping[str, float | int | str | None]) -> None:
        """Write one step: ``{"step": step, "time": unix seconds, **metrics}`` as a JSON line
        (flushed), and every finite number of ``metrics`` as a TensorBoard scalar."""
        if self._file.closed:
            raise ValueError("the metrics log is closed")
        record: dict[str, Any] = {"step": int(step), "time": time.time(), **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                if (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self._tb.add_scalar(name, value, global_step=int(step))
            self._tb.flush()

    def close(self) -> None:
        """Flush and close both outputs (idempotent)."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of the run folder holding one), in step order;
    for a step logged more than once (a resumed run), the last record.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line is not a JSON object with an integer ``step``.
    """
    target = Path(path)
    if target.is_dir():
        target = target / METRICS_FILE
    by_step: dict[int, dict[str, Any]] = {}
    with open(target, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{target}:{line_no}: not a JSON line") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError(f"{target}:{line_no}: expected an object with an integer step")
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]
