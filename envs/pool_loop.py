"""Which event loop a tool env's sandbox work runs on, and the process-wide default pool.

A :class:`sandbox.SandboxPool` is bound to the loop it started on. Envs made without a pool
share one default pool that lives on a background :class:`sandbox.loop_thread.LoopThread`, so
sync callers (``env.step``) and async callers on any loop can use it; an env's async methods
hop to the pool's loop when they are awaited elsewhere.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from sandbox import SandboxPool
from sandbox.loop_thread import LoopThread, await_on, running_loop, submit

__all__ = ["default_pool", "on_pool_loop", "pool_loop", "run_sync", "spawn"]

T = TypeVar("T")


class _DefaultPool:
    """One pool for every env made without one, on a background event-loop thread.

    Created on first use, started on first acquire, closed (containers removed) at exit.
    """

    def __init__(self) -> None:
        self.pool: SandboxPool | None = None
        self._thread: LoopThread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._thread is None:
                self._thread = LoopThread("spo-gym-envs")
            return self._thread.loop

    def get(self) -> SandboxPool:
        self.loop()
        with self._lock:
            if self.pool is None:
                self.pool = SandboxPool()
                atexit.register(self.close)
            return self.pool

    def close(self) -> None:
        # At exit the pool's thread pool is already shut down, so its async close() cannot
        # run: stop the loop's tasks and the loop, then remove the containers synchronously.
        pool, self.pool = self.pool, None
        if self._thread is not None:
            self._thread.cancel_all()
            self._thread.stop(timeout=5.0)
        if pool is not None:
            pool.close_at_exit()


_default = _DefaultPool()


def default_pool() -> SandboxPool:
    """The process-wide :class:`sandbox.SandboxPool` of envs made without a ``pool``.

    Created with the default :class:`sandbox.SandboxConfig` on first use, started on the first
    sandbox an env acquires, owned by a background event-loop thread, closed at exit.
    """
    return _default.get()


def pool_loop(pool: SandboxPool) -> asyncio.AbstractEventLoop:
    """The loop that owns ``pool``: its containers' streams are bound to it.

    A pool not started yet starts on the caller's loop, or on the background loop for sync
    callers; the default pool always lives on the background loop.
    """
    if pool.loop is not None:
        return pool.loop
    if pool is _default.pool:
        return _default.loop()
    return running_loop() or _default.loop()


async def on_pool_loop(pool: SandboxPool, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Awaits ``work()`` on the loop that owns ``pool`` (here, if that is this loop)."""
    loop = pool_loop(pool)
    if loop is asyncio.get_running_loop():
        return await work()
    return await await_on(loop, work)


def run_sync(pool: SandboxPool, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Runs ``work()`` on the loop that owns ``pool`` and blocks until it is done.

    Raises:
        RuntimeError: called from inside that loop (it would wait for itself).
    """
    loop = pool_loop(pool)
    if loop is running_loop():
        raise RuntimeError(
            "a sync env method was called inside the event loop that owns the sandbox pool; "
            "await the async twin instead (areset, astep, atruncate, aclose)"
        )
    return submit(loop, work()).result()


_background: set[asyncio.Task[Any]] = set()


def spawn(pool: SandboxPool, coro: Coroutine[Any, Any, Any]) -> None:
    """Starts ``coro`` on the loop that owns ``pool`` without waiting (from inside that loop)."""
    task = pool_loop(pool).create_task(coro)
    _background.add(task)  # a strong reference until done: the loop keeps only weak ones
    task.add_done_callback(_background.discard)
