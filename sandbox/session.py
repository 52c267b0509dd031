"""One episode's view of the sandbox: run cells, reset, move files."""

from __future__ import annotations

import base64
import math
import time
from dataclasses import replace
from typing import Any, Protocol

from sandbox.box import Box
from sandbox.channel import ChannelClosed
from sandbox.config import SandboxConfig
from sandbox.results import RunResult, RunStatus, SandboxError, SandboxProtocolError


class BoxSource(Protocol):
    """What a session needs from its pool (:class:`sandbox.SandboxPool` is one)."""

    @property
    def config(self) -> SandboxConfig:
        """The limits the containers run with."""
        ...

    async def acquire(self, timeout: float | None = None) -> Box:
        """A ready container; raises :class:`~sandbox.SandboxUnavailable` if none comes."""
        ...

    async def release(self, box: Box) -> None:
        """Takes back a container at the end of an episode."""
        ...

    def discard(self, box: Box) -> None:
        """Takes back a container that failed while in use; it is removed, never reused."""
        ...

    def record_run(self, result: RunResult, wall_s: float) -> None:
        """Counts one finished cell in the pool's statistics."""
        ...


class SandboxSession:
    """A container held for one episode.

    Variables persist across :meth:`run` calls (unless ``stateless``). Whatever the code
    does, :meth:`run` returns a typed result: if the container dies, stops answering or
    answers nonsense while a cell runs, that cell's result is ``sandbox_error`` (the code
    may have caused it) and the next call transparently gets a fresh container with
    ``state_lost=True``. Obtained from :meth:`SandboxPool.session`.

    Args:
        pool: where containers come from and go back to.
        box: the container this episode starts with.
        episode_id: a label for logs and statistics.
        stateless: a fresh kernel for every :meth:`run`.
        echo_last_expr: print the repr of a cell's trailing expression.
    """

    def __init__(
        self,
        pool: BoxSource,
        box: Box,
        episode_id: str,
        *,
        stateless: bool,
        echo_last_expr: bool,
    ) -> None:
        self.pool = pool
        self.episode_id = episode_id
        self.stateless = stateless
        self.echo_last_expr = echo_last_expr
        self.calls = 0
        self._box: Box | None = box
        self._lost_state = False
        # Honest replies stay far below this; anything longer was forged and is clipped.
        self._max_chars = 4 * pool.config.output_keep_bytes + 1024

    async def release(self) -> None:
        """Returns the container to the pool (idempotent)."""
        if self._box is not None:
            box, self._box = self._box, None
            await self.pool.release(box)

    async def _live_box(self) -> Box:
        if self._box is None:
            # The previous container failed in a cell; this raises SandboxUnavailable if none is free.
            self._box = await self.pool.acquire()
        return self._box

    @property
    def container_id(self) -> str | None:
        """The id of the container currently serving this session."""
        return self._box.container_id if self._box else None

    async def run(self, code: str, timeout: float | None = None) -> RunResult:
        """Runs ``code`` in the episode's kernel and returns a typed result.

        User-code failures (exceptions, timeouts, OOM, output floods, a killed kernel or
        container) are ordinary results the model can read.

        Raises:
            SandboxUnavailable: a replacement container could not be obtained.
            TypeError, ValueError: ``code`` is not a string, or ``timeout`` is not a
                positive, finite number of seconds.
        """
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, not {type(code).__name__}")
        timeout = self.pool.config.default_timeout_s if timeout is None else float(timeout)
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout}")
        box = await self._live_box()
        self.calls += 1
        t0 = time.monotonic()
        cfg = self.pool.config
        msg = {
            "op": "run",
            "code": code,
            "timeout": timeout,
            "stateless": self.stateless,
            "echo": self.echo_last_expr,
        }
        try:
            reply = await box.channel.request(msg, timeout + cfg.grace_s + cfg.host_slack_s)
            result = RunResult.from_wire(reply, self._max_chars)
        except (ChannelClosed, TimeoutError, SandboxProtocolError) as exc:
            result = RunResult(
                RunStatus.SANDBOX_ERROR,
                exc_type="SandboxError",
                exc_message=f"{_why(exc)}; a fresh sandbox will run the next cell and variables were lost",
                duration_s=time.monotonic() - t0,
                state_lost=True,
            )
        if result.status is RunStatus.SANDBOX_ERROR:
            self._drop_box()  # whatever failed, this container is not trusted again
            self._lost_state = True  # the next cell runs in a fresh container
        else:
            if self._lost_state and not result.state_lost:
                result = replace(result, state_lost=True)
            self._lost_state = False
        self.pool.record_run(result, time.monotonic() - t0)
        return result

    def _drop_box(self) -> None:
        if self._box is not None:
            box, self._box = self._box, None
            box.broken = True
            self.pool.discard(box)

    async def reset(self) -> None:
        """A fresh kernel: variables are gone, files in ``/tmp`` stay.

        Raises:
            SandboxError: the sandbox failed (the next call gets a fresh one).
        """
        await self._request({"op": "reset"}, "ok")

    async def put_file(self, path: str, data: bytes | str) -> str:
        """Writes ``data`` to ``path`` (relative to the working dir, under ``/tmp``).

        Raises:
            SandboxError: the path is refused or the sandbox failed.
        """
        raw = data.encode() if isinstance(data, str) else data
        reply = await self._request(
            {"op": "put", "path": path, "data_b64": base64.b64encode(raw).decode()}, "ok"
        )
        return str(reply.get("path", path))

    async def get_file(self, path: str, max_bytes: int = 64 << 20) -> bytes:
        """Reads a file from the sandbox.

        Raises:
            SandboxError: missing, larger than ``max_bytes``, or the sandbox failed.
        """
        reply = await self._request({"op": "get", "path": path, "max_bytes": max_bytes}, "file")
        try:
            data = base64.b64decode(reply["data_b64"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            self._drop_box()
            self._lost_state = True
            raise SandboxProtocolError(f"the sandbox sent a malformed file for {path}") from exc
        if len(data) > max_bytes:
            raise SandboxError(f"{path} is larger than {max_bytes} bytes")
        return data

    async def _request(self, msg: dict[str, Any], expect: str) -> dict[str, Any]:
        box = await self._live_box()
        try:
            reply = await box.channel.request(msg, self.pool.config.start_timeout_s)
            if reply.get("op") not in (expect, "error"):
                raise SandboxProtocolError(
                    f"expected {expect!r}, got {str(reply.get('op'))[:80]!r}"
                )
        except (ChannelClosed, TimeoutError, SandboxProtocolError) as exc:
            self._drop_box()
            self._lost_state = True
            raise SandboxError(f"the sandbox failed during {msg['op']}: {_why(exc)}") from exc
        if reply["op"] == "error":
            raise SandboxError(f"{msg['op']} failed: {str(reply.get('message'))[:1000]}")
        return reply


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the sandbox stopped responding"
    if isinstance(exc, SandboxProtocolError):
        return f"the sandbox sent a malformed reply ({exc})"
    return "the sandbox container died"
