"""The asyncio sandbox pool: warm containers, sessions, backpressure, breaker, reaping.

One hardened container per episode at a time, taken from a warm pool. After the episode
it is scrubbed and served again only if the scrub proves it clean (see
:mod:`sandbox.scrub`); otherwise, and always with ``reuse=False``, it is removed and a
fresh one takes its place. Several pools can share one daemon: containers carry the
owning pool's id and owner process in their labels, and :mod:`sandbox.reaper` removes only
those no live pool will use again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import requests

from sandbox import reaper
from sandbox.box import Box, ContainerFactory
from sandbox.channel import ChannelClosed
from sandbox.config import SandboxConfig
from sandbox.image import ensure_image, image_tag
from sandbox.results import RunResult, RunStatus, SandboxError, SandboxUnavailable
from sandbox.scrub import ScrubRejected, verify_scrub
from sandbox.selftest import run_self_test
from sandbox.session import SandboxSession

T = TypeVar("T")
# Errors that mean the daemon (not the code in a container) failed.
DAEMON_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError, TimeoutError)


def runtime_root() -> Path:
    """Host directory holding per-pool socket dirs (short: sun_path is 108 bytes)."""
    root = Path(
        os.environ.get("SPO_GYM_RUNTIME") or Path(tempfile.gettempdir()) / f"spo-gym-{os.getuid()}"
    )
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    return root


def _percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of the pool's counters and latencies (milliseconds)."""

    live: int
    ready: int
    in_use: int
    waiting: int
    created: int
    removed: int
    create_failures: int
    acquired: int
    unavailable: int
    reused: int
    scrub_rejections: dict[str, int]
    replaced: int
    reaped: int
    breaker_open: bool
    runs: dict[str, int]
    run_p50_ms: float
    run_p99_ms: float
    acquire_p50_ms: float
    acquire_p99_ms: float
    create_p50_ms: float
    create_p99_ms: float


@dataclass
class _Counters:
    created: int = 0
    removed: int = 0
    create_failures: int = 0
    acquired: int = 0
    unavailable: int = 0
    reused: int = 0
    # Containers not reused after a scrub, by failed check (or how the scrub failed).
    scrub_rejections: Counter[str] = field(default_factory=Counter)
    replaced: int = 0
    reaped: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    run_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    acquire_ms: deque[float] = field(default_factory=lambda: deque(maxlen=4096))
    create_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1024))


class _Breaker:
    """Opens after N consecutive daemon errors; one trial after the cool-down."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error = ""

    @property
    def open(self) -> bool:
        if self.opened_at is None:
            return False
        if time.monotonic() - self.opened_at >= self.cooldown_s:
            self.opened_at = None  # half-open: the next attempt decides
            self.failures = self.threshold - 1
            return False
        return True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= self.threshold:
            self.opened_at = time.monotonic()


class SandboxPool:
    """A pool of hardened, pre-started sandbox containers.

    Use as an async context manager (or call :meth:`start` / :meth:`close`)::

        async with SandboxPool(SandboxConfig(warm=4)) as pool:
            async with pool.session("episode-1") as s:
                r = await s.run("x = 6 * 7\\nprint(x)")

    Args:
        config: limits and pool behaviour; keyword overrides are applied on top.
        client: a Docker client; default ``docker.from_env()`` (or ``config.docker_url``).
        container_overrides: extra ``containers.run`` arguments applied last, e.g.
            ``{"runtime": "runsc"}``; the self-test still proves every limit.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        client: docker.DockerClient | None = None,
        container_overrides: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> None:
        base = config or SandboxConfig()
        self.config = (
            SandboxConfig.model_validate({**base.model_dump(), **overrides}) if overrides else base
        )
        self.pool_id = uuid.uuid4().hex[:12]
        self._client = client
        self._owns_client = client is None
        self._container_overrides = dict(container_overrides or {})
        self._factory: ContainerFactory | None = None
        self._dir = runtime_root() / self.pool_id
        self._executor = ThreadPoolExecutor(self.config.max_concurrent_ops + 2, "spo-sandbox")
        self._ops = asyncio.Semaphore(self.config.max_concurrent_ops)
        self._ready: deque[Box] = deque()
        self._waiters: deque[asyncio.Future[Box]] = deque()
        self._boxes: dict[str, Box] = {}
        self._creating = 0
        self._in_use = 0
        self._kick = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._breaker = _Breaker(self.config.breaker_threshold, self.config.breaker_cooldown_s)
        self._c = _Counters()
        self._starting: asyncio.Task[None] | None = None
        self._start_error: SandboxUnavailable | None = None
        self._started = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> SandboxPool:
        """Connects to the daemon, ensures the image, reaps orphans, self-tests, warms up.

        Single-flight: concurrent callers (say, many first acquires of a lazily created
        pool) share one start. A failed start is final: every later call raises the same
        error at once, without touching the daemon again.

        Raises:
            SandboxUnavailable: the daemon cannot be reached, the image cannot be had, or
                the pool was closed; :class:`SandboxSelfTestFailed` (a subclass) when a
                limit is silently not applied (fail closed).
        """
        if self._start_error is not None:
            raise self._start_error.with_traceback(None)
        if self._started:
            return self
        if self._closed:
            raise SandboxUnavailable("the pool is closed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._starting)
        except asyncio.CancelledError:
            if self._starting.cancelled():  # close() stopped the start, not our caller
                raise SandboxUnavailable("the pool was closed while it started") from None
            raise
        return self

    async def _start(self) -> None:
        try:
            client = await self._connect()
            image = await self._resolve_image(client)
            self._dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._factory = ContainerFactory(
                client,
                self.config,
                image,
                self._dir,
                f"spo-gym-{self.pool_id}",
                reaper.owner_labels(self.pool_id, self._dir),
                self._blocking,
                self._container_overrides,
            )
            await self.reap()
            if self.config.self_test:
                await run_self_test(self._factory)
        except SandboxUnavailable as exc:
            raise self._start_failed(exc) from None
        except (*DAEMON_ERRORS, SandboxError) as exc:
            error = SandboxUnavailable(f"the sandbox pool could not start: {exc}")
            raise self._start_failed(error) from exc
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._spawn(self._filler())
        self._spawn(self._housekeeping())
        self._kick.set()

    def _start_failed(self, error: SandboxUnavailable) -> SandboxUnavailable:
        """Remembers why the start failed (for every later caller) and lets go of the client."""
        self._start_error = error
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
        return error

    async def _connect(self) -> docker.DockerClient:
        try:
            if self._client is None:
                url = self.config.docker_url
                self._client = await self._blocking(
                    (lambda: docker.DockerClient(base_url=url)) if url else docker.from_env
                )
            client: docker.DockerClient = self._client
            await self._blocking(client.ping)
        except DAEMON_ERRORS as exc:
            raise SandboxUnavailable(f"cannot reach the Docker daemon: {exc}") from exc
        return client

    async def close(self) -> None:
        """Removes every container of this pool and stops background work."""
        if self._closed:
            return
        self._closed = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            await asyncio.gather(self._starting, return_exceptions=True)
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(SandboxUnavailable("the pool is closing"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        boxes = list(self._boxes.values())
        self._ready.clear()
        await asyncio.gather(*(self._destroy(b) for b in boxes), return_exceptions=True)
        if self._factory is not None:
            # A creation cut short by the close still runs in its worker thread: wait for
            # it, then find what it created by label.
            await self._factory.settle()
        if self._client is not None:
            await self._blocking(
                reaper.remove_by_label, self._client, {reaper.LABEL_POOL: self.pool_id}
            )
            if self._owns_client:
                self._client.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._executor.shutdown(wait=False)

    def close_at_exit(self) -> None:
        """Blocking cleanup for interpreter exit, where :meth:`close` cannot run (the thread
        pool it needs is already shut down): removes this pool's containers by label."""
        self._closed = True
        if self._client is not None:
            reaper.remove_by_label(self._client, {reaper.LABEL_POOL: self.pool_id})
        shutil.rmtree(self._dir, ignore_errors=True)

    async def __aenter__(self) -> SandboxPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client (available after :meth:`start`)."""
        if self._client is None:
            raise SandboxError("the pool has not been started")
        return self._client

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the pool was started on (its containers' streams are bound to it)."""
        return self._loop

    @property
    def image(self) -> str:
        """The image tag this pool runs (known after :meth:`start`)."""
        return self._factory.image if self._factory is not None else ""

    @property
    def factory(self) -> ContainerFactory:
        """The factory that starts this pool's containers (available after :meth:`start`)."""
        if self._factory is None:
            raise SandboxError("the pool has not been started")
        return self._factory

    # -- sessions ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(
        self,
        episode_id: str | None = None,
        *,
        stateless: bool | None = None,
        echo_last_expr: bool | None = None,
        acquire_timeout_s: float | None = None,
    ) -> AsyncIterator[SandboxSession]:
        """One episode's sandbox: acquired on entry, released (removed or scrubbed) on exit.

        Raises:
            SandboxUnavailable: no container could be obtained in time.
        """
        sess = SandboxSession(
            self,
            await self.acquire(acquire_timeout_s),
            episode_id or uuid.uuid4().hex[:12],
            stateless=self.config.stateless if stateless is None else stateless,
            echo_last_expr=self.config.echo_last_expr if echo_last_expr is None else echo_last_expr,
        )
        try:
            yield sess
        finally:
            await sess.release()

    async def run_many(
        self,
        jobs: Sequence[str | dict[str, Any]],
        *,
        concurrency: int = 8,
        on_result: Callable[[int, RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Runs each job in its own fresh session; results in input order.

        A job is a code string or ``{"code", "timeout"?, "files"?}`` (files: path → text).
        A job that could not get a sandbox yields a ``sandbox_error`` result saying so; one
        whose files could not be written yields an ``error`` result.
        """
        sem = asyncio.Semaphore(concurrency)
        results: list[RunResult | None] = [None] * len(jobs)

        async def one(i: int, job: str | dict[str, Any]) -> None:
            spec: dict[str, Any] = {"code": job} if isinstance(job, str) else job
            files: dict[str, str] = spec.get("files") or {}
            async with sem:
                try:
                    async with self.session() as s:
                        for path, content in files.items():
                            await s.put_file(path, content)
                        res = await s.run(spec["code"], timeout=spec.get("timeout"))
                except SandboxUnavailable as exc:
                    res = RunResult(
                        RunStatus.SANDBOX_ERROR, exc_type="SandboxUnavailable", exc_message=str(exc)
                    )
                except SandboxError as exc:  # a file could not be written
                    res = RunResult(RunStatus.ERROR, exc_type="FileError", exc_message=str(exc))
            results[i] = res
            if on_result is not None:
                on_result(i, res)

        await asyncio.gather(*(one(i, j) for i, j in enumerate(jobs)))
        return [r for r in results if r is not None]

    # -- acquire / release ---------------------------------------------------------------------

    async def acquire(self, timeout: float | None = None) -> Box:
        """Takes a ready container, waiting up to ``timeout`` (backpressure).

        Raises:
            SandboxUnavailable: timed out, the breaker is open, or the pool is closed.
        """
        if not self._started:
            await self.start()
        t0 = time.monotonic()
        deadline = t0 + (self.config.acquire_timeout_s if timeout is None else timeout)
        while True:
            self._check_available()
            box = self._ready.popleft() if self._ready else None
            if box is None:
                fut: asyncio.Future[Box] = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                self._kick.set()
                try:
                    await asyncio.wait({fut}, timeout=max(0.0, deadline - time.monotonic()))
                except asyncio.CancelledError:
                    self._abandon(fut)
                    raise
                if not fut.done():
                    fut.cancel()
                    self._waiters.remove(fut)
                    self._c.unavailable += 1
                    raise SandboxUnavailable(
                        f"no sandbox became free within {deadline - t0:.1f} s "
                        f"({self._in_use} in use, max_containers={self.config.max_containers})"
                    )
                if fut.exception() is not None:
                    self._c.unavailable += 1
                    raise fut.exception()  # type: ignore[misc]
                box = fut.result()
            if box.broken or box.channel.closed:
                self._spawn(self._destroy(box))
                continue
            self._in_use += 1
            self._c.acquired += 1
            self._c.acquire_ms.append((time.monotonic() - t0) * 1e3)
            self._kick.set()
            return box

    async def release(self, box: Box) -> None:
        """Returns a container after its episode: reused after a verified scrub (``reuse``),
        else removed."""
        self._in_use -= 1
        box.episodes += 1
        if self.config.reuse and not box.broken and not self._closed:
            self._spawn(self._recycle(box))
        else:
            self._spawn(self._destroy(box))
        self._kick.set()

    def _abandon(self, fut: asyncio.Future[Box]) -> None:
        """A cancelled acquirer: a container already handed to it goes to the next one."""
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._hand_over(fut.result())
        else:
            fut.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def _check_available(self) -> None:
        if self._closed:
            raise SandboxUnavailable("the pool is closed")
        if self._breaker.open:
            self._c.unavailable += 1
            raise SandboxUnavailable(
                f"the Docker daemon failed {self._breaker.failures} times in a row "
                f"(last: {self._breaker.last_error}); retrying after {self.config.breaker_cooldown_s:.0f} s"
            )

    def _hand_over(self, box: Box) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(box)
                return
        self._ready.append(box)

    async def _recycle(self, box: Box) -> None:
        clean = False
        verify = self.config.verify_scrub
        try:
            reply = await box.channel.request(
                {"op": "scrub", "verify": verify}, self.config.start_timeout_s
            )
            if verify:
                verify_scrub(reply, box.baseline, self.config)
            elif reply.get("op") != "scrubbed":
                raise ScrubRejected(("reply",), "the scrub failed")
            clean = True
        except ScrubRejected as exc:
            self._c.scrub_rejections.update(exc.checks)
        except ChannelClosed:
            self._c.scrub_rejections["closed"] += 1
        except TimeoutError:
            self._c.scrub_rejections["timeout"] += 1
        except SandboxError:  # a malformed reply
            self._c.scrub_rejections["protocol"] += 1
        finally:
            # Whatever happened, the container is either served again or removed: it never
            # stays counted against max_containers without being usable.
            if clean and not self._closed:
                self._c.reused += 1
                self._hand_over(box)
            else:
                await self._destroy(box)

    # -- container management -------------------------------------------------------------------

    async def _filler(self) -> None:
        """Keeps ``warm`` containers ready plus one per waiting acquirer."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._closed:
                return
            waiting = sum(1 for f in self._waiters if not f.done())
            want = self.config.warm + waiting - len(self._ready) - self._creating
            room = self.config.max_containers - len(self._boxes) - self._creating
            for _ in range(max(0, min(want, room))):
                if self._breaker.open:
                    break
                self._creating += 1
                self._spawn(self._create())

    async def _create(self) -> None:
        t0 = time.monotonic()
        try:
            async with self._ops:
                box = await self.factory.start(uuid.uuid4().hex[:10])
        except DAEMON_ERRORS as exc:  # ConnectionError (no proper hello) is an OSError
            self._c.create_failures += 1
            self._breaker.failure(f"{type(exc).__name__}: {exc}")
            if self._breaker.open:
                self._fail_waiters()
            else:
                await asyncio.sleep(min(2.0, 0.1 * 2**self._breaker.failures))
            self._kick.set()
            return
        finally:
            self._creating -= 1
        self._breaker.success()
        self._c.created += 1
        self._c.create_ms.append((time.monotonic() - t0) * 1e3)
        self._boxes[box.container_id] = box
        if self._closed:
            await self._destroy(box)
            return
        self._hand_over(box)

    def _fail_waiters(self) -> None:
        error = SandboxUnavailable(
            f"the Docker daemon failed {self._breaker.failures} times in a row: {self._breaker.last_error}"
        )
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    async def _destroy(self, box: Box) -> None:
        box.broken = True
        box.channel.close()
        self._boxes.pop(box.container_id, None)
        with contextlib.suppress(ValueError):
            self._ready.remove(box)
        try:
            async with self._ops:
                await self.factory.remove(box)
            self._c.removed += 1
        except DAEMON_ERRORS:
            pass  # the reaper removes it once the daemon answers again (labels survive)
        finally:
            self._kick.set()

    def discard(self, box: Box) -> None:
        """A container failed while in use (died, hung, broke the protocol): it is removed
        now and a fresh one replaces it."""
        self._c.replaced += 1
        self._in_use -= 1
        self._spawn(self._destroy(box))

    # -- reaping & housekeeping ---------------------------------------------------------------

    async def reap(self) -> int:
        """Removes containers no live pool will use again (see :mod:`sandbox.reaper`)."""
        try:
            n = await self._blocking(reaper.reap, self.client, self.pool_id)
        except DAEMON_ERRORS:
            return 0
        self._c.reaped += n
        return n

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.reap_interval_s)
            await self.reap()
            # Warm containers whose supervisor died while idle are replaced.
            for box in [b for b in self._ready if b.channel.closed]:
                await self._destroy(box)

    # -- helpers -----------------------------------------------------------------------------------

    async def _resolve_image(self, client: docker.DockerClient) -> str:
        image = self.config.image
        if image in ("spo-gym-sandbox:latest", "spo-gym-sandbox", ""):
            image = image_tag()
            try:
                await self._blocking(client.images.get, image)
            except docker.errors.ImageNotFound:
                await self._blocking(functools.partial(ensure_image, client))
        return image

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def record_run(self, result: RunResult, wall_s: float) -> None:
        """Counts one finished cell (sessions report each run here)."""
        self._c.runs[result.status.value] += 1
        self._c.run_ms.append(wall_s * 1e3)

    def stats(self) -> PoolStats:
        """Counters and p50/p99 latencies (ms) of runs, acquires and container creation."""
        c = self._c
        return PoolStats(
            live=len(self._boxes) + self._creating,
            ready=len(self._ready),
            in_use=self._in_use,
            waiting=sum(1 for f in self._waiters if not f.done()),
            created=c.created,
            removed=c.removed,
            create_failures=c.create_failures,
            acquired=c.acquired,
            unavailable=c.unavailable,
            reused=c.reused,
            scrub_rejections=dict(c.scrub_rejections),
            replaced=c.replaced,
            reaped=c.reaped,
            breaker_open=self._breaker.opened_at is not None,
            runs=dict(c.runs),
            run_p50_ms=_percentile(c.run_ms, 0.5),
            run_p99_ms=_percentile(c.run_ms, 0.99),
            acquire_p50_ms=_percentile(c.acquire_ms, 0.5),
            acquire_p99_ms=_percentile(c.acquire_ms, 0.99),
            create_p50_ms=_percentile(c.create_ms, 0.5),
            create_p99_ms=_percentile(c.create_ms, 0.99),
        )
