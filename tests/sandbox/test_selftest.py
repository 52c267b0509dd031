"""The fail-closed self-test: each limit it claims to prove, shown missing, is refused."""

from __future__ import annotations

import json

import pytest

from sandbox import SandboxConfig, SandboxPool, SandboxSelfTestFailed
from sandbox.selftest import check_probe, probe_code

pytestmark = pytest.mark.docker


async def test_self_test_refuses_missing_cpu_swap_tmpfs_init_and_memory_limits() -> None:
    # One container, five limits not as configured: no CPU quota, a larger memory limit
    # (an OOM there would still stop a memory bomb), unlimited swap, a /tmp without
    # nosuid/nodev and of the wrong size, and Docker's init as PID 1 (the sandbox user's,
    # dumpable) instead of the supervisor.
    cfg = SandboxConfig(warm=0, memory_mb=256, tmpfs_mb=64, fsize_mb=16)
    overrides = {
        "nano_cpus": 0,
        "mem_limit": 384 << 20,
        "memswap_limit": -1,
        "tmpfs": {"/tmp": "rw,size=32m,mode=1777"},
        "init": True,
    }
    pool = SandboxPool(cfg, container_overrides=overrides)
    with pytest.raises(SandboxSelfTestFailed) as info:
        await pool.start()
    await pool.close()
    message = str(info.value)
    for needle in ("CPU quota", "memory limit is", "swap", "/tmp", "container's init", "PID 1"):
        assert needle in message, message


async def test_the_probe_proves_the_supervisor_is_not_dumpable(pool: SandboxPool) -> None:
    async with pool.session("probe") as s:
        r = await s.run(probe_code(pool.config), timeout=60)
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert check_probe(data, pool.config) == [], data  # the real sandbox passes every check
    for key, seen in (("supervisor_environ", "readable"), ("supervisor_getfd", "taken")):
        problems = check_probe({**data, key: seen}, pool.config)
        assert len(problems) == 1 and "dumpable" in problems[0], problems
