"""The grader's worker processes: start, call with a CPU budget, retry what is not the answer's
fault.

sympy can hang or exhaust memory on inputs such as ``9^{9^{9^{9}}}``, and math-verify's own
timeout uses ``SIGALRM``, which only works on a main thread, so math-verify runs in worker
processes (:mod:`envs.grading.worker`). Each request gets a CPU-time budget and a wall-clock
backstop; a worker that overruns is killed and replaced, so neither a thread nor a worker
can hang.

What a failed request means decides what happens next:

* the worker used its whole CPU budget on the request — the answer's doing: "timeout";
* the worker would not start, was found dead or with a broken pipe, or reached the wall-clock
  backstop *without* having used its CPU budget (a machine too loaded to run it) — the
  infrastructure's doing: retried on a fresh worker, with a doubled backstop, up to
  ``retries`` times, then "unavailable";
* the worker died while working on the request — retried once on a fresh worker; a request
  that kills two workers is the answer's doing: "error".
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

import psutil

__all__ = ["WALL_FACTOR", "PoolResult", "WorkerPool"]

_START_TIMEOUT_S = 60.0  # a cold worker imports sympy and math-verify (~1 s idle, more under load)
_START_BACKOFF_S = 0.25  # before retrying a failed start, doubled each time
WALL_FACTOR = 3.0
"""Wall-clock backstop of a request's first attempt, as a multiple of its CPU budget."""
_WORKER_FILE = Path(__file__).with_name("worker.py")


@dataclass(frozen=True)
class PoolResult:
    """The outcome of one request.

    Attributes:
        status: "ok" (``replies`` holds the worker's answer), "timeout" (the request used its
            whole CPU budget), "error" (it killed two workers) or "unavailable" (no worker
            could serve it, after retries).
        replies: the worker's list of per-item results when "ok".
        detail: what went wrong otherwise.
    """

    status: Literal["ok", "timeout", "error", "unavailable"]
    replies: list[tuple[str, str]] | None = None
    detail: str = ""


class _StartError(Exception):
    """A worker process that could not be started."""


class _Worker:
    """One math-verify process, talking over two pipes.

    A plain subprocess (not ``multiprocessing``) so that the caller's ``__main__`` is never
    re-imported in the worker: scripts without an ``if __name__ == "__main__"`` guard work.
    """

    def __init__(self, memory_limit_mb: int | None) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (
            "import importlib.util as u, sys; "
            f"s = u.spec_from_file_location('spo_gym_grading_worker', {str(_WORKER_FILE)!r}); "
            "m = sys.modules[s.name] = u.module_from_spec(s); s.loader.exec_module(m); "
            f"m.serve({to_child_r}, {from_child_w}, {memory_limit_mb or 0})"
        )
        # The worker's stderr goes to a file, so a worker that dies can say why.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
        except OSError as e:  # no process at all (no memory, no such executable)
            os.close(to_child_w)
            os.close(from_child_r)
            self._stderr.close()
            raise _StartError(f"grader worker failed to start ({e!r})") from e
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.outbox = Connection(to_child_w, readable=False)
        self.inbox = Connection(from_child_r, writable=False)
        # Not waited for yet, so the process exists (as a zombie at worst) for psutil to read.
        self._usage = psutil.Process(self.process.pid)
        self._last_words = ""
        try:
            if not self.inbox.poll(_START_TIMEOUT_S):
                raise TimeoutError(f"no reply within {_START_TIMEOUT_S:.0f} s")
            self.inbox.recv()
        except (OSError, EOFError) as e:
            self.kill()
            raise _StartError(
                f"grader worker failed to start ({e!r}, exit code {self.process.returncode})"
                + self.stderr_tail()
            ) from e

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def call(
        self, request: Any, cpu_budget: float, wall_budget: float
    ) -> list[tuple[str, str]] | Literal["cpu", "wall"]:
        """Send one request; its reply, or "cpu" if the worker used ``cpu_budget`` CPU seconds
        on it, or "wall" if ``wall_budget`` seconds passed first. Raises ``OSError`` if the
        request cannot be sent and ``EOFError`` if the worker dies before replying."""
        self.outbox.send(request)
        cpu_start = self._cpu_seconds()
        wall_deadline = time.monotonic() + wall_budget
        wait = min(cpu_budget, wall_budget)  # it cannot use more CPU time than the time we wait
        while not self.inbox.poll(wait):
            used = self._cpu_seconds() - cpu_start
            if used >= cpu_budget:
                return "cpu"
            wall_left = wall_deadline - time.monotonic()
            if wall_left <= 0:
                return "wall"
            wait = min(cpu_budget - used, wall_left)
        reply: list[tuple[str, str]] = self.inbox.recv()
        return reply

    def _cpu_seconds(self) -> float:
        try:
            times = self._usage.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0  # it died: the next poll sees the closed pipe
        return float(times.user + times.system)

    def stderr_tail(self) -> str:
        """The last line the worker wrote to stderr, as ": <line>", or ""."""
        if self._stderr.closed:
            return self._last_words
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 2000))
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return f": {lines[-1].strip()}" if lines else ""

    def stop(self) -> None:
        """Ask the worker to exit; kill it if it does not within a second."""
        try:
            self.outbox.send(None)
            self.process.wait(1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass  # gone or stuck: kill() below settles it either way
        self.kill()

    def kill(self) -> None:
        """End the process and close its pipes (idempotent); its last stderr line is kept."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.inbox.close()
        self.outbox.close()
        if not self._stderr.closed:
            self._last_words = self.stderr_tail()
            self._stderr.close()


class WorkerPool:
    """Up to ``size`` worker processes, started on demand; thread-safe.

    Args:
        size: maximum number of workers (and requests served at once).
        cpu_budget: CPU seconds one request may use.
        memory_limit_mb: address-space limit per worker (``None``: unlimited).
        retries: further attempts after an infrastructure failure (see the module docstring).
    """

    def __init__(
        self, size: int, cpu_budget: float, memory_limit_mb: int | None, retries: int
    ) -> None:
        self.size = size
        self.cpu_budget = cpu_budget
        self.memory_limit_mb = memory_limit_mb
        self.retries = retries
        self._cond = threading.Condition()
        self._idle: list[_Worker | None] = [None] * size
        self._busy: set[_Worker] = set()
        self._closed = False

    def pids(self) -> list[int]:
        """Process ids of the running workers, idle and busy."""
        with self._cond:
            workers = [w for w in self._idle if w is not None] + list(self._busy)
        return [w.process.pid for w in workers if w.alive]

    def run(self, request: Any, cpu_budget: float | None = None) -> PoolResult:
        """Serve one request (see :class:`PoolResult`); ``cpu_budget`` overrides the pool's."""
        budget = self.cpu_budget if cpu_budget is None else cpu_budget
        failures: list[str] = []
        deaths = 0
        for attempt in range(self.retries + 1):
            wall_budget = budget * WALL_FACTOR * 2**attempt
            worker = self._acquire()
            try:
                if worker is None:
                    worker = self._start()
                outcome = worker.call(request, budget, wall_budget)
            except _StartError as e:
                self._done(None, keep=False)
                failures.append(str(e))
                if attempt < self.retries:
                    time.sleep(_START_BACKOFF_S * 2**attempt)
                continue
            except EOFError as e:  # the worker died while working on this request
                assert worker is not None
                worker.kill()
                self._done(worker, keep=False)
                deaths += 1
                failures.append(
                    f"grader worker died ({e!r}, exit code {worker.process.returncode})"
                    + worker.stderr_tail()
                )
                if deaths >= 2:
                    return PoolResult(
                        "error", detail=f"the answer killed two workers; {failures[-1]}"
                    )
                continue
            except OSError as e:  # the request could not be sent: a broken worker
                assert worker is not None
                worker.kill()
                self._done(worker, keep=False)
                failures.append(f"grader worker unreachable ({e!r})")
                continue
            except BaseException:
                if worker is not None:
                    worker.kill()
                self._done(worker, keep=False)
                raise
            if outcome == "cpu" or outcome == "wall":
                worker.kill()  # still computing: the only way to stop sympy is to end it
                self._done(worker, keep=False)
                if outcome == "cpu":
                    return PoolResult(
                        "timeout", detail=f"math-verify exceeded its {budget:g} s budget"
                    )
                failures.append(
                    f"no reply within {wall_budget:g} s wall-clock while using less than its "
                    f"{budget:g} s CPU budget (an overloaded or stalled worker)"
                )
                continue
            self._done(worker, keep=True)
            return PoolResult("ok", replies=outcome)
        return PoolResult(
            "unavailable",
            detail=f"the grader failed {self.retries + 1} times; last: {failures[-1]}",
        )

    def close(self) -> None:
        """Stop idle workers now; busy ones stop when their request finishes."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for worker in idle:
            if worker is not None:
                worker.stop()

    # -- internals

    def _acquire(self) -> _Worker | None:
        """An idle worker, or ``None`` for a free slot (the caller starts a worker)."""
        with self._cond:
            while not self._idle and not self._closed:
                self._cond.wait()
            if self._closed:
                raise RuntimeError("the grader is closed")
            worker = self._idle.pop()
            if worker is not None:
                self._busy.add(worker)
        if worker is not None and not worker.alive:
            # Died while idle (killed, or the OOM killer): replace it, no attempt lost.
            worker.kill()
            with self._cond:
                self._busy.discard(worker)
            return None
        return worker

    def _start(self) -> _Worker:
        worker = _Worker(self.memory_limit_mb)
        with self._cond:
            self._busy.add(worker)
        return worker

    def _done(self, worker: _Worker | None, *, keep: bool) -> None:
        """Give the slot back: with ``worker`` in it if ``keep``, else empty."""
        with self._cond:
            if worker is not None:
                self._busy.discard(worker)
            if not self._closed:
                self._idle.append(worker if keep else None)
                self._cond.notify()
                return
        if worker is not None and keep:
            worker.stop()
