"""Typed results and errors of the sandbox.

Two failure kinds stay distinct because the trainer treats them differently:
a cell whose sandbox died while it ran is an ordinary :class:`RunResult` with status
``sandbox_error`` (the code may have done it), while :class:`SandboxUnavailable` means no
sandbox could be obtained at all (infrastructure; the episode is masked, never scored).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


class RunStatus(enum.StrEnum):
    """How a cell ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    OOM = "oom"
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"


@dataclass(frozen=True)
class RunResult:
    """The outcome of one ``run()`` call.

    Attributes:
        status: how the cell ended.
        stdout: captured standard output (head and tail kept, a marker between them).
        stderr: captured standard error, with the user-frame traceback appended on error.
        exc_type: exception class name for errors (``ZeroDivisionError``, ``TimeoutError``…).
        exc_message: exception message, or the reason for non-exception failures.
        duration_s: wall time of the cell as measured inside the sandbox (host time for
            ``sandbox_error``).
        state_lost: the kernel was restarted, so variables from earlier cells are gone.
        truncated: some output was dropped between head and tail.
    """

    status: RunStatus
    stdout: str = ""
    stderr: str = ""
    exc_type: str | None = None
    exc_message: str | None = None
    duration_s: float = 0.0
    state_lost: bool = False
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """True when the cell ran to completion without an exception."""
        return self.status is RunStatus.OK

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_wire(cls, msg: Mapping[str, Any], max_chars: int) -> RunResult:
        """Builds a result from the supervisor's ``result`` message.

        The message comes from inside the sandbox, so it is checked, not trusted: text
        longer than ``max_chars`` is clipped (head and tail, marked ``truncated``).

        Raises:
            SandboxProtocolError: not a result, an unknown status, or a field of the wrong type.
        """
        if msg.get("op") != "result":
            raise SandboxProtocolError(
                f"expected a result, got {_show(msg.get('op'))}: {_show(msg.get('message'))}"
            )
        try:
            status = RunStatus(str(msg["status"]))
        except (KeyError, ValueError):
            raise SandboxProtocolError(f"unknown status {_show(msg.get('status'))}") from None
        texts: dict[str, str | None] = {}
        clipped = False
        for key, default in (
            ("stdout", ""),
            ("stderr", ""),
            ("exc_type", None),
            ("exc_message", None),
        ):
            value = msg.get(key, default)
            if value is None and default is None:
                texts[key] = None
                continue
            if not isinstance(value, str):
                raise SandboxProtocolError(f"{key} is a {type(value).__name__}, not text")
            texts[key], cut = clip_text(value, max_chars)
            clipped = clipped or cut
        duration = msg.get("duration_s", 0.0)
        if (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
            or duration < 0
        ):
            raise SandboxProtocolError(f"duration_s is {_show(duration)}")
        flags = {key: msg.get(key, False) for key in ("state_lost", "truncated")}
        if not all(isinstance(flag, bool) for flag in flags.values()):
            raise SandboxProtocolError(f"state_lost/truncated are not booleans: {_show(flags)}")
        return cls(
            status=status,
            stdout=texts["stdout"] or "",
            stderr=texts["stderr"] or "",
            exc_type=texts["exc_type"],
            exc_message=texts["exc_message"],
            duration_s=float(duration),
            state_lost=flags["state_lost"],
            truncated=flags["truncated"] or clipped,
        )

    def observation(self) -> str:
        """The text a model should read: output, a clear reason for any failure, and a note
        when the kernel was restarted (so the model knows its variables are gone)."""
        parts = [self.stdout] if self.stdout else []
        if self.stderr:
            parts.append(self.stderr)
        if (
            self.status is not RunStatus.OK
            and self.exc_message
            and self.exc_message not in self.stderr
        ):
            parts.append(f"{self.exc_type or self.status.value}: {self.exc_message}")
        if not parts:
            parts.append("(the code ran and printed nothing)")
        if self.state_lost and "variables were lost" not in (self.exc_message or ""):
            parts.append(STATE_LOST_NOTE)
        return "\n".join(p.rstrip("\n") for p in parts)


STATE_LOST_NOTE = "(the Python kernel was restarted: variables from earlier cells are gone)"


def clip_text(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to about ``max_chars`` (head and tail with a marker); True if it was cut."""
    if len(text) <= max_chars:
        return text, False
    keep = max_chars // 2
    return (
        f"{text[:keep]}\n...[{len(text) - 2 * keep} characters truncated]...\n{text[-keep:]}",
        True,
    )


def _show(value: Any) -> str:
    """A short, safe rendering of a value from inside the sandbox, for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class SandboxError(Exception):
    """Base class of the sandbox's errors."""


class SandboxUnavailable(SandboxError):
    """No sandbox could be obtained (acquire timed out, daemon down, circuit open)."""


class SandboxSelfTestFailed(SandboxUnavailable):
    """The start-up self-test found a limit that is not applied; the pool refuses to serve."""


class SandboxProtocolError(SandboxError):
    """A reply from inside the sandbox broke the protocol (malformed, oversized, unknown
    status, out of order). The sandbox is not trusted again; a cell that caused it gets a
    scored ``sandbox_error`` result."""


class ImageBuildError(SandboxError):
    """The sandbox image could not be built."""
