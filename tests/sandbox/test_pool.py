"""Pool behaviour: backpressure, stats, reuse, fail-closed self-test, sync API, run_many."""

from __future__ import annotations

import asyncio
import gc
import time

import docker
import pytest

from sandbox import (
    RunStatus,
    SandboxConfig,
    SandboxPool,
    SandboxSelfTestFailed,
    SandboxUnavailable,
)
from sandbox.sync import SyncSandboxPool
from tests.sandbox.conftest import pool_containers

pytestmark = pytest.mark.docker


async def test_backpressure_raises_typed_error_after_timeout() -> None:
    async with SandboxPool(SandboxConfig(warm=1, max_containers=1, self_test=False)) as pool:
        async with pool.session("holder"):
            t0 = time.monotonic()
            with pytest.raises(SandboxUnavailable, match="no sandbox became free"):
                async with pool.session("starved", acquire_timeout_s=0.5):
                    pass
            assert 0.4 < time.monotonic() - t0 < 3.0
        # Once released, the waiting capacity comes back.
        async with pool.session("after", acquire_timeout_s=30) as s:
            assert (await s.run("print(1)")).ok
        stats = pool.stats()
    assert stats.unavailable == 1
    assert stats.acquired == 2


async def test_cancelled_acquire_does_not_strand_a_container() -> None:
    async with SandboxPool(SandboxConfig(warm=0, max_containers=1, self_test=False)) as pool:
        waiter = asyncio.ensure_future(pool.acquire(timeout=60))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        async with pool.session("next", acquire_timeout_s=60) as s:
            assert (await s.run("print('served')")).stdout == "served\n"
        assert pool.stats().created == 1


async def test_waiters_are_served_as_containers_free_up() -> None:
    cfg = SandboxConfig(warm=0, max_containers=2, reuse=False, self_test=False)
    async with SandboxPool(cfg) as pool:

        async def episode(i: int) -> str:
            async with pool.session(f"e{i}", acquire_timeout_s=60) as s:
                return (await s.run(f"print({i} * 2)")).stdout

        outs = await asyncio.gather(*(episode(i) for i in range(5)))
        stats = pool.stats()
    assert outs == [f"{i * 2}\n" for i in range(5)]
    assert stats.created == 5 and stats.acquired == 5
    assert stats.runs == {"ok": 5}
    assert stats.run_p50_ms > 0 and stats.run_p99_ms >= stats.run_p50_ms


async def test_close_removes_every_container(docker_client: docker.DockerClient) -> None:
    pool = SandboxPool(SandboxConfig(warm=2, self_test=False))
    await pool.start()
    async with pool.session() as s:
        await s.run("print(1)")
        await asyncio.sleep(0.5)
        assert len(pool_containers(docker_client, pool.pool_id)) >= 2
    await pool.close()
    assert pool_containers(docker_client, pool.pool_id) == []
    with pytest.raises(SandboxUnavailable, match="closed"):
        await pool.acquire()


async def test_reuse_mode_scrubs_files_processes_and_variables() -> None:
    cfg = SandboxConfig(warm=1, max_containers=1, reuse=True, self_test=False)
    async with SandboxPool(cfg) as pool:
        async with pool.session("dirty") as s:
            first = s.container_id
            await s.run(
                "import subprocess\nsecret = 42\nopen('/tmp/leftover', 'w').write('x')\n"
                "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
                "subprocess.Popen(['sleep', '1000'])"
            )
        async with pool.session("clean") as s:
            assert s.container_id == first  # the same container, recycled
            var = await s.run("print(secret)")
            files = await s.run("import os; print(sorted(os.listdir('/tmp')))")
            procs = await s.run(
                "import os\nprint(sorted(open(f'/proc/{p}/comm').read().strip() "
                "for p in os.listdir('/proc') if p.isdigit()))"
            )
        stats = pool.stats()
    assert var.exc_type == "NameError"
    assert files.stdout.strip() == "['work']"
    assert "sleep" not in procs.stdout
    assert stats.reused == 1 and stats.created == 1


async def test_self_test_refuses_a_pool_with_network() -> None:
    pool = SandboxPool(SandboxConfig(warm=0), container_overrides={"network_mode": "bridge"})
    with pytest.raises(SandboxSelfTestFailed, match="the network is reachable"):
        await pool.start()
    await pool.close()


async def test_self_test_refuses_a_writable_root() -> None:
    pool = SandboxPool(
        SandboxConfig(warm=0), container_overrides={"read_only": False, "user": "0:0"}
    )
    with pytest.raises(SandboxSelfTestFailed) as info:
        await pool.start()
    await pool.close()
    assert "read-only" in str(info.value) and "root" in str(info.value)


async def test_unreachable_daemon_is_unavailable() -> None:
    pool = SandboxPool(SandboxConfig(docker_url="unix:///nonexistent/docker.sock"))
    with pytest.raises(SandboxUnavailable, match="cannot reach the Docker daemon"):
        await pool.start()
    await pool.close()


async def test_run_many_in_order_with_files(pool: SandboxPool) -> None:
    jobs: list[str | dict[str, object]] = [
        "print('a')",
        {"code": "print(open('f.txt').read())", "files": {"f.txt": "from file"}},
        {"code": "while True: pass", "timeout": 1},
    ]
    results = await pool.run_many(jobs, concurrency=3)
    assert [r.status for r in results] == [RunStatus.OK, RunStatus.OK, RunStatus.TIMEOUT]
    assert results[1].stdout == "from file\n"


def test_sync_wrapper_runs_cells() -> None:
    with SyncSandboxPool(SandboxConfig(warm=1, self_test=False)) as pool:
        with pool.session() as s:
            s.run("v = [1, 2, 3]")
            assert s.run("print(sum(v))").stdout == "6\n"
            s.put_file("a.txt", "hi")
            assert s.get_file("a.txt") == b"hi"
        assert [r.stdout for r in pool.run_many(["print(7)", "print(8)"])] == ["7\n", "8\n"]
        assert pool.stats().acquired == 3


def test_malformed_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxConfig(memory_mb=1)
    with pytest.raises(ValueError, match="extra"):
        SandboxConfig(memroy_mb=512)  # type: ignore[call-arg]


async def test_reuse_mode_scrubs_shared_memory_message_queues_and_system_v_ipc() -> None:
    plant = (
        "import ctypes, os\nopen('/dev/shm/answer', 'w').write('42')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.mq_open(b'/answer', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0\n"
        "assert libc.shmget(0x4242, 4096, 0o1000 | 0o600) >= 0\n"
        "assert libc.semget(0x4243, 1, 0o1000 | 0o600) >= 0\n"
        "assert libc.msgget(0x4244, 0o1000 | 0o600) >= 0\nprint('planted')"
    )
    look = (
        "import os\nprint(sorted(os.listdir('/dev/shm')), sorted(os.listdir('/dev/mqueue')), "
        "[len(open(f'/proc/sysvipc/{k}').read().splitlines()) - 1 for k in ('shm', 'sem', 'msg')])"
    )
    cfg = SandboxConfig(warm=1, max_containers=1, reuse=True, self_test=False)
    async with SandboxPool(cfg) as pool:
        async with pool.session("leaves-an-answer") as s:
            first = s.container_id
            assert (await s.run(plant)).stdout == "planted\n"
            assert (await s.run(look)).stdout == "['answer'] ['answer'] [1, 1, 1]\n"
        async with pool.session("finds-nothing") as s:
            assert s.container_id == first
            seen = await s.run(look)
    assert seen.stdout == "[] [] [0, 0, 0]\n", seen


async def test_start_is_single_flight_and_its_failure_sticky_and_typed(
    docker_client: docker.DockerClient,
) -> None:
    since = int(time.time()) - 1
    pool = SandboxPool(
        SandboxConfig(warm=0, memory_mb=256), container_overrides={"network_mode": "bridge"}
    )
    outcomes = await asyncio.gather(*(pool.acquire() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(o, SandboxUnavailable) for o in outcomes), outcomes
    t0 = time.monotonic()
    with pytest.raises(SandboxSelfTestFailed, match="the network is reachable"):
        await pool.acquire()
    assert time.monotonic() - t0 < 0.5  # remembered, not re-run
    await pool.close()
    created = docker_client.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"event": "create", "label": f"spo-gym.pool={pool.pool_id}"},
        decode=True,
    )
    assert len(list(created)) == 1  # one self-test container, not one per caller


async def test_close_while_containers_are_being_created_leaks_none(
    docker_client: docker.DockerClient,
) -> None:
    # A creation cut short must not fail later unseen either (a "Task exception was never
    # retrieved" on the loop, once printed mid-summary by a batch job stopped with SIGTERM).
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    pools = []
    try:
        # Daemon calls under way in worker threads: at start, and refilling a taken box.
        for delay, take in ((0.005, 0), (0.025, 0), (0.1, 1), (0.2, 1), (0.3, 1), (0.4, 1)):
            pool = SandboxPool(SandboxConfig(warm=2, max_concurrent_ops=4, self_test=False))
            await pool.start()
            for _ in range(take):
                await pool.acquire()
            await asyncio.sleep(delay)
            await pool.close()
            pools.append(pool)
        await asyncio.sleep(2.0)  # a container created after close would be visible by now
        gc.collect()  # unretrieved task exceptions are reported when the task is collected
    finally:
        loop.set_exception_handler(previous)
    assert [pool_containers(docker_client, p.pool_id) for p in pools] == [[]] * len(pools)
    assert unhandled == []


# A supervisor that connects and exits before saying hello.
NO_HELLO = (
    "import os, socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(os.environ['SPO_SOCKET'])"
)


async def test_a_supervisor_that_dies_before_its_hello_is_a_typed_failure() -> None:
    cfg = SandboxConfig(warm=0, self_test=False, breaker_threshold=2, breaker_cooldown_s=30)
    pool = SandboxPool(cfg, container_overrides={"command": ["python3", "-c", NO_HELLO]})
    async with pool:
        t0 = time.monotonic()
        with pytest.raises(SandboxUnavailable, match="hello"):
            await pool.acquire(timeout=12)
        assert time.monotonic() - t0 < 8
        assert pool.stats().create_failures >= 2


async def test_non_finite_timeouts_are_rejected(pool: SandboxPool) -> None:
    async with pool.session("nan") as s:
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="timeout"):
                await asyncio.wait_for(s.run("print(1)", timeout=bad), 30)
    for field in ("default_timeout_s", "cpus", "acquire_timeout_s"):
        with pytest.raises(ValueError, match=field):
            SandboxConfig(**{field: float("inf")})
