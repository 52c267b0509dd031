"""A blocking facade over :class:`SandboxPool` for scripts and sync code.

The pool lives on its own event loop in a daemon thread; every call is submitted there
and waited for, so sync callers never touch asyncio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.loop_thread import LoopThread
from sandbox.pool import PoolStats, SandboxPool
from sandbox.results import RunResult
from sandbox.session import SandboxSession


class SyncSandboxPool:
    """Blocking twin of :class:`SandboxPool`::

    with SyncSandboxPool(SandboxConfig(warm=1)) as pool:
        with pool.session() as s:
            print(s.run("print(1 + 1)").stdout)
    """

    def __init__(self, config: SandboxConfig | None = None, **overrides: Any) -> None:
        self._loop = LoopThread("spo-sandbox-loop")
        self.pool = SandboxPool(config, **overrides)
        self._call = self._loop.call

    def start(self) -> SyncSandboxPool:
        """Starts the pool (image check, reaping, self-test, warm-up)."""
        self._call(self.pool.start())
        return self

    def close(self) -> None:
        """Removes the pool's containers and stops its loop."""
        self._call(self.pool.close())
        self._loop.stop()

    def __enter__(self) -> SyncSandboxPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self, episode_id: str | None = None, **kwargs: Any) -> Iterator[SyncSandboxSession]:
        """One episode's sandbox, released on exit (see :meth:`SandboxPool.session`)."""
        cm = self.pool.session(episode_id, **kwargs)
        sess = self._call(cm.__aenter__())
        try:
            yield SyncSandboxSession(self._loop, sess)
        finally:
            self._call(cm.__aexit__(None, None, None))

    def run_many(
        self, jobs: Sequence[str | dict[str, Any]], concurrency: int = 8
    ) -> list[RunResult]:
        """Runs each job in its own fresh session (see :meth:`SandboxPool.run_many`)."""
        return self._call(self.pool.run_many(jobs, concurrency=concurrency))

    def stats(self) -> PoolStats:
        """The pool's counters and latencies."""
        return self.pool.stats()


class SyncSandboxSession:
    """Blocking twin of :class:`SandboxSession`."""

    def __init__(self, loop: LoopThread, session: SandboxSession) -> None:
        self._call = loop.call
        self.session = session

    def run(self, code: str, timeout: float | None = None) -> RunResult:
        """Runs a cell; see :meth:`SandboxSession.run`."""
        return self._call(self.session.run(code, timeout))

    def reset(self) -> None:
        """A fresh kernel; see :meth:`SandboxSession.reset`."""
        self._call(self.session.reset())

    def put_file(self, path: str, data: bytes | str) -> str:
        """Writes a file into the sandbox."""
        return self._call(self.session.put_file(path, data))

    def get_file(self, path: str) -> bytes:
        """Reads a file from the sandbox."""
        return self._call(self.session.get_file(path))
