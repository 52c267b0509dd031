"""In-container supervisor: owns a persistent Python kernel and serves the host.

Stdlib only; it runs inside the sandbox image as the unprivileged user. It connects to
the host over the unix socket bind-mounted at ``$SPO_SOCKET`` (one JSON object per
line each way) and executes requests:

    {"op": "run", "code": str, "timeout": float, "stateless": bool, "echo": bool}
    {"op": "reset"} | {"op": "put", "path", "data_b64"} | {"op": "get", "path"}
    {"op": "scrub", "verify": bool}

The kernel is a child process in its own session, speaking to the supervisor over a
private pipe pair; its stdout/stderr are pipes the supervisor drains continuously,
keeping a head and a tail per stream. Timeouts are enforced here, not on the host:
SIGINT (so the traceback shows where the code was stuck), a grace period, then SIGKILL.

Code in the kernel runs as the supervisor's own user, so the supervisor guards itself:
it is not dumpable (no ``/proc/<pid>/environ``, ptrace, ``/proc/<pid>/mem`` or
``pidfd_getfd`` from the cell). It is the container's init (PID 1): a separate init such as
Docker's would run as the same user, be dumpable and outlive every episode, so a cell could
attach to it and keep code or data there. As init it is also the parent of every orphan, and
signals a cell sends it without a handler (SIGKILL, SIGSTOP, SIGTERM) are dropped by the
kernel. Whenever a kernel is replaced, every other process is killed: no process of a cell
outlives its kernel. What the kernel reports is checked like any other input from the cell.

A container may serve several episodes. Between two, ``scrub`` kills every process but this
one, removes every System V IPC object and empties every writable directory; with
``verify`` it then reports what is left on each channel one episode could use to leave
something for the next (processes, files, ptys, IPC objects, sockets, and the process
attributes a fresh kernel inherits from this one). The hello carries the same
sockets and attributes as seen before any cell ran, the baseline the host compares with.

The kernel itself is ``kernel.py`` next to this file.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import math
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import time
from pathlib import Path

WORKDIR = os.environ.get("SPO_WORKDIR", "/tmp/work")
KERNEL_CTL_IN = 3  # the kernel receives its control pipe here, then moves it
KERNEL_CTL_OUT = 4
KERNEL_STATUSES = ("ok", "error", "interrupted")
EXC_TYPE_KEEP = 128
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
IPC_RMID = 0
# Directories a cell can write to; a reused container must find them empty.
WRITABLE_DIRS = ("/tmp", "/dev/shm", "/dev/mqueue")
SYSV_KINDS = ("shm", "sem", "msg")
# The container's sockets: tables of its network namespace that list them cheaply (unix,
# netlink and packet ones named by inode, ping ones by address), and the counters of
# /proc/net/sockstat{,6} kept per namespace (the tcp tables are read from a host-wide hash:
# milliseconds each). A closed connection in TIME_WAIT counts as "tw".
SOCKET_TABLES_BY_INODE = ("unix", "netlink", "packet")
SOCKET_TABLES_BY_ADDRESS = ("icmp", "icmp6")
SOCKSTAT_PER_NAMESPACE = {
    ("TCP", "inuse"),
    ("TCP", "tw"),
    ("UDP", "inuse"),
    ("UDPLITE", "inuse"),
    ("RAW", "inuse"),
    ("FRAG", "inuse"),
    ("TCP6", "inuse"),
    ("UDP6", "inuse"),
    ("UDPLITE6", "inuse"),
    ("RAW6", "inuse"),
    ("FRAG6", "inuse"),
}
# A killed process's sockets can take a moment to go, longer on a loaded host (200 ms was
# not enough with the whole test suite running): wait up to this long, 10 ms apart.
SOCKET_SETTLE_S = 1.0
# sched_getattr and ioprio_get have no wrapper in the standard library.
SYSCALLS = {
    "x86_64": {"sched_getattr": 315, "ioprio_get": 252},
    "aarch64": {"sched_getattr": 275, "ioprio_get": 31},
}
SCHED_ATTR = struct.Struct("=IIQiIQQQII")
IOPRIO_WHO_PROCESS = 1
LIBC = ctypes.CDLL(None, use_errno=True)

# Run with -c (not as a script) so that the working directory is on sys.path, as in a REPL.
KERNEL_SOURCE = Path(__file__).with_name("kernel.py").read_text()


class OutputBuffer:
    """Keeps the first and last ``keep`` bytes of a stream and counts the rest."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.keep:
                del self.tail[: len(self.tail) - self.keep]

    def text(self) -> tuple[str, bool]:
        dropped = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if dropped <= 0:
            return head + tail, False
        marker = f"\n...[{dropped} bytes truncated]...\n"
        return head + marker + tail, True


class LineBuffer:
    """Splits the kernel's control stream into lines, dropping any line longer than ``cap``.

    The kernel's own replies are clipped well below the cap, so only bytes the cell wrote
    itself are ever dropped, and the supervisor's memory stays bounded whatever it writes.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        self.data += chunk
        lines = []
        while (end := self.data.find(b"\n")) >= 0:
            line = bytes(self.data[:end])
            del self.data[: end + 1]
            if self.skipping:
                self.skipping = False
            else:
                lines.append(line)
        if len(self.data) > self.cap:
            self.data.clear()
            self.skipping = True
        return lines


def read_oom_kills() -> int | None:
    """The container cgroup's OOM-kill counter (v2 memory.events, or v1 memory.oom_control)."""
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            continue
    return None


class KernelStartError(Exception):
    """A kernel process could not be started."""


class Kernel:
    """One Python kernel process and its pipes."""

    def __init__(self, keep: int) -> None:
        try:
            os.makedirs(WORKDIR, exist_ok=True)
            self._spawn()
        except OSError as exc:
            raise KernelStartError(f"{type(exc).__name__}: {exc}") from exc
        self.used = False
        self.status: int | None = None
        self.ctl = LineBuffer(12 * (4 * keep + EXC_TYPE_KEEP + 1024))
        if self._read_ready(time.monotonic() + 30) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.close()
            raise KernelStartError("the kernel process did not report ready")

    def _spawn(self) -> None:
        ctl_in_r, self.ctl_w = os.pipe()
        self.ctl_r, ctl_out_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        # The child's ends go above 10 first so that placing them on 1-4 overwrites nothing.
        child = [_move_high(fd) for fd in (out_w, err_w, ctl_in_r, ctl_out_w)]
        env = {k: v for k, v in os.environ.items() if k not in ("SPO_SOCKET", "SPO_TOKEN")}
        env["SPO_WORKDIR"] = WORKDIR
        try:
            self.pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-u", "-c", KERNEL_SOURCE],
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, child[0], 1),
                    (os.POSIX_SPAWN_DUP2, child[1], 2),
                    (os.POSIX_SPAWN_DUP2, child[2], KERNEL_CTL_IN),
                    (os.POSIX_SPAWN_DUP2, child[3], KERNEL_CTL_OUT),
                ],
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError:
            for fd in (self.ctl_w, self.ctl_r, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in child:
                os.close(fd)
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            raise
        self.out, self.err = out_r, err_r
        for fd in (self.out, self.err, self.ctl_r):
            os.set_blocking(fd, False)

    def _read_ready(self, deadline: float) -> dict | None:
        """The kernel's ready message, or None if it exited or stayed silent until ``deadline``."""
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.ctl_r, self.pidfd], [], [], left)
            if self.ctl_r in readable:
                chunk = _read_nb(self.ctl_r)
                if chunk == b"":
                    return None
                for line in self.ctl.feed(chunk or b""):
                    msg = _parse_json(line)
                    if msg is not None and msg.get("op") == "ready":
                        return msg
            elif readable:
                return None  # exited before it was ready
        return None

    def exited(self) -> bool:
        """Whether the kernel process has ended (whether or not it was reaped yet)."""
        return self.status is not None or bool(select.select([self.pidfd], [], [], 0)[0])

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: killed by that signal), or None if it still runs."""
        if self.status is None:
            if not select.select([self.pidfd], [], [], timeout)[0]:
                return None
            try:
                self.status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:  # reaped as an orphan while it was starting
                self.status = 0
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        """Reaps the (already killed) process and closes its descriptors."""
        self.wait(timeout=5.0)
        for fd in (self.ctl_w, self.ctl_r, self.out, self.err, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _move_high(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _read_nb(fd: int) -> bytes | None:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _describe_signal(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


class Outcome:
    """How one cell's execution loop ended."""

    def __init__(self) -> None:
        self.done: dict | None = None  # the kernel's valid reply
        self.forged = False  # a reply with the right nonce but not the kernel's shape
        self.interrupted = False  # SIGINT was sent at the deadline
        self.stop: str | None = None  # "timeout" or "output_limit": the cell was cut off
        self.ended = False  # the kernel exited or closed its control pipe


class Supervisor:
    """Serves host requests over the socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.pid = os.getpid()
        self.kernel: Kernel | None = None
        self.baseline: dict = {}
        self.keep = int(os.environ.get("SPO_OUTPUT_KEEP", "8192"))
        self.hard_cap = int(os.environ.get("SPO_OUTPUT_HARD_CAP", str(8 << 20)))
        self.grace = float(os.environ.get("SPO_GRACE", "0.5"))
        # Orphans of the cell are reparented here; reap them as they exit (never the kernel,
        # whose exit status is read by its own wait).
        signal.signal(signal.SIGCHLD, lambda _sig, _frame: self.reap_orphans())

    def send(self, obj: dict) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    # -- the kernel and the cell's processes ------------------------------------------------

    def prepare(self) -> None:
        """Starts a kernel if none is running (between requests, off the reply's path)."""
        if self.kernel is None:
            with contextlib.suppress(KernelStartError):  # op_run retries and reports it
                self.kernel = Kernel(self.keep)

    def discard_kernel(self) -> list[int]:
        """Kills the kernel and every process the cell started; returns any that survived."""
        left = self.kill_descendants()
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        return left

    def kill_descendants(self) -> list[int]:
        deadline = time.monotonic() + 5.0
        while True:
            left = _descendants(self.pid)
            if not left or time.monotonic() > deadline:
                return left
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self.kernel is not None:
                self.kernel.wait(timeout=0.05)
            self.reap_orphans()
            time.sleep(0.001)

    def reap_orphans(self) -> None:
        kernel = self.kernel.pid if self.kernel is not None else None
        for pid in _zombie_children(self.pid):
            if pid != kernel:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    # -- serving -----------------------------------------------------------------------------

    def serve(self) -> None:
        self.prepare()
        self.baseline = {"sockets": _named_sockets(), "process": _process_attributes()}
        token = os.environ.get("SPO_TOKEN", "")
        self.send({"op": "hello", "token": token, "pid": self.pid, "baseline": self.baseline})
        handlers = {
            "run": self.op_run,
            "reset": self.op_reset,
            "put": self.op_put,
            "get": self.op_get,
            "scrub": self.op_scrub,
        }
        for line in self.rfile:
            req = json.loads(line)
            handler = handlers.get(req.get("op"))
            if handler is None:
                reply = {"op": "error", "message": "unknown op {!r}".format(req.get("op"))}
            else:
                try:
                    reply = handler(req)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    reply = {"op": "error", "message": f"{type(exc).__name__}: {exc}"}
            reply["id"] = req.get("id")
            self.send(reply)
            self.prepare()

    # -- run ---------------------------------------------------------------------------------

    def op_run(self, req: dict) -> dict:
        started = time.monotonic()
        timeout = float(req["timeout"])
        if not (math.isfinite(timeout) and timeout > 0) or not isinstance(req["code"], str):
            raise ValueError("a run needs code and a positive, finite timeout")
        stateless = bool(req.get("stateless"))
        lost = False  # variables of earlier cells are gone before this cell starts
        if self.kernel is not None and (self.kernel.exited() or (stateless and self.kernel.used)):
            lost = self.kernel.exited() and self.kernel.used
            self.discard_kernel()
        if self.kernel is None:
            try:
                self.kernel = Kernel(self.keep)
            except KernelStartError as exc:
                self.discard_kernel()
                return self._result(
                    "sandbox_error",
                    started,
                    exc_type="SandboxError",
                    exc_message=f"the Python kernel could not be started ({exc}); variables were lost",
                    state_lost=True,
                )
        kernel = self.kernel
        kernel.used = True
        oom_before = read_oom_kills()
        out, err = OutputBuffer(self.keep), OutputBuffer(self.keep)
        outcome = self._execute(kernel, req, started + timeout, out, err)
        timed_out = f"execution timed out after {timeout:.1f} s; the kernel was restarted and variables were lost"
        if outcome.stop == "output_limit":
            self.discard_kernel()
            return self._result(
                "output_limit",
                started,
                out=out,
                err=err,
                exc_type="OutputLimitExceeded",
                exc_message=f"output exceeded {self.hard_cap} bytes; the cell was stopped",
                state_lost=True,
            )
        if outcome.interrupted:
            # SIGINT may land after the cell finished, even between cells: never trust the
            # kernel again once it was sent.
            self.discard_kernel()
            done = outcome.done
            if done is not None and done["status"] != "interrupted":
                return self._reply_result(done, done["status"], started, out, err, state_lost=True)
            return self._result(
                "timeout",
                started,
                out=out,
                err=err,
                exc_type="TimeoutError",
                exc_message=timed_out,
                traceback=done.get("traceback") if done else None,
                state_lost=True,
            )
        if outcome.forged:
            self.discard_kernel()
            return self._result(
                "sandbox_error",
                started,
                out=out,
                err=err,
                exc_type="SandboxError",
                exc_message="the kernel sent a malformed reply; it was restarted and variables were lost",
                state_lost=True,
            )
        if outcome.done is None:
            return self._kernel_died(kernel, started, out, err, oom_before)
        # "interrupted" without our SIGINT: the code raised KeyboardInterrupt itself.
        status = "ok" if outcome.done["status"] == "ok" else "error"
        if outcome.ended or stateless:
            self.discard_kernel()
        return self._reply_result(
            outcome.done, status, started, out, err, state_lost=lost or outcome.ended
        )

    def _execute(
        self, kernel: Kernel, req: dict, deadline: float, out: OutputBuffer, err: OutputBuffer
    ) -> Outcome:
        """Sends the cell to the kernel and pumps its output until it ends, one way or another."""
        outcome = Outcome()
        # Replies carry the request's nonce: stray or stale control lines are ignored.
        nonce = os.urandom(8).hex()
        request = {"code": req["code"], "echo": bool(req.get("echo")), "nonce": nonce}
        try:
            _write_all(kernel.ctl_w, json.dumps(request).encode() + b"\n")
        except OSError:
            outcome.ended = True
            return outcome
        pipes = {kernel.out: out, kernel.err: err}
        interrupt_at: float | None = None
        looked_at_deadline = False
        while True:
            now = time.monotonic()
            wait = (deadline if interrupt_at is None else interrupt_at + self.grace) - now
            readable, _, _ = select.select(
                [kernel.ctl_r, kernel.pidfd, *pipes], [], [], max(wait, 0.0)
            )
            for fd in readable:
                if fd in pipes:
                    chunk = _read_nb(fd)
                    if chunk:
                        pipes[fd].add(chunk)
                    elif chunk == b"":
                        del pipes[fd]
            if out.total + err.total > self.hard_cap:
                outcome.stop = "output_limit"
                break
            exited = kernel.pidfd in readable
            if kernel.ctl_r in readable or exited:
                # A reply written just before the kernel exited is still in the pipe.
                self._read_replies(kernel, nonce, outcome, drain=exited)
            if outcome.done is not None or outcome.forged or outcome.ended or exited:
                outcome.ended = outcome.ended or exited
                break
            now = time.monotonic()
            if interrupt_at is None and now >= deadline:
                if not looked_at_deadline:
                    looked_at_deadline = True  # one last look: a reply may be waiting
                    continue
                interrupt_at = now
                outcome.interrupted = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(kernel.pid, signal.SIGINT)
            elif interrupt_at is not None and now >= interrupt_at + self.grace:
                outcome.stop = "timeout"
                break
        # Output written before the kernel reported is already in the pipes: drain it.
        for fd, buf in pipes.items():
            while chunk := _read_nb(fd):
                buf.add(chunk)
        return outcome

    def _read_replies(self, kernel: Kernel, nonce: str, outcome: Outcome, drain: bool) -> None:
        while outcome.done is None and not outcome.forged:
            chunk = _read_nb(kernel.ctl_r)
            if chunk == b"":
                outcome.ended = True  # the kernel died or closed its control pipe
                return
            if chunk is None:
                return
            for line in kernel.ctl.feed(chunk):
                msg = _parse_json(line)
                if msg is None or msg.get("nonce") != nonce:
                    continue
                if _is_kernel_reply(msg):
                    outcome.done = msg
                else:
                    outcome.forged = True
                break
            if not drain:
                return

    def _kernel_died(
        self,
        kernel: Kernel,
        started: float,
        out: OutputBuffer,
        err: OutputBuffer,
        oom_before: int | None,
    ) -> dict:
        code = kernel.wait(timeout=1.0)  # None: alive but closed its control channel
        oom_after = read_oom_kills()
        self.discard_kernel()
        if (
            code == -signal.SIGKILL
            and oom_before is not None
            and oom_after is not None
            and oom_after > oom_before
        ):
            return self._result(
                "oom",
                started,
                out=out,
                err=err,
                exc_type="MemoryError",
                exc_message="the process was killed for exceeding the sandbox memory limit; the kernel was restarted and variables were lost",
                state_lost=True,
            )
        if code is None:
            why = "the kernel closed its control channel"
        elif code < 0:
            why = f"the kernel was killed by {_describe_signal(-code)}"
        else:
            why = f"the kernel process exited with code {code}"
        return self._result(
            "error",
            started,
            out=out,
            err=err,
            exc_type="KernelDied",
            exc_message=why + "; a fresh kernel was started and variables were lost",
            state_lost=True,
        )

    def _reply_result(
        self,
        done: dict,
        status: str,
        started: float,
        out: OutputBuffer,
        err: OutputBuffer,
        state_lost: bool,
    ) -> dict:
        return self._result(
            status,
            started,
            out=out,
            err=err,
            exc_type=done.get("exc_type"),
            exc_message=done.get("exc_message"),
            traceback=done.get("traceback"),
            state_lost=state_lost,
        )

    def _result(
        self,
        status: str,
        started: float,
        out: OutputBuffer | None = None,
        err: OutputBuffer | None = None,
        exc_type: str | None = None,
        exc_message: str | None = None,
        traceback: str | None = None,
        state_lost: bool = False,
    ) -> dict:
        stdout, t_out = out.text() if out else ("", False)
        stderr, t_err = err.text() if err else ("", False)
        exc_type, t_type = _clip(exc_type, EXC_TYPE_KEEP)
        exc_message, t_msg = _clip(exc_message, self.keep)
        traceback, t_tb = _clip(traceback, self.keep)
        t_err = t_err or t_type or t_msg or t_tb
        if traceback:
            stderr = stderr + ("\n" if stderr and not stderr.endswith("\n") else "") + traceback
        return {
            "op": "result",
            "status": status,
            "stdout": stdout,
            "stderr": stderr,
            "exc_type": exc_type,
            "exc_message": exc_message,
            "duration_s": time.monotonic() - started,
            "state_lost": state_lost,
            "truncated": t_out or t_err,
        }

    # -- other ops ---------------------------------------------------------------------------

    def op_reset(self, req: dict) -> dict:
        self.discard_kernel()
        return {"op": "ok"}

    def op_put(self, req: dict) -> dict:
        path = _in_workdir(req["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(req["data_b64"]))
        return {"op": "ok", "path": path}

    def op_get(self, req: dict) -> dict:
        path = _in_workdir(req["path"])
        with open(path, "rb") as f:
            data = f.read(int(req.get("max_bytes", 64 << 20)) + 1)
        return {"op": "file", "path": path, "data_b64": base64.b64encode(data).decode()}

    def op_scrub(self, req: dict) -> dict:
        """Returns the container to a clean state and, with ``verify``, reports the evidence.

        Every process but this one, every file in the writable directories and every
        System V IPC object go; the evidence lists whatever is still there on each channel.
        """
        self.discard_kernel()
        for kind in SYSV_KINDS:
            for ident in _sysv_ids(kind):
                _remove_sysv(kind, ident)
        for directory in WRITABLE_DIRS:
            _empty_dir(directory)
        if req.get("verify") is False:
            return {"op": "scrubbed"}
        return {"op": "scrubbed", "evidence": self.evidence()}

    def evidence(self) -> dict:
        """What is left, per channel, that a later episode could find."""
        return {
            "processes": [p for p in _all_pids() if p != self.pid],
            "files": {d: sorted(os.listdir(d)) for d in WRITABLE_DIRS},
            "ptys": sorted(name for name in os.listdir("/dev/pts") if name != "ptmx"),
            "sysv": {kind: len(_sysv_ids(kind)) for kind in SYSV_KINDS},
            "sockets": self.settled_sockets(),
            "process": _process_attributes(),
        }

    def settled_sockets(self) -> dict:
        """The container's sockets once those of the killed processes are gone: a unix
        socket held only by descriptors in flight is freed by the kernel's garbage
        collector, a moment after its last process."""
        known = self.baseline["sockets"]
        deadline = time.monotonic() + SOCKET_SETTLE_S
        while True:
            found = _sockets()
            settled = all(set(rows) <= set(known.get(table, ())) for table, rows in found.items())
            if settled or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


def _parse_json(line: bytes) -> dict | None:
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return msg if isinstance(msg, dict) else None


def _is_kernel_reply(msg: dict) -> bool:
    return msg.get("status") in KERNEL_STATUSES and all(
        isinstance(msg.get(key), (str, type(None)))
        for key in ("exc_type", "exc_message", "traceback")
    )


def _clip(text: str | None, keep: int) -> tuple[str | None, bool]:
    """Head and tail of ``text`` with a marker, so no message can flood the host."""
    if text is None or len(text) <= 2 * keep:
        return text, False
    dropped = len(text) - 2 * keep
    return f"{text[:keep]}\n...[{dropped} characters truncated]...\n{text[-keep:]}", True


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[1], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _zombie_children(parent: int) -> list[int]:
    return [p for p in _all_pids() if (s := _stat(p)) is not None and s == ("Z", parent)]


def _sysv_ids(kind: str) -> list[int]:
    with open(f"/proc/sysvipc/{kind}") as f:
        return [int(row.split()[1]) for row in f.read().splitlines()[1:] if row.strip()]


def _remove_sysv(kind: str, ident: int) -> None:
    if kind == "shm":
        LIBC.shmctl(ident, IPC_RMID, None)
    elif kind == "sem":
        LIBC.semctl(ident, 0, IPC_RMID)
    else:
        LIBC.msgctl(ident, IPC_RMID, None)


def _empty_dir(directory: str) -> None:
    for entry in os.listdir(directory):
        full = os.path.join(directory, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            _make_removable(full)
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)


def _make_removable(top: str) -> None:
    """Gives the owner full access to every directory under ``top`` (a cell may have taken
    it away), so that the whole tree can be listed and deleted."""
    with contextlib.suppress(OSError):
        os.chmod(top, 0o700)
    for root, dirs, _files in os.walk(top):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o700)


def _named_sockets() -> dict:
    """:func:`_sockets` once no unix socket is still half-made: a socket caught while being
    set up is listed with inode 0 and gets its real inode a moment later, which a baseline
    taken in that moment would not know (seen on a loaded host)."""
    deadline = time.monotonic() + SOCKET_SETTLE_S
    while True:
        found = _sockets()
        if "0" not in found.get("unix", ()) or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def _sockets() -> dict:
    """The sockets of the container's network namespace: per table, the names of its rows."""
    found = {}
    for table in (*SOCKET_TABLES_BY_INODE, *SOCKET_TABLES_BY_ADDRESS):
        try:
            with open(f"/proc/net/{table}") as f:
                rows = [line.split() for line in f.read().splitlines()[1:]]
        except FileNotFoundError:
            continue
        if table in SOCKET_TABLES_BY_INODE:
            column = 6 if table == "unix" else -1
            found[table] = sorted(row[column] for row in rows if row)
        else:
            found[table] = sorted(" ".join(row[1:4] + row[9:10]) for row in rows if row)
    counts = []
    for name in ("sockstat", "sockstat6"):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            proto, _, fields = line.partition(":")
            words = fields.split()
            for key, value in zip(words[::2], words[1::2], strict=False):
                if (proto, key) in SOCKSTAT_PER_NAMESPACE:
                    counts.append(f"{proto} {key} {value}")
    found["sockstat"] = sorted(counts)
    return found


def _process_attributes() -> dict:
    """What a process started by this one inherits and a cell of the same user can change
    from outside (nice, scheduling, CPU affinity, I/O priority, resource limits)."""
    calls = SYSCALLS.get(os.uname().machine, {})
    attrs = {
        "rlimits": {
            name: list(resource.getrlimit(getattr(resource, name)))
            for name in sorted(dir(resource))
            if name.startswith("RLIMIT_")
        },
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "scheduler": [os.sched_getscheduler(0), os.sched_getparam(0).sched_priority],
        "affinity": sorted(os.sched_getaffinity(0)),
    }
    if "sched_getattr" in calls:
        buf = ctypes.create_string_buffer(SCHED_ATTR.size)
        if LIBC.syscall(calls["sched_getattr"], 0, buf, SCHED_ATTR.size, 0) == 0:
            attrs["sched_attr"] = list(SCHED_ATTR.unpack(buf.raw))
    if "ioprio_get" in calls:
        attrs["ioprio"] = LIBC.syscall(calls["ioprio_get"], IOPRIO_WHO_PROCESS, 0)
    return attrs


def _in_workdir(path: str) -> str:
    full = os.path.normpath(os.path.join(WORKDIR, path))
    if not (full == "/tmp" or full.startswith("/tmp/")):
        raise PermissionError(f"files live under /tmp; refusing {path}")
    return full


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _guard_self() -> None:
    """Not dumpable (the cell shares our uid) and the subreaper of all the cell starts."""
    for option, value in ((PR_SET_DUMPABLE, 0), (PR_SET_CHILD_SUBREAPER, 1)):
        if LIBC.prctl(option, value, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def main() -> None:
    _guard_self()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(os.environ["SPO_SOCKET"])
    Supervisor(sock).serve()


if __name__ == "__main__":
    main()
