"""Sandbox latency and throughput, against the alternatives, in one run.

Per-call latency p50/p99 and throughput for a trivial cell (``print(1+1)``) and a sympy
cell at concurrency 1, 4 and 16, for:

  (a) ours: a pooled session (persistent kernel, unix-socket channel),
  (b) ``docker exec`` per call (Engine API exec on a hardened container),
  (c) ``docker run --rm`` per call (a fresh hardened container per call),
  (d) the floor: the same supervisor and kernel protocol bare on the host, no container.

Then episodes/s for short episodes (3 trivial calls) at concurrency 8 for the three ways a
pool can hand out containers:

  safe:        the default, a container reused after a scrub the host verifies,
  unverified:  reused after a scrub nobody checks (``verify_scrub=False``, unsafe: the
               upper bound the safe default is compared with; goal: safe >= 80% of it),
  single-use:  a fresh container per episode (``reuse=False``, bound by dockerd).

One pool per mode, warmed up together; the modes then take turns (the others idle): safe and
unverified back to back in each of several rounds, their ratio the median of the rounds'
ratios. The last stdout line is one JSON object with every figure.

    .venv/bin/python bench/sandbox_latency.py [--quick] [--episodes-only]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker

from sandbox import SandboxConfig, SandboxPool
from sandbox.box import container_kwargs
from sandbox.channel import Channel
from sandbox.image import image_tag

TRIVIAL = "print(1+1)"
SYMPY = "import sympy as sp\nx = sp.Symbol('x')\nprint(sp.factor(x**4 - 1))"
SUPERVISOR = Path(__file__).resolve().parents[1] / "sandbox" / "image" / "supervisor.py"


def summarise(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3,
        "calls_per_s": len(ordered) / wall,
    }


async def measure(
    call: Callable[[int], Awaitable[None]], concurrency: int, per_worker: int
) -> dict[str, float]:
    latencies: list[float] = []

    async def worker(w: int) -> None:
        for _ in range(per_worker):
            t0 = time.perf_counter()
            await call(w)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return summarise(latencies, time.perf_counter() - t0)


async def bench_ours(pool: SandboxPool, code: str, conc: int, n: int) -> dict[str, float]:
    sessions = [pool.session(f"bench-{i}") for i in range(conc)]
    live = [await cm.__aenter__() for cm in sessions]
    for s in live:
        await s.run(code)  # warm the kernel (imports) as an episode would after its first call

    async def call(w: int) -> None:
        r = await live[w].run(code)
        assert r.ok, r

    try:
        return await measure(call, conc, n)
    finally:
        for cm in sessions:
            await cm.__aexit__(None, None, None)


async def bench_bare(code: str, conc: int, n: int) -> dict[str, float]:
    """The same supervisor protocol with no container: the physical floor."""
    tmp = Path(tempfile.mkdtemp(prefix="spo-bare-"))
    procs, channels, servers = [], [], []
    for i in range(conc):
        path = tmp / f"{i}.sock"
        fut: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        servers.append(
            await asyncio.start_unix_server(
                lambda r, w, fut=fut: fut.set_result((r, w)), path=str(path), limit=1 << 24
            )
        )
        env = {**os.environ, "SPO_SOCKET": str(path), "SPO_WORKDIR": str(tmp / f"w{i}")}
        procs.append(subprocess.Popen([sys.executable, "-I", "-u", str(SUPERVISOR)], env=env))
        reader, writer = await fut
        await reader.readline()  # hello
        channels.append(Channel(reader, writer))
    for ch in channels:
        await ch.request({"op": "run", "code": code, "timeout": 30}, 60)

    async def call(w: int) -> None:
        reply = await channels[w].request({"op": "run", "code": code, "timeout": 30}, 60)
        assert reply["status"] == "ok", reply

    try:
        return await measure(call, conc, n)
    finally:
        for ch in channels:
            ch.close()
        for p in procs:
            p.kill()
            p.wait()
        for s in servers:
            s.close()


def hardened(cfg: SandboxConfig, image: str) -> dict[str, Any]:
    kwargs = container_kwargs(cfg, image)
    kwargs["labels"] = {"spo-gym.bench": "1"}
    return kwargs


async def bench_exec(client: docker.DockerClient, code: str, conc: int, n: int) -> dict[str, float]:
    cfg = SandboxConfig()
    containers = [
        client.containers.run(**{**hardened(cfg, image_tag()), "command": ["sleep", "infinity"]})
        for _ in range(conc)
    ]

    async def call(w: int) -> None:
        res = await asyncio.to_thread(containers[w].exec_run, ["python3", "-c", code])
        assert res.exit_code == 0, res.output

    try:
        return await measure(call, conc, n)
    finally:
        for c in containers:
            c.remove(force=True)


async def bench_run(client: docker.DockerClient, code: str, conc: int, n: int) -> dict[str, float]:
    cfg = SandboxConfig()

    async def call(w: int) -> None:
        out = await asyncio.to_thread(
            client.containers.run,
            **{
                **hardened(cfg, image_tag()),
                "command": ["python3", "-c", code],
                "detach": False,
                "remove": True,
            },
        )
        assert out, out

    return await measure(call, conc, n)


# How each mode configures the pool.
EPISODE_MODES: dict[str, dict[str, bool]] = {
    "safe": {"reuse": True, "verify_scrub": True},
    "unverified": {"reuse": True, "verify_scrub": False},
    "single_use": {"reuse": False},
}


def episode_pool(mode: str) -> SandboxPool:
    """The pool of the issue's measurement: 8 warm containers, at most 16."""
    return SandboxPool(
        SandboxConfig(warm=8, max_containers=16, self_test=False, **EPISODE_MODES[mode])
    )


async def play(pool: SandboxPool, episodes: int) -> float:
    """Episodes/s of ``episodes`` short episodes (3 trivial calls), 8 at a time."""
    sem = asyncio.Semaphore(8)

    async def episode(i: int) -> None:
        async with sem, pool.session(f"ep-{i}") as s:
            for _ in range(3):
                assert (await s.run(TRIVIAL)).ok

    t0 = time.perf_counter()
    await asyncio.gather(*(episode(i) for i in range(episodes)))
    return episodes / (time.perf_counter() - t0)


async def settle(pool: SandboxPool, timeout_s: float = 120.0) -> None:
    """Waits until the pool does nothing in the background: its warm containers ready, none
    being created, scrubbed or removed (so the next measurement runs alone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = pool.stats()
        if st.ready >= 8 and st.live == st.ready + st.in_use and st.created - st.removed == st.live:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the pool did not settle within {timeout_s:.0f} s: {pool.stats()}")


async def compare_episode_modes(
    rounds: int, episodes: int, single_use_rounds: int
) -> dict[str, Any]:
    """Episodes/s per mode: one pool per mode, started and warmed up together, then measured
    one at a time (the others idle). Safe and unverified go back to back in each round, in
    alternating order, so each pair shares the machine's load of the moment; their ratio is
    the median of the rounds' ratios. Single-use, at dockerd's pace, gets fewer episodes."""
    pools = {mode: episode_pool(mode) for mode in EPISODE_MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in EPISODE_MODES}
    try:
        for pool in pools.values():
            await pool.start()
        for pool in pools.values():
            await settle(pool)
            await play(pool, 16)
            await settle(pool)

        async def measure_mode(mode: str, n: int) -> None:
            rates[mode].append(await play(pools[mode], n))
            await settle(pools[mode])

        for r in range(rounds):
            pair = ("safe", "unverified") if r % 2 == 0 else ("unverified", "safe")
            for mode in pair:
                await measure_mode(mode, episodes)
            line = (
                f"  round {r + 1}: safe {rates['safe'][-1]:6.2f}, unverified "
                f"{rates['unverified'][-1]:6.2f} episodes/s "
                f"(ratio {rates['safe'][-1] / rates['unverified'][-1]:.2f})"
            )
            if (
                r % max(1, rounds // single_use_rounds) == 0
                and len(rates["single_use"]) < single_use_rounds
            ):
                await measure_mode("single_use", max(8, episodes // 4))
                line += f", single-use {rates['single_use'][-1]:5.2f}"
            print(line, flush=True)
        for mode, pool in pools.items():
            assert pool.stats().scrub_rejections == {}, (mode, pool.stats().scrub_rejections)
    finally:
        for pool in pools.values():
            await pool.close()
    med = {mode: statistics.median(v) for mode, v in rates.items()}
    paired = [a / b for a, b in zip(rates["safe"], rates["unverified"], strict=True)]
    figures: dict[str, Any] = {}
    for mode, values in rates.items():
        figures[f"episodes_per_s_{mode}"] = round(med[mode], 2)
        figures[f"episodes_per_s_{mode}_runs"] = [round(v, 2) for v in values]
    figures["ratio_safe_over_unverified"] = round(statistics.median(paired), 3)
    figures["ratio_safe_over_unverified_runs"] = [round(x, 3) for x in paired]
    figures["ratio_safe_over_single_use"] = round(med["safe"] / med["single_use"], 2)
    print(
        f"episodes/s (3 trivial calls, concurrency 8): safe {med['safe']:.2f}, unverified "
        f"{med['unverified']:.2f}, single-use {med['single_use']:.2f} (medians); safe is "
        f"{figures['ratio_safe_over_unverified']:.0%} of unverified (median of {rounds} paired "
        f"rounds; goal >= 80%) and {figures['ratio_safe_over_single_use']:.1f}x single-use",
        flush=True,
    )
    return figures


async def main(quick: bool, episodes_only: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if not episodes_only:
        figures.update(await latency_table(quick))
    if quick:
        figures.update(await compare_episode_modes(9, 80, 3))
    else:
        figures.update(await compare_episode_modes(21, 200, 5))
    return figures


async def latency_table(quick: bool) -> dict[str, Any]:
    client = docker.from_env()
    figures: dict[str, Any] = {}
    n_fast = 100 if quick else 400
    n_slow = 2 if quick else 4
    async with SandboxPool(SandboxConfig(warm=16, max_containers=40)) as pool:
        for cell_name, code in (("trivial", TRIVIAL), ("sympy", SYMPY)):
            for conc in (1, 4, 16):
                per = max(10, n_fast // conc)
                rows = {
                    "ours": await bench_ours(pool, code, conc, per),
                    "bare": await bench_bare(code, conc, per),
                    "exec": await bench_exec(client, code, conc, max(2, n_slow * 2 // conc + 1)),
                    "run": await bench_run(client, code, conc, max(1, n_slow // max(1, conc // 4))),
                }
                for route, row in rows.items():
                    for k, v in row.items():
                        figures[f"{cell_name}_c{conc}_{route}_{k}"] = round(v, 4)
                print(
                    f"{cell_name:8s} c={conc:<2d} "
                    + "  ".join(
                        f"{route}: p50 {row['p50_ms']:8.2f} ms p99 {row['p99_ms']:8.2f} ms {row['calls_per_s']:8.1f}/s"
                        for route, row in rows.items()
                    ),
                    flush=True,
                )
    t1 = figures
    figures["ratio_trivial_c1_run_over_ours_p50"] = round(
        t1["trivial_c1_run_p50_ms"] / t1["trivial_c1_ours_p50_ms"], 1
    )
    figures["ratio_trivial_c1_exec_over_ours_p50"] = round(
        t1["trivial_c1_exec_p50_ms"] / t1["trivial_c1_ours_p50_ms"], 1
    )
    figures["ratio_trivial_c1_ours_over_bare_p50"] = round(
        t1["trivial_c1_ours_p50_ms"] / t1["trivial_c1_bare_p50_ms"], 2
    )
    figures["ratio_trivial_c16_ours_over_bare_throughput"] = round(
        t1["trivial_c16_ours_calls_per_s"] / t1["trivial_c16_bare_calls_per_s"], 2
    )
    print(
        f"trivial cell p50: ours {t1['trivial_c1_ours_p50_ms']:.3f} ms, bare {t1['trivial_c1_bare_p50_ms']:.3f} ms "
        f"(ours/bare {figures['ratio_trivial_c1_ours_over_bare_p50']}x), docker run is "
        f"{figures['ratio_trivial_c1_run_over_ours_p50']}x slower, docker exec "
        f"{figures['ratio_trivial_c1_exec_over_ours_p50']}x slower; throughput at 16 sessions "
        f"{figures['ratio_trivial_c16_ours_over_bare_throughput']:.0%} of 16 bare REPLs"
    )
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument(
        "--episodes-only", action="store_true", help="only the episodes/s comparison of the modes"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick, args.episodes_only))))
