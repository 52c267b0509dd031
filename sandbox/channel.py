"""The host end of the JSON-lines channel to a container's supervisor.

Everything that arrives on it comes from inside the sandbox, where the model's code runs,
so nothing is trusted: a reply that is not one bounded JSON object answering the request
just sent is a :class:`~sandbox.results.SandboxProtocolError`, and any failure leaves the
channel closed (a late reply would otherwise answer the next request).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sandbox.results import SandboxProtocolError

# Large enough for a file transfer of the default 64 MiB cap in base64.
STREAM_LIMIT = 128 << 20


class ChannelClosed(ConnectionError):
    """The supervisor's connection ended (container or supervisor died)."""


class Channel:
    """Request/response over one JSON-lines stream; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._next_id = 0

    async def request(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Sends ``msg`` and returns the reply.

        Raises:
            ChannelClosed: the connection ended.
            TimeoutError: no reply within ``timeout`` seconds.
            SandboxProtocolError: the reply was oversized, not JSON, not an object, or
                answered another request.
        """
        async with self._lock:
            if self.closed:
                raise ChannelClosed("the channel to the sandbox is closed")
            self._next_id += 1
            msg = {**msg, "id": self._next_id}
            try:
                return await self._exchange(msg, timeout)
            except BaseException:
                self.close()  # out of step with the supervisor: never reuse it
                raise

    async def _exchange(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            self._writer.write(json.dumps(msg).encode() + b"\n")
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except ConnectionError as exc:
            raise ChannelClosed(str(exc)) from exc
        except ValueError as exc:  # a line longer than STREAM_LIMIT
            raise SandboxProtocolError(f"the sandbox sent an oversized reply ({exc})") from exc
        if not line:
            raise ChannelClosed("the supervisor closed the connection")
        try:
            reply = json.loads(line)
        except ValueError as exc:
            raise SandboxProtocolError(
                f"the sandbox sent a reply that is not JSON ({exc})"
            ) from exc
        if not isinstance(reply, dict):
            raise SandboxProtocolError(f"the sandbox sent a {type(reply).__name__}, not an object")
        if reply.get("id") != msg["id"]:
            raise SandboxProtocolError(
                f"the sandbox answered request {reply.get('id')!r}, not {msg['id']}"
            )
        return reply

    @property
    def closed(self) -> bool:
        """True once the supervisor's side has ended or we closed it."""
        return self._writer.is_closing() or self._reader.at_eof()

    def close(self) -> None:
        """Closes the stream (idempotent)."""
        self._writer.close()
