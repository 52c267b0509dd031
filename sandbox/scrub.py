"""The host's check of a scrub: a container serves another episode only if proven clean.

Between two episodes in one container the supervisor kills every process but itself, removes
every System V IPC object and empties every writable directory, then reports what is left on
each channel one episode could use to leave something for the next. The host compares that
evidence with a clean container and with the baseline the supervisor reported in its hello,
before any cell ran. A check that fails, or evidence that is missing or malformed, rejects
the container (fail closed): it is removed, never served again.

The checks, by channel:

- ``processes``: none but the supervisor (daemons, ``setsid`` and double-forked children,
  zombies and stopped processes included). Timers, alarms, open descriptors, memory maps and
  everything else a process holds go with it; the next episode's kernel is a new process.
- ``files``: nothing in ``/tmp`` (the working directory and ``HOME``), ``/dev/shm`` (POSIX
  shared memory) or ``/dev/mqueue`` (POSIX message queues); the root is read-only.
- ``ptys``: no pseudo-terminal left open.
- ``sysv``: no System V shared-memory segment, semaphore set or message queue.
- ``sockets``: no socket the baseline did not have: unix ones (abstract or bound to a path),
  netlink, packet, and inet ones, including a closed connection lingering in TIME_WAIT (its
  ports are readable for a minute; such a container is not reused). With no process left,
  a file lock or any other open file could only be held by a descriptor in flight in a unix
  socket, and that socket is still listed.
- ``process``: the supervisor's inherited attributes (nice, scheduling policy and parameters,
  CPU affinity, I/O priority, every resource limit) as in the baseline. A cell runs as the
  supervisor's user and can change them from outside; the next kernel would inherit them.
- ``limits``: the open-file and file-size hard limits as configured.

What no scrub inside a container can reset: counters the kernel keeps per namespace or per
cgroup go on counting across episodes (the next process id, tmpfs inode numbers, System V
IPC identifiers' sequence numbers, the cgroup's CPU-time and peak-memory accounting, the
supervisor's accumulated CPU time of its children). Code that deliberately encodes a number
in one of them can pass it to a later episode that deliberately decodes it; only a fresh
container (``reuse=False``) starts them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.results import SandboxError

WRITABLE_DIRS = ("/tmp", "/dev/shm", "/dev/mqueue")
SYSV_KINDS = ("shm", "sem", "msg")
MB = 1 << 20


class ScrubRejected(SandboxError):
    """A scrub did not prove the container clean; ``checks`` names what failed."""

    def __init__(self, checks: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.checks = checks


def _sockets_known(evidence: dict[str, Any], baseline: dict[str, Any], _: SandboxConfig) -> bool:
    now, before = evidence["sockets"], baseline["sockets"]
    if not isinstance(now, dict) or not isinstance(before, dict) or now.keys() != before.keys():
        return False  # a table the supervisor could not read is not evidence of anything
    return all(
        isinstance(rows, list) and set(rows) <= set(before[table]) for table, rows in now.items()
    )


def _same_attributes(evidence: dict[str, Any], baseline: dict[str, Any], _: SandboxConfig) -> bool:
    attrs = evidence["process"]
    return isinstance(attrs, dict) and bool(attrs) and attrs == baseline["process"]


def _configured_limits(evidence: dict[str, Any], _: dict[str, Any], cfg: SandboxConfig) -> bool:
    limits = evidence["process"]["rlimits"]
    return bool(
        limits["RLIMIT_NOFILE"][1] == cfg.nofile and limits["RLIMIT_FSIZE"][1] == cfg.fsize_mb * MB
    )


Check = Callable[[dict[str, Any], dict[str, Any], SandboxConfig], bool]
CHECKS: dict[str, Check] = {
    "processes": lambda ev, _b, _c: ev["processes"] == [],
    "files": lambda ev, _b, _c: ev["files"] == {d: [] for d in WRITABLE_DIRS},
    "ptys": lambda ev, _b, _c: ev["ptys"] == [],
    "sysv": lambda ev, _b, _c: ev["sysv"] == dict.fromkeys(SYSV_KINDS, 0),
    "sockets": _sockets_known,
    "process": _same_attributes,
    "limits": _configured_limits,
}


def _passes(
    check: Check, evidence: dict[str, Any], baseline: dict[str, Any], cfg: SandboxConfig
) -> bool:
    try:
        return check(evidence, baseline, cfg)
    except (KeyError, IndexError, TypeError, AttributeError):
        return False  # evidence of the wrong shape proves nothing


def verify_scrub(reply: Mapping[str, Any], baseline: Any, cfg: SandboxConfig) -> None:
    """Raises unless a scrub's reply proves the container clean (see the module docstring).

    Args:
        reply: the supervisor's answer to ``{"op": "scrub", "verify": true}``.
        baseline: what the same supervisor reported in its hello (:attr:`Box.baseline`).
        cfg: the limits the container was started with.

    Raises:
        ScrubRejected: naming every check that failed.
    """
    if reply.get("op") != "scrubbed":
        raise ScrubRejected(
            ("reply",), f"the scrub failed: {str(reply.get('message', reply.get('op')))[:200]}"
        )
    evidence = reply.get("evidence")
    if not isinstance(evidence, dict):
        raise ScrubRejected(("evidence",), "the scrub reported no evidence")
    if not isinstance(baseline, dict):
        raise ScrubRejected(("baseline",), "the container reported no baseline when it started")
    failed = tuple(
        name for name, check in CHECKS.items() if not _passes(check, evidence, baseline, cfg)
    )
    if failed:
        seen = "; ".join(f"{name}: {str(evidence.get(name))[:200]}" for name in failed)
        raise ScrubRejected(failed, f"the container is not clean after a scrub ({seen})")
