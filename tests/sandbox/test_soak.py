"""Soak: many short episodes leave no containers, fds or memory behind."""

from __future__ import annotations

import asyncio
import gc
import os

import docker
import psutil
import pytest

from sandbox import SandboxConfig, SandboxPool
from tests.sandbox.conftest import pool_containers

pytestmark = [pytest.mark.docker, pytest.mark.slow]
EPISODES = int(os.environ.get("SPO_SOAK_EPISODES", "500"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("reuse", [False, True], ids=["single-use", "reuse"])
async def test_soak_episodes(docker_client: docker.DockerClient, reuse: bool) -> None:
    me = psutil.Process()
    fds_before = open_fds()
    rss: dict[int, int] = {}
    done = 0
    pool = SandboxPool(
        SandboxConfig(warm=8, max_containers=24, max_concurrent_ops=4, reuse=reuse, self_test=False)
    )
    await pool.start()
    sem = asyncio.Semaphore(8)

    async def episode(i: int) -> None:
        nonlocal done
        async with sem, pool.session(f"soak-{i}") as s:
            assert (await s.run(f"x = {i}")).ok
            assert (await s.run("y = x * 2")).ok
            r = await s.run("print(y)")
            assert r.stdout == f"{2 * i}\n", r
        done += 1
        if done in (100, EPISODES):
            gc.collect()
            rss[done] = me.memory_info().rss

    await asyncio.gather(*(episode(i) for i in range(EPISODES)))
    stats = pool.stats()
    await pool.close()
    gc.collect()
    assert stats.runs == {"ok": 3 * EPISODES}
    assert stats.scrub_rejections == {}
    if reuse:  # every container served episode after episode, none was removed
        assert stats.removed == 0 and stats.created <= pool.config.max_containers
        assert stats.reused >= EPISODES - 8  # the last releases' scrubs may still run
    # Other pools may share the daemon; this pool's own count is back to zero.
    assert pool_containers(docker_client, pool.pool_id) == []
    assert open_fds() <= fds_before + 2  # the docker client's keep-alive sockets may stay open
    growth_mb = (rss[EPISODES] - rss[100]) / 2**20
    print(
        f"\nsoak ({'reuse' if reuse else 'single-use'}): {EPISODES} episodes, "
        f"RSS growth ep100→ep{EPISODES}: {growth_mb:.1f} MB, "
        f"create p50 {stats.create_p50_ms:.0f} ms, run p50 {stats.run_p50_ms:.2f} ms"
    )
    assert growth_mb < 20
