"""The SPO paper's throughput claim (Fig. 5), measured through the real engine.

Every episode goes through the real rollout engine, the ReTool env, the transcript and the
Docker sandbox (one real code cell, then a graded answer). Only the model is replaced by a
latency model: each episode's generation time is drawn from a fixed, seeded, heavy-tailed
distribution like the paper's — 85% uniform 60–130 units, 15% stragglers uniform 400–550 units
(``--unit-ms`` milliseconds per unit) — and split evenly over its two model turns.

1. The Fig. 5 setting, over ``--trials`` seeded trials: assemble 24 samples either in group
   mode (6 groups of 8 running, keep the 3 fastest *groups*) or single-stream (48 independent
   episodes running, keep the first 24). Printed next to a pure simulation of the *same draws*
   (no engine): the engine's ratio should match the simulation's within 5% (that measures the
   engine's overhead; the ratio itself measures the distribution — the paper reports 4.35x for
   its unpublished one).
2. Sustained episodes/s over ``--batches`` batches with carry-over, both modes.

Containers are pre-warmed and recycled (``reuse``) so container start-up does not dominate.
The last stdout line is one JSON object with every figure.

    .venv/bin/python bench/rollout_stream.py [--trials 200] [--unit-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from agents.engine import RolloutEngine, TaskCycle
from agents.episode import run_episode
from agents.episode_request import EpisodeRequest
from agents.policy import SamplingParams, TokenOutput
from agents.trajectory import Trajectory
from envs import ReToolEnv, Task
from sandbox import SandboxConfig, SandboxPool

CODE_TURN = "Let me check.\n<code>\n```python\nprint(6 * 7)\n```\n</code>"
ANSWER_TURN = "So the answer is \\boxed{42}."
SAMPLES, GROUPS_RUNNING, GROUP_SIZE, GROUPS_KEPT, STREAM_RUNNING = 24, 6, 8, 3, 48
ENVS: list[ReToolEnv] = []


def draw_times(rng: np.random.Generator, n: int) -> np.ndarray:
    """Generation time per episode in units: 85% U(60, 130), 15% stragglers U(400, 550)."""
    straggler = rng.random(n) < 0.15
    return np.where(straggler, rng.uniform(400, 550, n), rng.uniform(60, 130, n))


def simulate(times: np.ndarray) -> tuple[float, float]:
    """Batch-ready times (units) of group mode and single-stream on the same draws."""
    groups = np.sort(times.reshape(GROUPS_RUNNING, GROUP_SIZE).max(axis=1))
    return float(groups[GROUPS_KEPT - 1]), float(np.sort(times)[SAMPLES - 1])


class LatencyPolicy:
    """Emits the scripted turns after each episode's drawn generation time."""

    def __init__(self, tokenizer: Any, unit_s: float) -> None:
        self.tokenizer = tokenizer
        self.unit_s = unit_s
        self.code_ids = tuple(tokenizer.encode(CODE_TURN, add_special_tokens=False))
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.answer_ids = (*tokenizer.encode(ANSWER_TURN, add_special_tokens=False), end)

    async def generate_turn(self, turn: int, total_units: float) -> TokenOutput:
        await asyncio.sleep(total_units * self.unit_s / 2)
        ids = self.code_ids if turn == 0 else self.answer_ids
        return TokenOutput(ids, tuple(-0.1 for _ in ids), "stop")


class _EpisodePolicy:
    """The policy one episode sees: its own draw, turn by turn (weights never change)."""

    version = 0
    max_context_tokens = None

    def __init__(self, shared: LatencyPolicy, units: float) -> None:
        self.shared, self.units, self.turn = shared, units, 0

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams) -> TokenOutput:
        out = await self.shared.generate_turn(self.turn, self.units)
        self.turn += 1
        return out

    async def pause(self) -> None:
        return None

    def resume(self) -> None:
        return None

    async def update_weights(self, state: Mapping[str, Any], version: int) -> None:
        raise NotImplementedError("the latency model has no weights")


def make_episode_fn(
    pool: SandboxPool, shared: LatencyPolicy, durations: dict[str, list[float]]
) -> Any:
    sampling = SamplingParams(max_tokens=64)

    async def episode(request: EpisodeRequest) -> Trajectory:
        units = durations[request.task.key].pop()
        # Envs are reused across episodes, as a rollout worker keeps its own.
        env = ENVS.pop() if ENVS else ReToolEnv(pool=pool)
        try:
            return await run_episode(
                env, _EpisodePolicy(shared, units), shared.tokenizer, request, sampling
            )
        finally:
            await env.aclose()
            ENVS.append(env)

    return episode


async def wait_ready(pool: SandboxPool, n: int) -> None:
    while pool.stats().ready < n:
        await asyncio.sleep(0.02)


async def fig5_trial(
    pool: SandboxPool, shared: LatencyPolicy, times: np.ndarray
) -> tuple[float, float]:
    tasks = [
        Task.create(f"problem {i}: what is 6 times 7?", "42", "bench", {})
        for i in range(STREAM_RUNNING)
    ]
    # Group mode: task g gets draws g*8 .. g*8+7, one per member.
    durations = {
        t.key: list(times[g * GROUP_SIZE : (g + 1) * GROUP_SIZE])
        for g, t in enumerate(tasks[:GROUPS_RUNNING])
    }
    engine = RolloutEngine(
        make_episode_fn(pool, shared, durations), TaskCycle(tasks[:GROUPS_RUNNING])
    )
    await wait_ready(pool, STREAM_RUNNING)
    t0 = time.perf_counter()
    batch = await engine.next_group_batch(GROUPS_KEPT, GROUP_SIZE, GROUPS_RUNNING)
    group_s = time.perf_counter() - t0
    await engine.close()
    assert len(batch.trajectories) == SAMPLES and all(t.reward == 1.0 for t in batch.trajectories)
    # Single-stream: 48 independent episodes, one draw each.
    durations = {t.key: [float(times[i])] for i, t in enumerate(tasks)}
    engine = RolloutEngine(make_episode_fn(pool, shared, durations), TaskCycle(tasks))
    await wait_ready(pool, STREAM_RUNNING)
    t0 = time.perf_counter()
    batch = await engine.next_batch(SAMPLES, extra=STREAM_RUNNING - SAMPLES)
    single_s = time.perf_counter() - t0
    await engine.close()
    assert len(batch.trajectories) == SAMPLES and all(t.reward == 1.0 for t in batch.trajectories)
    return group_s, single_s


async def sustained(
    pool: SandboxPool,
    shared: LatencyPolicy,
    rng: np.random.Generator,
    batches: int,
    group_mode: bool,
) -> dict[str, float]:
    tasks = [Task.create(f"sustained problem {i}", "42", "bench", {}) for i in range(512)]

    class FreshDraws(dict):  # type: ignore[type-arg]
        """Every lookup draws new times: prompts recur across batches."""

        def __missing__(self, key: str) -> list[float]:
            return [float(v) for v in draw_times(rng, GROUP_SIZE)]

    draws: dict[str, list[float]] = FreshDraws()
    engine = RolloutEngine(
        make_episode_fn(pool, shared, draws), TaskCycle(tasks, seed=1), max_staleness=4
    )
    n = 0
    carried = []
    t0 = time.perf_counter()
    for step in range(batches):
        if group_mode:
            batch = await engine.next_group_batch(GROUPS_KEPT, GROUP_SIZE, GROUPS_RUNNING)
        else:
            batch = await engine.next_batch(SAMPLES, extra=STREAM_RUNNING - SAMPLES)
            carried.append(batch.stats.carried_in)
        n += len(batch.trajectories)
        engine.policy_version = step + 1
    wall = time.perf_counter() - t0
    await engine.close()
    return {
        "episodes_per_s": n / wall,
        "mean_carried_in": statistics.fmean(carried) if carried else 0.0,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from agents.models import prepare

    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m"))
    shared = LatencyPolicy(tokenizer, args.unit_ms / 1000)
    rng = np.random.default_rng(args.seed)
    cfg = SandboxConfig(
        warm=STREAM_RUNNING + 8,
        max_containers=STREAM_RUNNING + 16,
        reuse=True,
        max_concurrent_ops=4,
    )
    sim_ratios, eng_ratios, sim_g, sim_s, eng_g, eng_s = [], [], [], [], [], []
    async with SandboxPool(cfg) as pool:
        await wait_ready(pool, STREAM_RUNNING)
        for trial in range(args.trials):
            times = draw_times(rng, STREAM_RUNNING)
            g_units, s_units = simulate(times)
            g_s, s_s = await fig5_trial(pool, shared, times)
            sim_g.append(g_units * args.unit_ms / 1000)
            sim_s.append(s_units * args.unit_ms / 1000)
            eng_g.append(g_s)
            eng_s.append(s_s)
            sim_ratios.append(g_units / s_units)
            eng_ratios.append(g_s / s_s)
            if (trial + 1) % max(1, args.trials // 10) == 0:
                print(
                    f"trial {trial + 1}/{args.trials}: sim ratio {statistics.fmean(sim_ratios):.3f}, "
                    f"engine ratio {statistics.fmean(eng_ratios):.3f}",
                    flush=True,
                )
        single = await sustained(pool, shared, rng, args.batches, group_mode=False)
        group = await sustained(pool, shared, rng, args.batches, group_mode=True)
    figures = {
        "trials": args.trials,
        "unit_ms": args.unit_ms,
        "sim_group_mean_s": statistics.fmean(sim_g),
        "sim_single_mean_s": statistics.fmean(sim_s),
        "engine_group_mean_s": statistics.fmean(eng_g),
        "engine_single_mean_s": statistics.fmean(eng_s),
        "sim_mean_ratio": statistics.fmean(sim_ratios),
        "sim_median_ratio": statistics.median(sim_ratios),
        "engine_mean_ratio": statistics.fmean(eng_ratios),
        "engine_median_ratio": statistics.median(eng_ratios),
        "engine_over_sim_mean_ratio": statistics.fmean(eng_ratios) / statistics.fmean(sim_ratios),
        "engine_overhead_single_ms": 1000 * (statistics.fmean(eng_s) - statistics.fmean(sim_s)),
        "engine_overhead_group_ms": 1000 * (statistics.fmean(eng_g) - statistics.fmean(sim_g)),
        "sustained_single_stream_episodes_per_s": single["episodes_per_s"],
        "sustained_group_episodes_per_s": group["episodes_per_s"],
        "sustained_ratio_single_over_group": single["episodes_per_s"] / group["episodes_per_s"],
        "sustained_single_mean_carried_in": single["mean_carried_in"],
    }
    print(f"Fig. 5 setting, {args.trials} trials: group 3-of-6x8 vs single-stream 24-of-48")
    print(
        f"  simulation: mean ratio {figures['sim_mean_ratio']:.3f}, median {figures['sim_median_ratio']:.3f}"
    )
    print(
        f"  engine:     mean ratio {figures['engine_mean_ratio']:.3f}, median {figures['engine_median_ratio']:.3f} "
        f"({figures['engine_over_sim_mean_ratio']:.3f} of the simulation; overhead per batch "
        f"{figures['engine_overhead_single_ms']:.1f} ms single, {figures['engine_overhead_group_ms']:.1f} ms group)"
    )
    print(
        f"sustained over {args.batches} batches: single-stream {single['episodes_per_s']:.1f} episodes/s "
        f"(mean carried in {single['mean_carried_in']:.1f}), group {group['episodes_per_s']:.1f} episodes/s "
        f"({figures['sustained_ratio_single_over_group']:.2f}x)"
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--unit-ms", type=float, default=10.0, help="milliseconds per latency unit")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
