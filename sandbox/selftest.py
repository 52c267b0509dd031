"""Fail-closed start-up check: prove every limit in a real container before serving.

A Docker daemon can silently ignore a limit (no swap accounting, a missing cgroup
controller, a rootless setup), and a container can run with other settings than asked
for. Rather than trust the flags, the pool starts one container with its exact settings
and looks at each limit from inside: the probe reads what the kernel enforces (cgroup
files, mounts, rlimits, PID 1) and exercises what can be exercised (file size, open
files, processes, network, a memory bomb). If anything is not as configured, the pool
refuses to serve and says what. Results are cached per process for a given daemon, image
and settings, so many pools in one process pay once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sandbox.box import Box, ContainerFactory
from sandbox.config import SandboxConfig
from sandbox.results import RunResult, RunStatus, SandboxSelfTestFailed

_PASSED: set[str] = set()
MB = 1 << 20

# Each probe prints one JSON line; the host checks it against the configuration.
PROBE = r"""
import ctypes, errno, json, os, socket, threading, time
out = {}
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out["uid"] = os.getuid()
out["cap_eff"] = int(status["CapEff"].strip(), 16)
out["no_new_privs"] = status.get("NoNewPrivs", "0").strip()


def first(*paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read().split()
        except OSError:
            pass
    return None


cg = "/sys/fs/cgroup/"
cpu = first(cg + "cpu.max")
if cpu is None:  # cgroup v1
    quota, period = first(cg + "cpu/cpu.cfs_quota_us"), first(cg + "cpu/cpu.cfs_period_us")
    cpu = [quota[0], period[0]] if quota and period else None
out["cpus"] = None if cpu is None or cpu[0] in ("max", "-1") else int(cpu[0]) / int(cpu[1])
memory = first(cg + "memory.max")
if memory is not None:
    swap = first(cg + "memory.swap.max")
    out["memory_max"] = None if memory[0] == "max" else int(memory[0])
    out["swap_max"] = None if swap is None or swap[0] == "max" else int(swap[0])
else:  # cgroup v1: memory+swap as one limit
    memory = first(cg + "memory/memory.limit_in_bytes")
    both = first(cg + "memory/memory.memsw.limit_in_bytes")
    out["memory_max"] = int(memory[0]) if memory else None
    out["swap_max"] = int(both[0]) - int(memory[0]) if memory and both else None
meminfo = dict(l.split(":", 1) for l in open("/proc/meminfo").read().splitlines() if ":" in l)
out["host_swap_kb"] = int(meminfo.get("SwapTotal", "0 kB").split()[0])
mounts = [l.split() for l in open("/proc/mounts").read().splitlines()]
tmp = [m for m in mounts if m[1] == "/tmp"]
out["tmp_mount"] = [tmp[-1][2], tmp[-1][3].split(",")] if tmp else None
vfs = os.statvfs("/tmp")
out["tmp_bytes"] = vfs.f_blocks * vfs.f_frsize
out["pid1"] = open("/proc/1/comm").read().strip()
supervisor = os.getppid()
out["supervisor_pid"] = supervisor
try:
    open("/proc/%d/environ" % supervisor, "rb").read()
    out["supervisor_environ"] = "readable"
except OSError as e:
    out["supervisor_environ"] = errno.errorcode.get(e.errno, str(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(supervisor)
fd = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd: a descriptor of the supervisor
out["supervisor_getfd"] = "taken" if fd >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
if fd >= 0:
    os.close(fd)
os.close(pidfd)
# PID 1 lives as long as the container: code that could attach to it could keep code or
# data there for a later episode.
if libc.ptrace(16, 1, 0, 0) == 0:  # PTRACE_ATTACH
    os.waitpid(1, 0x40000000)  # __WALL: the attach stops it; let it go again
    libc.ptrace(17, 1, 0, 0)  # PTRACE_DETACH
    out["init_attach"] = "attached"
else:
    out["init_attach"] = errno.errorcode.get(ctypes.get_errno(), "?")
try:
    open("/proc/1/mem", "r+b").close()
    out["init_mem"] = "writable"
except OSError as e:
    out["init_mem"] = errno.errorcode.get(e.errno, str(e.errno))
try:
    open("/opt/spo-gym/probe", "w")
    out["rootfs"] = "writable"
except OSError as e:
    out["rootfs"] = errno.errorcode.get(e.errno, str(e.errno))
out["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
try:
    s = socket.create_connection(("1.1.1.1", 53), timeout=2)
    s.close()
    out["net"] = "connected"
except OSError as e:
    out["net"] = errno.errorcode.get(e.errno, str(e))
try:
    with open("/tmp/fsize-probe", "wb") as f:
        chunk = b"\0" * (1 << 20)
        for _ in range(FSIZE_MB + 2):
            f.write(chunk)
            f.flush()
    out["fsize"] = "unlimited"
except OSError as e:
    out["fsize"] = errno.errorcode.get(e.errno, str(e.errno))
finally:
    os.unlink("/tmp/fsize-probe")
files = []
try:
    for _ in range(NOFILE + 16):
        files.append(open("/dev/null"))
    out["nofile"] = "unlimited"
except OSError as e:
    out["nofile"] = len(files)
for f in files:
    f.close()
stop = threading.Event()
threads = []
try:
    for _ in range(PIDS + 16):
        t = threading.Thread(target=stop.wait)
        t.start()
        threads.append(t)
    out["pids"] = "unlimited"
except RuntimeError:
    out["pids"] = len(threads)
stop.set()
for t in threads:
    t.join()
print(json.dumps(out))
"""


def probe_code(cfg: SandboxConfig) -> str:
    """The limit probe for ``cfg``: a cell that prints one JSON object for :func:`check_probe`."""
    return (
        PROBE.replace("FSIZE_MB", str(cfg.fsize_mb))
        .replace("NOFILE", str(cfg.nofile))
        .replace("PIDS", str(cfg.pids_limit))
    )


MEMORY_BOMB = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n"


def check_probe(data: dict[str, Any], cfg: SandboxConfig) -> list[str]:
    """Returns the limits the probe found missing (empty = all in force)."""
    problems = []
    if data["uid"] == 0:
        problems.append("the code runs as root (user limit not applied)")
    if data["cap_eff"] != 0:
        problems.append(f"capabilities are not dropped (CapEff={data['cap_eff']:#x})")
    if data["no_new_privs"] != "1":
        problems.append("no-new-privileges is not set")
    if data["cpus"] is None or abs(data["cpus"] - cfg.cpus) > 0.01:
        problems.append(f"the CPU quota is not applied ({data['cpus']} CPUs, not {cfg.cpus})")
    if data["memory_max"] != cfg.memory_mb * MB:
        problems.append(
            f"the memory limit is {data['memory_max']} bytes, not {cfg.memory_mb} MB "
            "(an out-of-memory kill elsewhere would look like this limit working)"
        )
    if data["swap_max"] != 0 and not (data["swap_max"] is None and data["host_swap_kb"] == 0):
        problems.append(
            f"swap is not disabled (memory+swap must equal memory; swap limit {data['swap_max']})"
        )
    fstype, options = data["tmp_mount"] or (None, [])
    if (
        fstype != "tmpfs"
        or not {"rw", "nosuid", "nodev"} <= set(options)
        or data["tmp_bytes"] != cfg.tmpfs_mb * MB
    ):
        problems.append(
            f"/tmp is not a {cfg.tmpfs_mb} MB tmpfs mounted rw,nosuid,nodev "
            f"({fstype} {','.join(options)}, {data['tmp_bytes']} bytes)"
        )
    if data["supervisor_pid"] != 1:
        problems.append(f"the supervisor is not the container's init (PID 1 is {data['pid1']!r})")
    if data["init_attach"] != "EPERM" or data["init_mem"] not in ("EACCES", "EPERM"):
        problems.append(
            "the sandboxed code can attach to PID 1, which outlives every episode "
            f"(ptrace: {data['init_attach']}, /proc/1/mem: {data['init_mem']})"
        )
    if data["supervisor_environ"] not in ("EACCES", "EPERM") or data["supervisor_getfd"] == "taken":
        problems.append(
            "the supervisor is dumpable by the sandboxed code (its environment: "
            f"{data['supervisor_environ']}, pidfd_getfd: {data['supervisor_getfd']})"
        )
    if data["rootfs"] != "EROFS":
        problems.append(f"the root filesystem is not read-only ({data['rootfs']})")
    if data["interfaces"] != ["lo"] or data["net"] == "connected":
        problems.append(
            f"the network is reachable (interfaces {data['interfaces']}, connect: {data['net']})"
        )
    if data["fsize"] != "EFBIG":
        problems.append(
            f"the file-size limit is not enforced (writing past {cfg.fsize_mb} MB: {data['fsize']})"
        )
    if data["nofile"] == "unlimited" or data["nofile"] > cfg.nofile:
        problems.append(f"the open-file limit is not enforced (opened {data['nofile']})")
    if data["pids"] == "unlimited" or data["pids"] > cfg.pids_limit:
        problems.append(f"the process limit is not enforced (started {data['pids']} threads)")
    return problems


async def _run(box: Box, code: str, timeout: float, max_chars: int) -> RunResult:
    reply = await box.channel.request({"op": "run", "code": code, "timeout": timeout}, timeout + 30)
    return RunResult.from_wire(reply, max_chars)


async def run_self_test(factory: ContainerFactory) -> None:
    """Starts one container with the factory's exact settings and proves every limit.

    Raises:
        SandboxSelfTestFailed: naming each limit that is not in force.
    """
    cfg = factory.config
    key = json.dumps(
        [
            str(factory.client.api.base_url),
            factory.image,
            cfg.model_dump(),
            repr(factory.overrides),
        ],
        sort_keys=True,
        default=str,
    )
    if key in _PASSED:
        return
    box = await factory.start("selftest-" + uuid.uuid4().hex[:8])
    max_chars = 4 * cfg.output_keep_bytes + 1024
    try:
        probe = await _run(box, probe_code(cfg), 60, max_chars)
        try:
            data = json.loads(probe.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SandboxSelfTestFailed(
                f"the limit probe did not run: {probe.observation()[-2000:]}"
            ) from None
        problems = check_probe(data, cfg)
        bomb = await _run(box, MEMORY_BOMB, 60, max_chars)
        if bomb.status is not RunStatus.OOM:
            problems.append(
                f"a memory bomb was not stopped as out-of-memory at {cfg.memory_mb} MB "
                f"(status {bomb.status.value}: {bomb.exc_message})"
            )
        after = await _run(box, "print('alive')", 30, max_chars)
        if after.stdout.strip() != "alive":
            problems.append("the kernel did not recover after the memory limit was hit")
    finally:
        await factory.remove(box)
    if problems:
        raise SandboxSelfTestFailed(
            "the sandbox refuses to serve; limits not in force: " + "; ".join(problems)
        )
    _PASSED.add(key)
