"""The learning-curve experiment: SPO vs GRPO and SPO's ablations on the nano model.

Every configuration is one ``spo-gym train`` run (the main job, quiet) at the same training
episode budget, from the same cached warm start, offline values, tiers and held-out set; runs
go one after another (2 cores: never two at once). Per run it reads the final JSON line and the
run's ``metrics.jsonl``; it then prints a Markdown table (final held-out greedy accuracy with
its spread over seeds, wasted-sample shares, advantage variance, wall time, rollout/learner
waits) and writes the plot and ``summary.json`` into ``--out``.

The baseline of the ratio keys is GRPO measured in the same run: ``spo_vs_grpo_accuracy_ratio``
(final greedy accuracy, SPO over GRPO) and ``spo_vs_grpo_wasted_ratio`` (zero-advantage share
of SPO over GRPO's degenerate-group share).

    python bench/learning_curves.py --quick           # 1 seed, SPO and GRPO, small budget
    python bench/learning_curves.py                   # the full experiment (hours)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spo_core.learner.curves import plot_learning_curves  # noqa: E402
from spo_core.learner.metrics_log import read_metrics  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One experiment arm."""

    label: str
    method: str
    ablation: str
    seeds: tuple[int, ...]


def arms(seeds: int, ablation_seeds: int, quick: bool) -> list[Config]:
    """The experiment's arms (quick: SPO and GRPO only)."""
    s = tuple(range(seeds))
    a = tuple(range(ablation_seeds))
    out = [Config("SPO", "spo", "full", s), Config("GRPO", "grpo", "full", s)]
    if not quick:
        out += [
            Config("SPO no baseline", "spo", "no_baseline", a),
            Config("SPO no offline init", "spo", "no_offline_init", a),
            Config("SPO uniform sampling", "spo", "uniform_sampling", a),
        ]
    return out


def run_one(cfg: Config, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One training run; returns its final JSON line."""
    cmd = [
        str(ROOT / ".venv" / "bin" / "spo-gym"),
        "train",
        "--quiet",
        "--method",
        cfg.method,
        "--ablation",
        cfg.ablation,
        "--seed",
        str(seed),
        "--episodes",
        str(args.episodes),
        "--eval-every",
        str(args.eval_every),
        "--heldout-n",
        str(args.heldout_n),
        "--model",
        args.model,
        "--out",
        str(out),
    ]
    if args.tiers:
        cmd += ["--tiers", args.tiers]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"run {cfg.label} seed {seed} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.monotonic() - t0
    return result


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(cfg: Config, results: list[dict[str, Any]], runs: list[Path]) -> dict[str, Any]:
    """Across seeds: final accuracy mean and spread, waste, variance, waits, throughput."""
    steps = [r for run in runs for r in read_metrics(run) if "loss" in r]
    waste_key = "degenerate_share" if cfg.method == "grpo" else "frac_zero_adv"
    after = [100 * r["heldout_accuracy_after"] for r in results]
    before = [100 * r["heldout_accuracy_before"] for r in results]
    return {
        "label": cfg.label,
        "seeds": len(results),
        "before": _mean(before),
        "after": _mean(after),
        "after_std": _std(after),
        "gain": _mean([a - b for a, b in zip(after, before, strict=True)]),
        "wasted_share": _mean([float(s.get(waste_key, 0.0)) for s in steps]),
        "adv_variance": _mean([float(s.get("adv_variance", 0.0)) for s in steps]),
        "train_wall_s": _mean([r["train_wall_s"] for r in results]),
        "offline_wall_s": _mean([r["offline_wall_s"] for r in results]),
        "episodes": _mean([r["episodes"] for r in results]),
        "episodes_per_s": _mean([r["episodes"] / max(r["train_wall_s"], 1e-9) for r in results]),
        "learner_wait_share": _mean([float(s.get("learner_wait_share", 0.0)) for s in steps]),
        "generation_idle_share": _mean([float(s.get("generation_idle_share", 0.0)) for s in steps]),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    head = (
        "| arm | seeds | held-out before | after (mean ± sd) | gain | wasted share | "
        "adv. variance | train wall s | episodes/s | rollout waits on learner | "
        "learner waits on rollout |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['label']} | {r['seeds']} | {r['before']:.1f} | {r['after']:.1f} ± "
        f"{r['after_std']:.1f} | {r['gain']:+.1f} | {r['wasted_share']:.2f} | "
        f"{r['adv_variance']:.3f} | {r['train_wall_s']:.0f} | {r['episodes_per_s']:.2f} | "
        f"{r['generation_idle_share']:.2f} | {r['learner_wait_share']:.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SPO and GRPO, 1 seed, 256 episodes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ablation-seeds", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--heldout-n", type=int, default=300)
    parser.add_argument("--model", default="nano")
    parser.add_argument("--tiers", default="", help="fixed tiers (default: the job's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "learning_curves")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.episodes, args.eval_every = 1, 256, 4
        args.heldout_n = min(args.heldout_n, 150)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    rows: list[dict[str, Any]] = []
    curves: dict[str, Path] = {}
    t0 = time.monotonic()
    for cfg in arms(args.seeds, args.ablation_seeds, args.quick):
        results, runs = [], []
        for seed in cfg.seeds:
            out = args.out / f"{cfg.method}-{cfg.ablation}-seed{seed}"
            result = run_one(cfg, seed, args, out)
            print(
                f"{cfg.label:22s} seed {seed}: held-out greedy "
                f"{result['heldout_accuracy_before']:.3f} -> {result['heldout_accuracy_after']:.3f}"
                f" in {result['train_wall_s']:.0f} s ({result['episodes']} episodes)",
                flush=True,
            )
            results.append(result)
            runs.append(out)
            curves[f"{cfg.label} s{seed}"] = out
        rows.append(summarise(cfg, results, runs))
    plot = plot_learning_curves(curves, args.out / "learning_curves.png")
    print(table(rows))
    by = {r["label"]: r for r in rows}
    spo, grpo = by["SPO"], by["GRPO"]
    figures = {
        "episodes_per_run": args.episodes,
        "seeds": args.seeds,
        "wall_s": round(time.monotonic() - t0, 1),
        "plot": str(plot),
        **{
            f"{r['label'].lower().replace(' ', '_')}_{k}": round(v, 4)
            for r in rows
            for k, v in r.items()
            if isinstance(v, float)
        },
        "spo_vs_grpo_accuracy_ratio": round(spo["after"] / max(grpo["after"], 1e-9), 4),
        "spo_vs_grpo_wasted_ratio": round(spo["wasted_share"] / max(grpo["wasted_share"], 1e-9), 4),
    }
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, **figures}, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
