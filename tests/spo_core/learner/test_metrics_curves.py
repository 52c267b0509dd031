"""The metrics log (JSONL and TensorBoard, resume appends) and the learning-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from spo_core.learner.curves import plot_learning_curves
from spo_core.learner.metrics_log import MetricsLog, read_metrics


def test_metrics_round_trip_and_resume_appends(tmp_path: Path) -> None:
    with MetricsLog(tmp_path) as log:
        log.log(1, {"reward/mean": 0.25, "episodes": 16, "method": "SPO"})
        log.log(2, {"reward/mean": 0.5, "episodes": 32, "heldout/greedy_accuracy": 0.4})
        # flushed per step: readable before close
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with MetricsLog(tmp_path) as log:  # resumed after a checkpoint at step 1
        log.log(2, {"reward/mean": 0.75, "episodes": 32})
        log.log(3, {"reward/mean": float("nan"), "episodes": 48})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["method"] == "SPO"
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["reward/mean"] == 0.75 and "heldout/greedy_accuracy" not in records[1]
    assert records[0]["episodes"] == 16 and records[0]["time"] > 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    reward = [(e.step, e.value) for e in events.Scalars("reward/mean")]
    assert reward == [(1, 0.25), (2, 0.5), (2, 0.75)]  # NaN is not sent to TensorBoard
    assert [(e.step, e.value) for e in events.Scalars("heldout/greedy_accuracy")] == [
        (2, pytest.approx(0.4))
    ]
    with pytest.raises(ValueError, match="closed"):
        log.log(4, {})


def test_read_metrics_rejects_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected an object"):
        read_metrics(path)
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match="not a JSON line"):
        read_metrics(path)


def test_learning_curve_png_several_runs(tmp_path: Path) -> None:
    for seed, slope in ((0, 0.01), (1, 0.02)):
        with MetricsLog(tmp_path / f"spo-{seed}", tensorboard=False) as log:
            for step in range(1, 6):
                metrics: dict[str, float] = {
                    "episodes": 64.0 * step,
                    "wall_s": 30.0 * step,
                    "reward/mean": 0.3 + slope * step,
                }
                if step % 2 == 1:
                    metrics["heldout/greedy_accuracy"] = 0.2 + slope * step
                log.log(step, metrics)
    grpo = [
        {"step": 1, "episodes": 64, "wall_s": 50.0, "heldout/greedy_accuracy": 0.2},
        {"step": 2, "episodes": 128, "wall_s": 100.0, "heldout/greedy_accuracy": 0.25},
    ]
    out = plot_learning_curves(
        {"SPO seed 0": tmp_path / "spo-0", "SPO seed 1": tmp_path / "spo-1", "GRPO": grpo},
        tmp_path / "plots" / "curves.png",
        title="held-out accuracy",
    )
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 300


def test_learning_curve_needs_accuracy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run has both"):
        plot_learning_curves({"a": [{"step": 1, "episodes": 8}]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no runs"):
        plot_learning_curves({}, tmp_path / "x.png")


def test_offsets_move_a_run_along_the_budget_axes(tmp_path: Path) -> None:
    spo = [
        {"step": 1, "episodes": 64, "wall_s": 50.0, "heldout/greedy_accuracy": 0.2},
        {"step": 2, "episodes": 128, "wall_s": 100.0, "heldout/greedy_accuracy": 0.4},
    ]
    grpo = [dict(r, **{"heldout/greedy_accuracy": 0.3}) for r in spo]
    runs = {"SPO": spo, "GRPO": grpo}
    plain = plot_learning_curves(runs, tmp_path / "plain.png")
    again = plot_learning_curves(runs, tmp_path / "again.png", offsets={})
    moved = plot_learning_curves(runs, tmp_path / "moved.png", offsets={"SPO": (512.0, 60.0)})
    with Image.open(plain) as a, Image.open(again) as b, Image.open(moved) as c:
        assert a.size == b.size == c.size
        assert a.tobytes() == b.tobytes()  # no offset: the same picture
        assert a.tobytes() != c.tobytes()  # the SPO line (and the axis labels) moved
