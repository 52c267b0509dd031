"""Per-tier accuracy of a nano warm start on held-out arithmetic problems, with the real sandbox.

For each tier, ``--n`` held-out tasks (a separate seed, no expression shared with the warm
start's training traces) are played through the rollout engine (``agents.engine``), the episode
function (``agents.episode_fn``) and a reusing Docker sandbox pool: once greedy, and ``--k``
times sampled at T = 1. Reported per tier: greedy pass@1, sampled pass@1 (mean reward) and
pass@k (a task solved by any of its k samples), and the share of episodes that called the tool.

Usage: ``python -m bench.nano_tiers [--model FOLDER] [--tiers d2o1,d3o1,...] [--n 32] [--k 8]``
(default model: the cached default warm start, built if missing). The last stdout line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from agents.engine import RolloutEngine, TaskCycle
from agents.episode_fn import EpisodeSpec, episode_fn
from agents.hf_policy import HFPolicy
from agents.policy import SamplingParams
from envs.tasks import Tier, heldout_tasks
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner.sft import DEFAULT_RECIPE, recipe_tasks, warm_start

TIERS = "d2o1,d3o1,d4o1,d5o1,d2o2,d3o2,d4o2,d3o3"
EVAL_SEED = 424_242


async def evaluate(
    model: Path, tiers: list[str], n: int, k: int, concurrency: int
) -> dict[str, Any]:
    policy = HFPolicy.from_pretrained(model, max_batch_size=concurrency, seed=0)
    train, _ = recipe_tasks(DEFAULT_RECIPE, 0)
    results: dict[str, Any] = {}
    async with SandboxPool(SandboxConfig(reuse=True, warm=2, memory_mb=512)) as pool:
        for name in tiers:
            tasks = heldout_tasks([Tier.parse(name)], n, EVAL_SEED, exclude=train)
            row: dict[str, Any] = {}
            for mode, temperature, size in (("greedy", 0.0, 1), ("sampled", 1.0, k)):
                spec = EpisodeSpec(
                    "spo_gym/ReToolNano-v0",
                    sampling=SamplingParams(max_tokens=200, temperature=temperature, seed=1),
                )
                engine = RolloutEngine(
                    episode_fn(spec, policy, policy.tokenizer, pool),
                    TaskCycle(tasks, seed=0),
                    policy=policy,
                    max_concurrency=concurrency,
                    max_masked_share=0.2,
                )
                t0 = time.monotonic()
                batch = await engine.next_group_batch(len(tasks), size, len(tasks))
                await engine.close()
                trajs = batch.trajectories
                by_task: dict[str, list[float]] = {}
                for traj in trajs:
                    by_task.setdefault(traj.prompt_key, []).append(traj.reward)
                row[f"{mode}_pass1"] = sum(t.reward for t in trajs) / len(trajs)
                if mode == "sampled":
                    row[f"pass{k}"] = sum(max(r) for r in by_task.values()) / len(by_task)
                row[f"{mode}_tool_share"] = sum(bool(t.tool_results) for t in trajs) / len(trajs)
                row[f"{mode}_masked"] = sum(t.masked for t in trajs)
                row[f"{mode}_drift"] = sum(bool(t.drift) for t in trajs)
                row[f"{mode}_s"] = round(time.monotonic() - t0, 1)
            results[name] = row
            print(
                f"{name}: greedy {row['greedy_pass1']:.2f}  T=1 pass@1 {row['sampled_pass1']:.2f}"
                f"  pass@{k} {row[f'pass{k}']:.2f}  tool {row['sampled_tool_share']:.2f}"
                f"  ({row['greedy_s']:.0f}+{row['sampled_s']:.0f} s)",
                flush=True,
            )
    await policy.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tiers", default=TIERS)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    model = args.model or warm_start(progress=print)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    t0 = time.monotonic()
    results = asyncio.run(evaluate(model, tiers, args.n, args.k, args.concurrency))
    print(
        json.dumps(
            {
                "model": str(model),
                "n": args.n,
                "k": args.k,
                "tiers": results,
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
