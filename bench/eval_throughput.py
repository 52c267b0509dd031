"""Episodes/s of a full eval job (``evals.run_eval``) at several concurrencies, locally and on Ray.

Each measurement is one whole ``run_eval`` into a fresh output folder — dataset, run id, policy
build, sandbox pool start (self-test included), every episode through the rollout engine and
the real Docker sandbox, then the summary, the plot and the offline values — with the sandbox
pool ``spo-gym eval`` uses (2 warm containers, reused after a verified scrub: a pool at
concurrency c starts c containers during the run), and ``spo-gym eval``'s default sampling (T =
0.6, top-p 0.95, top-k 20; 200 tokens a turn). One small untimed run per mode comes first, so
the first measurement does not pay for imports, cold files or a cluster start. Three rates
per measurement:

* **full**: episodes / the wall time of the whole ``run_eval`` call (what a user waits for);
* **play**: episodes / the playing window, from the first episode's start (its completion time
  minus its own ``total_s``) to the last completion — policy build, pool start and output
  writing left out, container start-up of the pool's growth kept in;
* **steady**: the second half of the completions over the time they took (warm-up left out).

Where the time goes: the per-sample timings the summary sums (``time_s``), as shares of the
summed episode time — Σ llm_s / Σ total_s, Σ sandbox_s / Σ total_s (tool calls, waiting for a
container included), Σ grader_s / Σ total_s, and the rest ("other": env, transcript,
tokenisation). Slot use is Σ total_s / (play window × concurrency): how busy the concurrency
slots were.

Policies:

* ``scripted`` (default): ``agents.scripted_policy:arithmetic_policy`` on ReTool-v0 — one code
  cell and a boxed answer per episode, seeded per sample, no model cost; ``--llm-delay-ms N``
  makes every policy call sleep N ms first (this module's ``scripted_delay_<N>ms`` factory), a
  stand-in for a model's latency that overlaps across episodes as a served model's would;
* ``nano``: the CI nano model (warm-started with the CI recipe, seed 0; built once and cached)
  on ReToolNano-v0, served in-process by the HF backend (batched decoding on the CPU).

With ``--ray`` and ``evals.ray_runner`` importable, every concurrency is measured again on a
local Ray cluster with one eval actor (concurrency is per actor); without it the Ray rows are
skipped with a note. The scripted policy is seeded per sample, so every measurement must give
the same avg@k: the table says whether it did.

Episodes per run (the same at every concurrency): scripted 2 tiers × 64 problems × k = 8 (1024;
``--quick``: 16 problems, 256), nano 2 × 8 × 8 (128; ``--quick``: 2 × 4 × 4, 32).

Usage (from the repository root; ``bench/spo_core.py`` would shadow the package if run as a
file): ``python -m bench.eval_throughput [--quick] [--policy scripted|nano] [--llm-delay-ms N]
[--ray] [--concurrency 1,8,32] [--tiers d2o1,d2o2] [--per-tier N] [--k K]``. The last stdout
line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from agents.policy import SamplingParams
from agents.policy_spec import PolicySpec
from agents.scripted_policy import ScriptedArithmeticPolicy, arithmetic_policy
from evals import EvalConfig, EvalProgress, run_eval
from evals.datasets import DatasetError, load_dataset
from evals.sample import EvalSample

SCRIPTED = "agents.scripted_policy:arithmetic_policy"
MODULE = "bench.eval_throughput"
_DELAYED = re.compile(r"scripted_delay_(\d+)ms")

# (problems per tier, k) per policy and mode; two tiers by default.
SIZES = {
    ("scripted", True): (16, 8),
    ("scripted", False): (64, 8),
    ("nano", True): (4, 4),
    ("nano", False): (8, 8),
}
TIMING_BASIS = (
    "shares of the summed per-episode time: sum(llm_s)/sum(total_s), sum(sandbox_s)/sum(total_s),"
    " sum(grader_s)/sum(total_s), other = the rest; slot use = sum(total_s)/(play window x "
    "concurrency)"
)


def __getattr__(name: str) -> Callable[[int], tuple[ScriptedArithmeticPolicy, Any]]:
    """``scripted_delay_<N>ms``: a policy factory — the scripted arithmetic policy with every
    call sleeping N ms (importable by name, so a Ray actor builds the same policy)."""
    match = _DELAYED.fullmatch(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    delay_s = int(match.group(1)) / 1000

    def factory(seed: int) -> tuple[ScriptedArithmeticPolicy, PreTrainedTokenizerBase]:
        policy, tokenizer = arithmetic_policy(seed)
        policy.delay_s = delay_s
        return policy, tokenizer

    return factory


@dataclass(frozen=True)
class Measurement:
    """One ``run_eval`` at one concurrency (see the module docstring for the rates)."""

    mode: str
    concurrency: int
    episodes: int
    lost: int
    full_s: float
    play_s: float
    eps_full: float
    eps_play: float
    eps_steady: float
    llm_share: float
    sandbox_share: float
    grader_share: float
    other_share: float
    slot_use: float
    mean_episode_s: float
    avg_at_k: float


def play_window(completions: Sequence[float], samples: Sequence[EvalSample]) -> float:
    """Seconds from the first episode's start to the last completion.

    ``completions[i]`` is when ``samples[i]`` (in the order they finished) was reported; an
    episode started ``total_s`` before it was reported, or a little earlier.
    """
    if not completions:
        return 0.0
    start = min(t - s.total_s for t, s in zip(completions, samples, strict=True))
    return max(completions) - start


def steady_rate(completions: Sequence[float]) -> float:
    """Episodes/s over the second half of the completions (0 with fewer than two)."""
    times = sorted(completions)
    half = len(times) // 2
    if half < 1 or times[-1] <= times[half - 1]:
        return 0.0
    return (len(times) - half) / (times[-1] - times[half - 1])


def shares(time_s: dict[str, float]) -> dict[str, float]:
    """LLM / sandbox / grader / other as shares of the summed episode time."""
    total = time_s["episode"]
    if total <= 0:
        return {"llm": 0.0, "sandbox": 0.0, "grader": 0.0, "other": 0.0}
    parts = {name: time_s[name] / total for name in ("llm", "sandbox", "grader")}
    return {**parts, "other": 1.0 - sum(parts.values())}


async def measure(config: EvalConfig, mode: str) -> Measurement:
    """Run ``config`` into a fresh folder and time it."""
    completions: list[float] = []  # finished (not lost) samples, in the order they were logged
    seen = {"played": 0, "lost": 0}

    def on_progress(p: EvalProgress) -> None:
        now = time.monotonic()
        if p.played > seen["played"] and p.lost == seen["lost"]:
            completions.append(now)
        seen["played"], seen["lost"] = p.played, p.lost

    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as out:
        t0 = time.monotonic()
        outcome = await run_eval(replace(config, out=Path(out)), on_progress=on_progress)
        full = time.monotonic() - t0
        logged = list(outcome.store.samples().values())  # file order: the order they finished
    summary = outcome.summary
    n = summary.samples
    play = play_window(completions, logged)
    share = shares(summary.time_s)
    c = config.concurrency
    return Measurement(
        mode=mode,
        concurrency=c,
        episodes=n,
        lost=summary.lost,
        full_s=full,
        play_s=play,
        eps_full=n / full,
        eps_play=n / play if play > 0 else 0.0,
        eps_steady=steady_rate(completions),
        llm_share=share["llm"],
        sandbox_share=share["sandbox"],
        grader_share=share["grader"],
        other_share=share["other"],
        slot_use=summary.time_s["episode"] / (play * c) if play > 0 else 0.0,
        mean_episode_s=summary.time_s["episode"] / n if n else 0.0,
        avg_at_k=summary.avg.value,
    )


def ray_unavailable() -> str | None:
    """Why Ray mode cannot run here (``None`` when it can)."""
    for module in ("ray", "evals.ray_runner"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not importable"
    return None


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def table(rows: Sequence[Measurement]) -> str:
    head = (
        f"{'mode':<6}{'c':>4}{'eps':>6}{'lost':>5}{'full s':>8}{'play s':>8}"
        f"{'full/s':>8}{'play/s':>8}{'steady/s':>9}{'llm':>7}{'sandbox':>8}{'grader':>7}"
        f"{'other':>7}{'slots':>7}{'ep s':>7}{'avg@k':>7}"
    )
    lines = [head, "-" * len(head)]
    for m in rows:
        lines.append(
            f"{m.mode:<6}{m.concurrency:>4}{m.episodes:>6}{m.lost:>5}{m.full_s:>8.1f}"
            f"{m.play_s:>8.1f}{m.eps_full:>8.2f}{m.eps_play:>8.2f}{m.eps_steady:>9.2f}"
            f"{m.llm_share:>7.1%}{m.sandbox_share:>8.1%}{m.grader_share:>7.1%}"
            f"{m.other_share:>7.1%}{m.slot_use:>7.1%}{m.mean_episode_s:>7.3f}{m.avg_at_k:>7.3f}"
        )
    return "\n".join(lines)


def ratios(rows: Sequence[Measurement], prefix: str) -> dict[str, float | None]:
    """Concurrency 32 over concurrency 1 of each rate, when both were measured."""
    by_c = {m.concurrency: m for m in rows}
    if 1 not in by_c or 32 not in by_c:
        return {}
    hi, lo = by_c[32], by_c[1]
    return {
        f"{prefix}ratio_c32_over_c1": ratio(hi.eps_full, lo.eps_full),
        f"{prefix}ratio_play_c32_over_c1": ratio(hi.eps_play, lo.eps_play),
        f"{prefix}ratio_steady_c32_over_c1": ratio(hi.eps_steady, lo.eps_steady),
    }


def base_config(args: argparse.Namespace) -> EvalConfig:
    per_tier, k = SIZES[(args.policy, args.quick)]
    per_tier = args.per_tier or per_tier
    k = args.k or k
    dataset = f"tiers:{args.tiers}:{per_tier}"
    try:
        load_dataset(dataset)
    except DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None
    # spo-gym eval's default sampling; 200 tokens a turn is room for a nano episode's turns.
    sampling = SamplingParams(max_tokens=200, temperature=0.6, top_p=0.95, top_k=20, seed=args.seed)
    if args.policy == "nano":
        from agents.nano import CI_CONFIG
        from spo_core.learner.sft import CI_RECIPE, warm_start

        folder = warm_start(CI_CONFIG, CI_RECIPE, seed=0)
        return EvalConfig(
            dataset=dataset,
            policy=PolicySpec(model=str(folder), seed=args.seed),
            env_id="spo_gym/ReToolNano-v0",
            k=k,
            sampling=sampling,
        )
    delayed = f"{MODULE}:scripted_delay_{args.llm_delay_ms}ms"
    factory = SCRIPTED if args.llm_delay_ms == 0 else delayed
    return EvalConfig(
        dataset=dataset,
        policy=PolicySpec(factory=factory, seed=args.seed),
        k=k,
        sampling=sampling,
    )


def concurrency_list(args: argparse.Namespace) -> list[int]:
    return [int(c) for c in args.concurrency.split(",")]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    concurrencies = concurrency_list(args)
    base = base_config(args)
    figures: dict[str, Any] = {
        "policy": base.policy.label,
        "dataset": base.dataset,
        "k": base.k,
        "cores": os.cpu_count(),
        "quick": args.quick,
        "llm_delay_ms": args.llm_delay_ms if args.policy == "scripted" else None,
        "timing_basis": TIMING_BASIS,
    }
    modes: list[tuple[str, dict[str, Any]]] = [("local", {})]
    if args.ray:
        why = ray_unavailable()
        if why is None:
            modes.append(("ray", {"ray_address": "local", "ray_workers": 1}))
        else:
            figures["ray_skipped"] = why
            print(f"note: Ray mode skipped ({why})", flush=True)
    rows: list[Measurement] = []
    for mode, extra in modes:
        # Untimed: imports, tokenizer and model files, the image and (Ray) the cluster warm up.
        warm = await measure(replace(base, limit=1, k=1, concurrency=1, **extra), mode)
        print(f"{mode} warm-up: {warm.full_s:.1f} s", flush=True)
        for c in concurrencies:
            config = replace(base, concurrency=c, **extra)
            m = await measure(config, mode)
            rows.append(m)
            print(
                f"{mode} c={c}: {m.episodes} episodes in {m.full_s:.1f} s "
                f"({m.eps_full:.2f}/s full, {m.eps_play:.2f}/s playing)",
                flush=True,
            )
    print()
    print(
        f"{figures['policy']} on {base.dataset}, k = {base.k} "
        f"({rows[0].episodes} episodes per run), {figures['cores']} cores"
    )
    print(table(rows))
    print(f"time shares: {TIMING_BASIS}")
    local = [m for m in rows if m.mode == "local"]
    ray = [m for m in rows if m.mode == "ray"]
    figures.update(ratios(local, ""))
    figures.update(ratios(ray, "ray_"))
    for m in ray:
        twin = next((x for x in local if x.concurrency == m.concurrency), None)
        if twin is not None:
            figures[f"ratio_ray_over_local_c{m.concurrency}"] = ratio(m.eps_full, twin.eps_full)
    averages = {round(m.avg_at_k, 9) for m in rows}
    figures["same_avg_at_k_everywhere"] = len(averages) == 1
    figures["runs"] = [asdict(m) for m in rows]
    for key, value in figures.items():
        if "ratio" in key and value is not None:
            print(f"{key}: {value:.2f}")
    if args.policy == "scripted":
        print(f"same avg@k in every run (seeded policy): {figures['same_avg_at_k_everywhere']}")
    return _rounded(figures)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (a few minutes)")
    parser.add_argument("--policy", choices=("scripted", "nano"), default="scripted")
    parser.add_argument(
        "--llm-delay-ms", type=int, default=0, help="scripted: sleep per policy call (ms)"
    )
    parser.add_argument("--ray", action="store_true", help="also on a local Ray cluster")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    parser.add_argument("--tiers", default="d2o1,d2o2")
    parser.add_argument("--per-tier", type=int, default=None, help="problems per tier")
    parser.add_argument("--k", type=int, default=None, help="samples per problem")
    parser.add_argument("--seed", type=int, default=0)
    parsed = parser.parse_args()
    if not re.fullmatch(r"\d+(,\d+)*", parsed.concurrency) or 0 in concurrency_list(parsed):
        parser.error(f"--concurrency must list positive integers, got {parsed.concurrency!r}")
    if (parsed.per_tier is not None and parsed.per_tier < 1) or (
        parsed.k is not None and parsed.k < 1
    ):
        parser.error("--per-tier and --k must be positive")
    if parsed.llm_delay_ms < 0 or (parsed.llm_delay_ms and parsed.policy != "scripted"):
        parser.error("--llm-delay-ms takes a non-negative delay, with --policy scripted only")
    print(json.dumps(asyncio.run(main(parsed))))
