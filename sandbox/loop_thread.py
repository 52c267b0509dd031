"""An asyncio event loop on a daemon thread, and awaiting work that runs on another loop.

A :class:`SandboxPool` is bound to the loop it started on (its containers' streams live there).
Sync callers, and async callers on other loops, reach it through the loop that owns it: the
blocking facade (:mod:`sandbox.sync`) and the envs' process-wide default pool both run their
pool on a :class:`LoopThread`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "await_on", "running_loop", "submit"]

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def submit(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]
) -> concurrent.futures.Future[T]:
    """Schedules ``coro`` on ``loop`` (another thread's) and returns a thread-safe future.

    Raises:
        RuntimeError: ``loop`` is not running (the coroutine is closed, not leaked).
    """
    if not loop.is_running():
        coro.close()
        raise RuntimeError("the event loop that owns the sandbox pool is not running")
    return asyncio.run_coroutine_threadsafe(coro, loop)


async def await_on(
    loop: asyncio.AbstractEventLoop, work: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """Runs ``work()`` on another thread's ``loop`` and awaits its result here.

    Cancelling the caller cancels the work there and waits until it has finished, so its
    cleanup (a sandbox release) is done by the time the caller sees ``CancelledError``.
    """
    task: asyncio.Task[Any] | None = None
    cancelled = False

    async def run() -> T:
        nonlocal task
        task = asyncio.current_task()
        if cancelled:  # cancelled before it started
            raise asyncio.CancelledError
        return await work()

    def cancel() -> None:  # runs on ``loop``, so it cannot race with run()
        nonlocal cancelled
        cancelled = True
        if task is not None:
            task.cancel()

    outcome = asyncio.wrap_future(submit(loop, run()))
    try:
        return await asyncio.shield(outcome)
    except asyncio.CancelledError:
        loop.call_soon_threadsafe(cancel)
        await asyncio.wait({outcome})
        raise


class LoopThread:
    """An event loop running forever on a daemon thread.

    Args:
        name: the thread's name (shows in stack dumps).
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the loop and blocks until it is done; its exception propagates.

        Raises:
            RuntimeError: called from the loop's own thread (it would wait for itself).
        """
        if running_loop() is self.loop:
            coro.close()
            raise RuntimeError("LoopThread.call() from inside its own loop would deadlock")
        return submit(self.loop, coro).result()

    def cancel_all(self, timeout: float = 5.0) -> None:
        """Cancels every task on the loop and waits (up to ``timeout``) for them to end."""

        async def cancel() -> None:
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            with contextlib.suppress(concurrent.futures.TimeoutError):
                submit(self.loop, cancel()).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the loop and joins its thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
