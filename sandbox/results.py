"""Typed results and errors of the sandbox.

Two failure kinds stay distinct because the trainer treats them differently:
a cell whose sandbox died while it ran is an ordinary :class:`RunResult` with status
``sandbox_error`` (the code may have done it), while :class:`SandboxUnavailable` means no
sandbox could be obtained at all (infrastructure; the episode is masked, never scored).
"""

from __future__ import annotations

import enum
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
    def from_wire(cls, msg: dict[str, Any]) -> RunResult:
        """Builds a result from the supervisor's ``result`` message."""
        return cls(
            status=RunStatus(msg["status"]),
            stdout=msg.get("stdout", ""),
            stderr=msg.get("stderr", ""),
            exc_type=msg.get("exc_type"),
            exc_message=msg.get("exc_message"),
            duration_s=float(msg.get("duration_s", 0.0)),
            state_lost=bool(msg.get("state_lost", False)),
            truncated=bool(msg.get("truncated", False)),
        )

    def observation(self) -> str:
        """The text a model should read: output plus a clear reason for any failure."""
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
            return "(the code ran and printed nothing)"
        return "\n".join(p.rstrip("\n") for p in parts)


class SandboxError(Exception):
    """Base class of the sandbox's errors."""


class SandboxUnavailable(SandboxError):
    """No sandbox could be obtained (acquire timed out, daemon down, circuit open)."""


class SandboxSelfTestFailed(SandboxError):
    """The start-up self-test found a limit that is not applied; the pool refuses to serve."""


class ImageBuildError(SandboxError):
    """The sandbox image could not be built."""
