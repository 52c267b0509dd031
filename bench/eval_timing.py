"""Wall time of a held-out evaluation and of an offline-values pass on this machine.

Held-out: ``--heldout`` problems (spread evenly over ``--tiers``, deduplicated against a train
set of ``--prompts``), greedy and avg@4 at T = 1.0. Offline values: ``--prompts`` training
prompts × ``--k`` samples at the training temperature, with no cache (a fresh temporary
folder). Both through the real rollout engine, env and Docker sandbox (containers reused
after a scrub).

Usage (from the repository root; ``bench/spo_core.py`` would shadow the package if run as a
file): ``python -m bench.eval_timing --model PATH_OR_NAME [--tiers d2o1,d3o1,d3o2] [--heldout 300]
[--prompts 200] [--k 8] [--max-tokens 256] [--env-id ID] [--env-options JSON]
[--episodes-in-flight 32] [--skip-offline] [--skip-heldout]``. The last stdout line is one JSON
object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

from agents.episode_fn import EpisodeSpec
from agents.hf_policy import HFPolicy
from agents.policy import SamplingParams
from envs.tasks import Tier, tier_tasks
from sandbox import SandboxConfig, SandboxPool
from spo_core.learner.heldout import evaluate_heldout, heldout_set
from spo_core.learner.offline_values import offline_values, weights_fingerprint
from spo_core.learner.task_samples import SamplingProgress
from spo_core.learner.tier_choice import tier_pass_rates


def _progress(label: str) -> Any:
    def show(p: SamplingProgress) -> None:
        if p.prompts_done % 25 == 0 or p.prompts_done == p.prompts_total:
            print(
                f"  {label}: {p.prompts_done}/{p.prompts_total} prompts, {p.episodes} episodes "
                f"({p.masked} masked), {p.elapsed_s:.0f} s",
                flush=True,
            )

    return show


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tiers = [Tier.parse(name) for name in args.tiers.split(",")]
    train = tier_tasks(tiers, -(-args.prompts // len(tiers)), seed=args.seed)[: args.prompts]
    policy = HFPolicy.from_pretrained(args.model, seed=args.seed, max_batch_size=args.batch)
    spec = EpisodeSpec(
        args.env_id,
        json.loads(args.env_options),
        SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed),
    )
    out: dict[str, Any] = {"model": args.model, "tiers": args.tiers}
    config = SandboxConfig(warm=args.warm, reuse=True, default_timeout_s=30)
    async with SandboxPool(config) as pool:
        try:
            if not args.skip_heldout:
                held = heldout_set(
                    tiers, -(-args.heldout // len(tiers)), args.seed + 1000, train=train
                )
                report = await evaluate_heldout(
                    policy, policy.tokenizer, pool, spec, held,
                    episodes_in_flight=args.episodes_in_flight, on_progress=_progress("held-out"),
                )  # fmt: skip
                out["heldout"] = report.to_metrics()
                print(f"held-out: {json.dumps(out['heldout'])}", flush=True)
            if not args.skip_offline:
                with tempfile.TemporaryDirectory() as cache:
                    t0 = time.monotonic()
                    values = await offline_values(
                        policy, policy.tokenizer, pool, spec, train,
                        model_id=weights_fingerprint(policy.model), cache_dir=cache, k=args.k,
                        episodes_in_flight=args.episodes_in_flight,
                        on_progress=_progress("offline"),
                    )  # fmt: skip
                    rates = tier_pass_rates(train, values.scores, k=args.k)
                out["offline"] = {
                    "prompts": len(train),
                    "k": args.k,
                    "wall_s": values.wall_s,
                    "wall_s_with_fingerprint": time.monotonic() - t0,
                    "masked": values.masked,
                    "per_tier": {
                        t: {"pass1": r.pass1, f"pass{args.k}": r.passk, "prompts": r.prompts}
                        for t, r in rates.items()
                    },
                }
                print(f"offline: {json.dumps(out['offline'])}", flush=True)
        finally:
            await policy.aclose()
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tiers", default="d2o1,d3o1,d3o2")
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--env-id", default="spo_gym/ReTool-v0")
    parser.add_argument("--env-options", default="{}")
    parser.add_argument("--episodes-in-flight", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="the policy's max batch size")
    parser.add_argument("--warm", type=int, default=4, help="warm sandbox containers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-offline", action="store_true")
    parser.add_argument("--skip-heldout", action="store_true")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
