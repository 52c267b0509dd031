"""Sandbox latency and throughput, against the alternatives, in one run.

Per-call latency p50/p99 and throughput for a trivial cell (``print(1+1)``) and a sympy
cell at concurrency 1, 4 and 16, for:

  (a) ours: a pooled session (persistent kernel, unix-socket channel),
  (b) ``docker exec`` per call (Engine API exec on a hardened container),
  (c) ``docker run --rm`` per call (a fresh hardened container per call),
  (d) the floor: the same supervisor and kernel protocol bare on the host, no container.

Then episodes/s for short episodes (3 trivial calls) at concurrency 8, single-use vs
``reuse``. The last stdout line is one JSON object with every figure.

    .venv/bin/python bench/sandbox_latency.py [--quick]
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


async def episodes_per_s(reuse: bool, episodes: int) -> float:
    cfg = SandboxConfig(warm=8, max_containers=16, reuse=reuse, self_test=False)
    async with SandboxPool(cfg) as pool:
        while pool.stats().ready < 8:
            await asyncio.sleep(0.05)
        sem = asyncio.Semaphore(8)

        async def episode(i: int) -> None:
            async with sem, pool.session(f"ep-{i}") as s:
                for _ in range(3):
                    assert (await s.run(TRIVIAL)).ok

        t0 = time.perf_counter()
        await asyncio.gather(*(episode(i) for i in range(episodes)))
        return episodes / (time.perf_counter() - t0)


async def main(quick: bool) -> dict[str, Any]:
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
    n_ep = 40 if quick else 120
    single = await episodes_per_s(False, n_ep)
    reuse = await episodes_per_s(True, n_ep)
    figures["episodes_per_s_single_use"] = round(single, 2)
    figures["episodes_per_s_reuse"] = round(reuse, 2)
    figures["ratio_episodes_reuse_over_single_use"] = round(reuse / single, 2)
    print(
        f"episodes/s (3 trivial calls, concurrency 8): single-use {single:.2f}, reuse {reuse:.2f} "
        f"({reuse / single:.1f}x)"
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
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick))))
