"""The learning-curve experiment: SPO vs GRPO and SPO's ablations on the nano model.

Every configuration is one ``spo-gym train`` run (the main job, quiet) at the same training
episode budget, from the same cached warm start, offline values, tiers and held-out set; runs
go one after another (2 cores: never two at once). Per run it reads the final JSON line and the
run's ``metrics.jsonl``; it then prints a Markdown table (final held-out greedy accuracy with
its spread over seeds, wasted-sample shares, advantage variance, wall time, rollout/learner
waits) and writes the plot and ``summary.json`` into ``--out``.

The control, "SFT continued", asks whether RL beats more of the warm start's own training: seed
s continues the warm start's SFT (``spo-gym nano --continue-from``, seed s) for the SPO runs'
mean training wall time, and the result is scored by an evaluation-only job (``spo-gym train
--steps 0``) on the SPO runs' tiers and held-out set. Its "before" is the warm start's held-out
accuracy (the SPO runs' "before"). It applies to nano models; it has no learning curve.

The baseline of the ratio keys is GRPO measured in the same run: ``spo_vs_grpo_accuracy_ratio``
(final greedy accuracy, SPO over GRPO) and ``spo_vs_grpo_wasted_ratio`` (zero-advantage share
of SPO over GRPO's degenerate-group share); with the control, also
``spo_vs_sft_continued_accuracy_ratio`` (final greedy accuracy, SPO over the control).

    python bench/learning_curves.py --quick           # 1 seed, SPO and GRPO, small budget
                                                      # (and a 30 s control)
    python bench/learning_curves.py                   # the full experiment (hours)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.nano import CI_CONFIG, DEFAULT_CONFIG, NANO_CONFIG_FILE, NanoConfig  # noqa: E402
from spo_core.learner.curves import plot_learning_curves  # noqa: E402
from spo_core.learner.metrics_log import read_metrics  # noqa: E402
from spo_core.learner.sft import CI_RECIPE, DEFAULT_RECIPE, warm_start_dir  # noqa: E402

CLI = str(ROOT / ".venv" / "bin" / "spo-gym")
CONTROL = "SFT continued"
QUICK_CONTROL_WALL_S = 30.0  # --quick: the control is a smoke test, not a measurement


@dataclass(frozen=True)
class Config:
    """One experiment arm."""

    label: str
    method: str
    ablation: str
    seeds: tuple[int, ...]


def arms(seeds: int, ablation_seeds: int, quick: bool) -> list[Config]:
    """The experiment's arms (quick or no ablation seeds: SPO and GRPO only)."""
    s = tuple(range(seeds))
    a = tuple(range(ablation_seeds))
    out = [Config("SPO", "spo", "full", s), Config("GRPO", "grpo", "full", s)]
    if not quick and a:
        out += [
            Config("SPO no baseline", "spo", "no_baseline", a),
            Config("SPO no offline init", "spo", "no_offline_init", a),
            Config("SPO uniform sampling", "spo", "uniform_sampling", a),
        ]
    return out


def _shared_options(args: argparse.Namespace) -> list[str]:
    """The ``spo-gym train`` options every run shares: held-out set, train set, learner."""
    cmd = [
        "--heldout-n",
        str(args.heldout_n),
        "--heldout-k",
        str(args.heldout_k),
        "--train-per-tier",
        str(args.train_per_tier),
    ]
    for pair in args.set:
        cmd += ["--set", pair]
    return cmd


def _run(cmd: list[str], what: str) -> dict[str, Any]:
    """Run a ``spo-gym`` command; its final JSON line, with the process wall time."""
    t0 = time.monotonic()
    proc = subprocess.run([CLI, *cmd], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.monotonic() - t0
    return result


def run_one(cfg: Config, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One training run; returns its final JSON line."""
    cmd = [
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
        *_shared_options(args),
        "--model",
        args.model,
        "--out",
        str(out),
    ]
    if args.tiers:
        cmd += ["--tiers", args.tiers]
    return _run(cmd, f"run {cfg.label} seed {seed}")


def warm_start_of(model: str) -> tuple[Path, bool] | None:
    """The warm-start folder the runs of ``--model`` start from, and whether it is the CI
    recipe's; ``None`` for a model that is not a nano (no SFT to continue)."""
    if model == "nano":
        return warm_start_dir(DEFAULT_CONFIG, DEFAULT_RECIPE, 0), False
    if model == "nano-ci":
        return warm_start_dir(CI_CONFIG, CI_RECIPE, 0), True
    config = Path(model) / NANO_CONFIG_FILE
    if config.is_file():
        return Path(model), NanoConfig.from_dict(json.loads(config.read_text())) == CI_CONFIG
    return None


def run_control(
    seed: int, wall_s: float, tiers: list[str], args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """One control run: continue the warm start's SFT for ``wall_s`` seconds (seed ``seed``),
    then score the model with an evaluation-only job on ``tiers``. Returns the evaluation's
    final JSON line with the continuation's figures under ``"sft"``."""
    found = warm_start_of(args.model)
    assert found is not None
    folder, ci = found
    shutil.rmtree(out, ignore_errors=True)  # this bench's own earlier output
    model = out / "model"
    cont = ["nano", *(["--ci"] if ci else []), "--continue-from", str(folder)]
    cont += ["--wall-s", f"{wall_s:.1f}", "--out", str(model), "--seed", str(seed)]
    sft = _run(cont, f"{CONTROL} seed {seed} (continued SFT)")
    evaluate = ["train", "--quiet", "--model", str(model), "--tiers", ",".join(tiers)]
    evaluate += ["--steps", "0", "--seed", str(seed), *_shared_options(args)]
    result = _run([*evaluate, "--out", str(out / "eval")], f"{CONTROL} seed {seed} (evaluation)")
    result["sft"] = sft
    return result


def uses_offline(result: dict[str, Any]) -> bool:
    """Whether a run's tracker started from its offline values (SPO but for no_offline_init)."""
    return result["method"] == "spo" and result["ablation"] != "no_offline_init"


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


def summarise_control(results: list[dict[str, Any]], before: float) -> dict[str, Any]:
    """The control across seeds, in :func:`summarise`'s keys; RL-only figures are ``None``.

    Args:
        results: the evaluation JSON lines of :func:`run_control`.
        before: the warm start's held-out greedy accuracy (points).
    """
    after = [100 * r["heldout_accuracy_after"] for r in results]
    return {
        "label": CONTROL,
        "seeds": len(results),
        "before": before,
        "after": _mean(after),
        "after_std": _std(after),
        "gain": _mean(after) - before,
        "wasted_share": None,
        "adv_variance": None,
        "train_wall_s": _mean([r["sft"]["train_s"] for r in results]),
        "offline_wall_s": 0.0,
        "episodes": 0.0,
        "episodes_per_s": None,
        "learner_wait_share": None,
        "generation_idle_share": None,
        "sft_steps": _mean([r["sft"]["steps"] for r in results]),
        "sft_heldout_loss_before": _mean([r["sft"]["heldout_loss_before"] for r in results]),
        "sft_heldout_loss_after": _mean([r["sft"]["heldout_loss_after"] for r in results]),
    }


def _cell(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table ("–": a figure the arm does not have)."""
    head = (
        "| arm | seeds | held-out before | after (mean ± sd) | gain | wasted share | "
        "adv. variance | train wall s | episodes/s | rollout waits on learner | "
        "learner waits on rollout |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['label']} | {r['seeds']} | {r['before']:.1f} | {r['after']:.1f} ± "
        f"{r['after_std']:.1f} | {r['gain']:+.1f} | {_cell(r['wasted_share'], '.2f')} | "
        f"{_cell(r['adv_variance'], '.3f')} | {r['train_wall_s']:.0f} | "
        f"{_cell(r['episodes_per_s'], '.2f')} | {_cell(r['generation_idle_share'], '.2f')} | "
        f"{_cell(r['learner_wait_share'], '.2f')} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def control_arm(spo: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The control's runs, sized and placed by the SPO arm's results (``spo``: their final JSON
    lines); returns its table row."""
    distinct = {tuple(r["tiers"]) for r in spo}
    if len(distinct) != 1:
        raise SystemExit(f"the SPO runs trained on different tiers {sorted(distinct)}")
    tiers = list(distinct.pop())
    wall = _mean([r["train_wall_s"] for r in spo])
    if args.quick:
        wall = min(wall, QUICK_CONTROL_WALL_S)
    results = []
    for seed in range(args.control_seeds):
        result = run_control(seed, wall, tiers, args, args.out / f"control-seed{seed}")
        # The comparison holds only on the SPO runs' held-out set.
        for key in ("heldout_n", "heldout_tier_mix"):
            if result[key] != spo[0][key]:
                raise SystemExit(f"{CONTROL}: {key} {result[key]} differs from SPO's {spo[0][key]}")
        sft = result["sft"]
        print(
            f"{CONTROL:22s} seed {seed}: held-out greedy "
            f"{spo[0]['heldout_accuracy_before']:.3f} -> {result['heldout_accuracy_after']:.3f}"
            f" after {sft['steps']} SFT steps in {sft['train_s']:.0f} s (trace loss "
            f"{sft['heldout_loss_before']:.4f} -> {sft['heldout_loss_after']:.4f})",
            flush=True,
        )
        results.append(result)
    before = _mean([100 * r["heldout_accuracy_before"] for r in spo])
    return summarise_control(results, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"SPO and GRPO, 1 seed, 256 episodes; the control trains at most "
        f"{QUICK_CONTROL_WALL_S:.0f} s",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ablation-seeds", type=int, default=2)
    parser.add_argument(
        "--control-seeds",
        type=int,
        default=1,
        help=f"seeds of the {CONTROL!r} control (0: none; nano models only)",
    )
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--heldout-n", type=int, default=300)
    parser.add_argument("--heldout-k", type=int, default=4, help="avg@k's k of every run")
    parser.add_argument("--train-per-tier", type=int, default=64, help="training prompts per tier")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a learner setting for every spo-gym train run (repeatable)",
    )
    parser.add_argument("--model", default="nano")
    parser.add_argument("--tiers", default="", help="fixed tiers (default: the job's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "learning_curves")
    args = parser.parse_args()
    if args.seeds < 1 or args.ablation_seeds < 0 or args.control_seeds < 0:
        parser.error("--seeds must be >= 1, --ablation-seeds and --control-seeds >= 0")
    if args.quick:
        args.seeds, args.episodes, args.eval_every = 1, 256, 4
        args.heldout_n = min(args.heldout_n, 150)
    if args.control_seeds and warm_start_of(args.model) is None:
        print(f"{CONTROL}: {args.model} is not a nano model; no control", file=sys.stderr)
        args.control_seeds = 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    rows: list[dict[str, Any]] = []
    curves: dict[str, Path] = {}
    run_results: dict[str, dict[str, Any]] = {}
    by_arm: dict[str, list[dict[str, Any]]] = {}
    t0 = time.monotonic()
    for cfg in arms(args.seeds, args.ablation_seeds, args.quick):
        results: list[dict[str, Any]] = []
        runs: list[Path] = []
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
            run_results[f"{cfg.label} s{seed}"] = result
        rows.append(summarise(cfg, results, runs))
        by_arm[cfg.label] = results
    if args.control_seeds:
        rows.append(control_arm(by_arm["SPO"], args))
    plot = plot_learning_curves(curves, args.out / "learning_curves.png")
    # The same curves with the offline episodes (and their wall time) counted in the budget:
    # SPO's tracker start costs samples that GRPO does not spend.
    offline_plot = plot_learning_curves(
        curves,
        args.out / "learning_curves_offline.png",
        offsets={
            label: (float(r["offline_episodes"]), float(r["offline_wall_s"]))
            for label, r in run_results.items()
            if uses_offline(r)
        },
    )
    print(table(rows))
    by = {r["label"]: r for r in rows}
    spo, grpo = by["SPO"], by["GRPO"]
    figures = {
        "episodes_per_run": args.episodes,
        "seeds": args.seeds,
        "wall_s": round(time.monotonic() - t0, 1),
        "plot": str(plot),
        "plot_offline_counted": str(offline_plot),
        **{
            f"{r['label'].lower().replace(' ', '_')}_{k}": round(v, 4)
            for r in rows
            for k, v in r.items()
            if isinstance(v, float)
        },
        "spo_vs_grpo_accuracy_ratio": round(spo["after"] / max(grpo["after"], 1e-9), 4),
        "spo_vs_grpo_wasted_ratio": round(spo["wasted_share"] / max(grpo["wasted_share"], 1e-9), 4),
    }
    if CONTROL in by:
        figures["spo_vs_sft_continued_accuracy_ratio"] = round(
            spo["after"] / max(by[CONTROL]["after"], 1e-9), 4
        )
    (args.out / "summary.json").write_text(json.dumps({"rows": rows, **figures}, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
