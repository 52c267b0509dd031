"""Run torch work off the event loop in a thread that ends with it.

torch's CPU kernels run parallel regions on an OpenMP thread team owned by the thread that calls
them, and the team lives as long as that thread. Once a process holds more team threads than it
has CPUs, libgomp stops spinning at its barriers and every team sleeps and wakes through the
kernel at each of the ~1,000 parallel regions of a decode step: one idle team left on another
thread (``asyncio.to_thread``'s pool threads live on) made decode steps ~40% slower (measured
at batch 4, 2 threads on 2 CPUs). A thread that ends frees its team.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def start_passing_thread(
    fn: Callable[..., T], *args: Any, name: str = "torch-work"
) -> tuple[threading.Thread, asyncio.Future[T]]:
    """Start ``fn(*args)`` in a new thread; return the thread and a future of its result on the
    running event loop. Cancelling the future does not stop the thread: join it to wait."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        # A loop closed meanwhile has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread, future


async def in_passing_thread(fn: Callable[..., T], *args: Any, name: str = "torch-work") -> T:
    """``fn(*args)`` in a new thread that ends with it, awaited (compare ``asyncio.to_thread``).

    If the awaiting task is cancelled, the thread still runs to its end.
    """
    _, future = start_passing_thread(fn, *args, name=name)
    return await future
