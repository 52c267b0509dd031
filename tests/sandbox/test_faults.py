"""Faults: containers killed from outside, a killed host process, a restarted daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from sandbox import RunStatus, SandboxConfig, SandboxPool, SandboxUnavailable
from sandbox.box import remove_container
from sandbox.image import ensure_image
from tests.sandbox.conftest import pool_containers

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


async def test_container_killed_mid_cell_gives_sandbox_error_and_a_replacement(
    pool: SandboxPool, docker_client: docker.DockerClient
) -> None:
    replaced_before = pool.stats().replaced
    async with pool.session("victim") as s:
        await s.run("x = 1")
        victim = s.container_id
        assert victim is not None
        running = asyncio.ensure_future(s.run("import time\ntime.sleep(20)", timeout=30))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(docker_client.api.kill, victim)
        r = await asyncio.wait_for(running, 15)
        assert r.status is RunStatus.SANDBOX_ERROR
        assert r.state_lost and "died" in (r.exc_message or "")
        again = await s.run("print('replacement')")
        assert again.stdout == "replacement\n"
        assert again.state_lost  # a fresh container: earlier variables are gone
        assert s.container_id != victim
    assert pool.stats().replaced == replaced_before + 1


ORPHAN_SCRIPT = """
import asyncio, sys
from sandbox import SandboxConfig, SandboxPool
async def main():
    pool = SandboxPool(SandboxConfig(warm=2, self_test=False))
    await pool.start()
    while pool.stats().ready < 2:
        await asyncio.sleep(0.1)
    print(pool.pool_id, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


async def test_killed_host_process_is_reaped_and_live_pools_are_left_alone(
    pool: SandboxPool, docker_client: docker.DockerClient
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    orphan_pool = (await asyncio.to_thread(proc.stdout.readline)).strip()
    assert len(orphan_pool) == 12, orphan_pool
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(pool_containers(docker_client, orphan_pool)) == 2  # left behind by the kill
    async with pool.session() as s:  # the shared pool is live and busy
        mine = set(pool_containers(docker_client, pool.pool_id))
        fresh = SandboxPool(SandboxConfig(warm=0, self_test=False))
        await fresh.start()  # start-up reaps orphans
        try:
            assert pool_containers(docker_client, orphan_pool) == []
            assert mine <= set(pool_containers(docker_client, pool.pool_id))
            assert (await s.run("print('alive')")).stdout == "alive\n"
        finally:
            await fresh.close()
    assert fresh.stats().reaped >= 2


class SecondDaemon:
    """A private dockerd with its own data root, socket and no bridge network."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # Its own network namespace too: a dockerd with --bridge=none deletes the host's docker0.
        cmd = [
            "unshare",
            "--net",
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.root / "dockerd.pid"),
            "-H",
            self.url,
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ]
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - owned by the daemon process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                docker.DockerClient(base_url=self.url).ping()
                return
            except docker.errors.DockerException:
                time.sleep(0.3)
        raise RuntimeError(f"second dockerd did not start; see {self.root / 'dockerd.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def second_daemon() -> Iterator[SecondDaemon]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail(
            "the daemon-restart test needs root and dockerd (scripts/bootstrap.sh installs them)"
        )
    root = Path(tempfile.mkdtemp(prefix="spo-dockerd-", dir="/var/tmp"))
    daemon = SecondDaemon(root)
    daemon.start()
    ensure_image(docker.DockerClient(base_url=daemon.url), log=lambda _line: None)
    yield daemon
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


async def test_daemon_restart_during_a_run_recovers_without_leaks(
    second_daemon: SecondDaemon,
) -> None:
    cfg = SandboxConfig(
        docker_url=second_daemon.url, warm=1, breaker_threshold=2, breaker_cooldown_s=1.0
    )
    pool = SandboxPool(cfg)
    await pool.start()
    try:
        async with pool.session("across-restart") as s:
            running = asyncio.ensure_future(s.run("import time\ntime.sleep(30)", timeout=60))
            await asyncio.sleep(0.5)
            await asyncio.to_thread(second_daemon.stop)
            r = await asyncio.wait_for(running, 60)
            assert r.status is RunStatus.SANDBOX_ERROR
            with pytest.raises(SandboxUnavailable):
                await s.run("print(1)")  # no daemon: the replacement cannot be had
        await asyncio.to_thread(second_daemon.start)
        deadline = time.monotonic() + 60
        while True:
            try:
                async with pool.session("after-restart", acquire_timeout_s=20) as s:
                    assert (await s.run("print('back')")).stdout == "back\n"
                break
            except SandboxUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
    finally:
        await pool.close()
    client = docker.DockerClient(base_url=second_daemon.url)
    leftovers = client.api.containers(all=True, filters={"label": f"spo-gym.pool={pool.pool_id}"})
    assert leftovers == [], [c["State"] for c in leftovers]


async def test_reaper_judges_only_owners_it_can_see(
    pool: SandboxPool, docker_client: docker.DockerClient
) -> None:
    # Labelled as pools of a process on another host sharing this daemon: its pid and its
    # heartbeat are not visible from here, so a running container is left alone; one whose
    # supervisor has exited serves nobody and is removed.
    labels = {
        "spo-gym.pool": "0ther0host01",
        "spo-gym.owner": "another-host:4242:1700000000.00",
        "spo-gym.pool-dir": "/nonexistent/0ther0host01",
    }
    running = docker_client.containers.run(
        pool.image, ["sleep", "600"], labels=labels, detach=True, network_mode="none"
    )
    exited = docker_client.containers.run(
        pool.image,
        ["true"],
        labels={**labels, "spo-gym.pool": "0ther0host02"},
        detach=True,
        network_mode="none",
    )
    exited.wait()
    try:
        await pool.reap()
        assert pool_containers(docker_client, "0ther0host01") == [running.id]
        assert pool_containers(docker_client, "0ther0host02") == []
    finally:
        for c in (running, exited):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)


def test_concurrent_removals_all_return_after_the_container_is_gone(
    pool: SandboxPool, docker_client: docker.DockerClient
) -> None:
    # Several reapers (pools sharing a daemon) remove one container at once: the daemon tells
    # all but one "removal already in progress". None may return while it is still listed.
    for _ in range(3):
        container = docker_client.containers.run(
            pool.image, ["sleep", "600"], labels={"spo-gym.test": "removal"}, detach=True,
            network_mode="none",
        )  # fmt: skip
        seen: list[str] = []
        start = threading.Barrier(4)

        def remove(
            cid: str = container.id,
            start: threading.Barrier = start,
            seen: list[str] = seen,
        ) -> None:
            start.wait()
            remove_container(docker_client, cid)
            try:
                docker_client.api.inspect_container(cid)
                seen.append("still there")
            except docker.errors.NotFound:
                seen.append("gone")

        threads = [threading.Thread(target=remove) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert seen == ["gone"] * 4
