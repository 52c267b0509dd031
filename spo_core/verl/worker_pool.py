"""One sandbox pool per agent-loop worker process, shared by every episode the process plays.

verl makes a new agent-loop object for every sample, inside a long-lived ``AgentLoopWorker``
process, so the pool cannot belong to the agent loop: it lives here, created on first use,
started on a background event loop of its own (any caller's loop can then use it, and the
pool outlives the samples that first asked for it), and removed when the process exits. One
pool is kept per :class:`sandbox.SandboxConfig`; in practice a process has one.

A pool that cannot start (no daemon, no image, a failed self-test) is handed out once, so the
episode that asked for it is masked when its env asks for a sandbox, and then forgotten: the
next episode tries a fresh pool, so a passing outage does not mask the rest of a run.
"""

from __future__ import annotations

import atexit
import threading

from sandbox import SandboxConfig, SandboxPool, SandboxUnavailable
from sandbox.loop_thread import LoopThread, await_on

__all__ = ["close_worker_pools", "worker_pool"]


class _WorkerPools:
    """The process's pools, on one background loop thread."""

    def __init__(self) -> None:
        self.pools: dict[SandboxConfig, SandboxPool] = {}
        self.thread: LoopThread | None = None
        self.lock = threading.Lock()
        self.exit_hook = False

    def get(self, config: SandboxConfig) -> tuple[SandboxPool, LoopThread]:
        with self.lock:
            if self.thread is None:
                self.thread = LoopThread("spo-gym-verl-sandbox")
            if not self.exit_hook:
                atexit.register(self.close_at_exit)
                self.exit_hook = True
            pool = self.pools.get(config)
            if pool is None:
                pool = self.pools[config] = SandboxPool(config)
            return pool, self.thread

    def forget(self, config: SandboxConfig, pool: SandboxPool) -> None:
        with self.lock:
            if self.pools.get(config) is pool:
                del self.pools[config]

    def take_all(self) -> tuple[list[SandboxPool], LoopThread | None]:
        with self.lock:
            pools, self.pools = list(self.pools.values()), {}
            thread, self.thread = self.thread, None
            return pools, thread

    def close_at_exit(self) -> None:
        # At exit the pools' thread pools are shut down, so their async close() cannot run:
        # stop the loop's tasks and the loop, then remove the containers synchronously.
        pools, thread = self.take_all()
        if thread is not None:
            thread.cancel_all()
            thread.stop(timeout=5.0)
        for pool in pools:
            pool.close_at_exit()


_pools = _WorkerPools()


async def worker_pool(config: SandboxConfig) -> SandboxPool:
    """This process's started pool for ``config``.

    Returns a pool whose start failed as well (see the module docstring): its sessions raise
    :class:`sandbox.SandboxUnavailable`, which an env turns into a masked episode.
    """
    pool, thread = _pools.get(config)
    try:
        await await_on(thread.loop, pool.start)
    except SandboxUnavailable:
        _pools.forget(config, pool)
        await await_on(thread.loop, pool.close)
    return pool


async def close_worker_pools() -> None:
    """Removes every container of this process's pools and stops their loop thread.

    The next :func:`worker_pool` call starts afresh. Processes that simply exit need not call
    it: the pools are removed at exit.
    """
    pools, thread = _pools.take_all()
    if thread is None:
        return
    for pool in pools:
        await await_on(thread.loop, pool.close)
    thread.stop()
