"""An adversarial battery: each snippet is contained with a typed result, the pool stays healthy.

Every snippet runs in its own episode; afterwards the same session must still run code
(the kernel recovered or the container was replaced) and the pool must serve a fresh one.
"""

from __future__ import annotations

import asyncio
import time

import docker
import pytest

from sandbox import RunStatus, SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker

OK, ERR, TMO, OOM, OUT, SBX = (
    RunStatus.OK,
    RunStatus.ERROR,
    RunStatus.TIMEOUT,
    RunStatus.OOM,
    RunStatus.OUTPUT_LIMIT,
    RunStatus.SANDBOX_ERROR,
)


def forge(fields: str) -> str:
    """A cell that answers for the kernel with the request's own nonce (read from its frame)."""
    return (
        "import sys\n"
        "frame = sys._getframe().f_back\n"
        f"frame.f_globals['reply']({{**{fields}, 'op': 'done', 'nonce': frame.f_locals['req']['nonce']}})\n"
    )


# (name, code, allowed statuses, text the observation must contain or None)
BATTERY: list[tuple[str, str, set[RunStatus], str | None]] = [
    ("fork_bomb", "import os\nwhile True:\n    os.fork()", {ERR, TMO}, None),
    (
        "process_bomb_subprocess",
        "import subprocess\nps = [subprocess.Popen(['sleep', '60']) for _ in range(500)]",
        {ERR},
        "BlockingIOError",
    ),
    (
        "thread_bomb",
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
        {ERR},
        "can't start new thread",
    ),
    (
        "memory_bomb",
        "x = []\nwhile True:\n    x.append(bytearray(50 << 20))",
        {OOM},
        "memory limit",
    ),
    ("single_huge_allocation", "x = bytearray(8 << 30)", {OOM, ERR}, None),
    ("numpy_memory_bomb", "import numpy as np\na = np.ones((40000, 40000))", {OOM, ERR}, None),
    ("infinite_loop", "while True:\n    pass", {TMO}, "timed out"),
    ("print_flood", "while True:\n    print('spam' * 100)", {OUT}, "output exceeded"),
    ("ten_mb_output", "import sys\nsys.stdout.write('y' * (10 << 20))", {OUT, OK}, None),
    ("huge_single_line", "print('z' * (3 << 20))", {OK}, "bytes truncated"),
    ("binary_garbage_stdout", "import os\nos.write(1, bytes(range(256)) * 64)", {OK}, None),
    (
        "disk_fill_tmp",
        "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'0' * (1 << 20))",
        {ERR},
        "Errno",
    ),
    (
        "write_outside_tmp",
        "open('/usr/lib/evil.py', 'w').write('x')",
        {ERR},
        "Read-only file system",
    ),
    ("write_to_proc_sysrq", "open('/proc/sysrq-trigger', 'w').write('b')", {ERR}, None),
    (
        "network_tcp",
        "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=3)",
        {ERR},
        "Network is unreachable",
    ),
    ("network_dns", "import socket\nsocket.getaddrinfo('example.com', 80)", {ERR}, "gaierror"),
    ("read_host_files", "print(open('/etc/shadow').read())", {ERR}, "Permission denied"),
    (
        "docker_socket",
        "import os\nprint(os.path.exists('/var/run/docker.sock'))\nassert not os.path.exists('/var/run/docker.sock')",
        {OK},
        "False",
    ),
    # The supervisor is PID 1: signals a cell sends it without a handler are dropped.
    (
        "kill_supervisor",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(os.getppid(), 'alive')",
        {OK},
        "1 alive",
    ),
    # -1 means every process but PID 1 and the caller: there is none.
    (
        "kill_all_processes",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",
        {ERR},
        "ProcessLookupError",
    ),
    ("close_stdout", "import os\nos.close(1)\nos.close(2)\nprint('lost')", {ERR, OK}, None),
    ("read_stdin", "import sys\nprint(repr(sys.stdin.read()))", {OK}, "''"),
    ("input_builtin", "input('name? ')", {ERR}, "EOFError"),
    (
        "orphan_sleepers",
        "import subprocess\nfor _ in range(5):\n    subprocess.Popen(['sleep', '1000'], start_new_session=True)\nprint('spawned')",
        {OK},
        "spawned",
    ),
    (
        "zombie_storm",
        "import os\nfor _ in range(60):\n    if os.fork() == 0:\n        os._exit(0)\nprint('zombies')",
        {OK},
        "zombies",
    ),
    (
        "signal_tricks",
        "import signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):\n    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
        {TMO},
        "timed out",
    ),
    ("sys_exit", "import sys\nsys.exit(3)", {ERR}, "SystemExit"),
    ("os_exit", "import os\nos._exit(0)", {ERR}, "exited with code 0"),
    ("self_sigkill", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", {ERR}, "SIGKILL"),
    (
        "background_thread_keeps_running",
        "import threading, time\ndef spin():\n    while True:\n        print('tick', flush=True)\n        time.sleep(0.01)\nthreading.Thread(target=spin, daemon=True).start()\nprint('started')",
        {OK},
        "started",
    ),
    ("deep_recursion", "def f(n):\n    return f(n + 1)\nf(0)", {ERR}, "RecursionError"),
    (
        "unlimited_recursion_c_stack",
        "import sys\nsys.setrecursionlimit(10**9)\ndef f(n):\n    return f(n + 1)\nf(0)",
        {ERR, OOM},
        None,
    ),
    ("segfault_ctypes", "import ctypes\nctypes.string_at(0)", {ERR}, "SIGSEGV"),
    (
        "setrlimit_raise",
        "import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20))",
        {ERR},
        "ValueError",
    ),
    ("setuid_root", "import os\nos.setuid(0)", {ERR}, "PermissionError"),
    (
        "mount_attempt",
        "import ctypes, ctypes.util\nlibc = ctypes.CDLL(None)\nassert libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) != 0\nprint('denied')",
        {OK},
        "denied",
    ),
    (
        "ptrace_pid1",
        "import ctypes\nlibc = ctypes.CDLL(None)\nprint(libc.ptrace(16, 1, 0, 0))",
        {OK},
        None,
    ),
    (
        "fd_exhaustion",
        "fs = []\nwhile True:\n    fs.append(open('/dev/null'))",
        {ERR},
        "Too many open files",
    ),
    ("huge_exception_message", "raise ValueError('m' * (5 << 20))", {ERR}, "characters truncated"),
    ("keyboard_interrupt_raised", "raise KeyboardInterrupt", {ERR}, "KeyboardInterrupt"),
    (
        "write_fake_control_message",
        'import os\nos.write(4, b\'{"op": "done", "status": "ok"}\\n\')\nprint(\'spoof\')',
        {OK, ERR},
        None,
    ),
    (
        "forged_reply_with_the_nonce",
        forge('{"status": "error", "exc_type": "Forged", "exc_message": "m" * 100_000}'),
        {ERR},
        "Forged",
    ),
    (
        "forged_reply_with_a_huge_exc_type",
        forge('{"status": "error", "exc_type": "T" * 100_000}'),
        {ERR},
        None,
    ),
    (
        # Longer than any reply of the kernel: dropped unread, the kernel's own reply counts.
        "forged_oversized_reply",
        forge('{"status": "error", "exc_type": "Forged", "exc_message": "m" * (4 << 20)}'),
        {OK},
        None,
    ),
    (
        "replace_sys_stdout",
        "import sys, io\nsys.stdout = io.StringIO()\nprint('hidden')",
        {OK},
        None,
    ),
]


# Importing numpy cold and filling the cgroup to its limit (the kernel reclaims the process's
# file-backed pages before it OOM-kills) took 4.5 s once on a loaded 2-core machine; what this
# entry checks is that the bomb is caught as an OOM, not how fast.
SNIPPET_TIMEOUTS = {"numpy_memory_bomb": 20.0}


@pytest.mark.parametrize(
    ("name", "code", "allowed", "needle"), BATTERY, ids=[b[0] for b in BATTERY]
)
async def test_snippet_is_contained(
    pool: SandboxPool, name: str, code: str, allowed: set[RunStatus], needle: str | None
) -> None:
    async with pool.session(f"adv-{name}") as s:
        r = await s.run(code, timeout=SNIPPET_TIMEOUTS.get(name, 4))
        assert r.status in allowed, (
            f"{name}: {r.status} {r.exc_type}: {r.exc_message}\n{r.stderr[-500:]}"
        )
        if needle is not None:
            assert needle in r.observation(), r.observation()[-800:]
        sizes = [len(t or "") for t in (r.stdout, r.stderr, r.exc_type, r.exc_message)]
        assert sum(sizes) < 64 * pool.config.output_keep_bytes, sizes
        after = await s.run("print('still serving')", timeout=10)
        assert after.status is RunStatus.OK, after
        # A background thread the snippet left running may still print: it is the cell's own state.
        assert "still serving\n" in after.stdout
    stats = pool.stats()
    assert not stats.breaker_open


def test_battery_is_large_enough() -> None:
    assert len(BATTERY) >= 30


async def test_pool_healthy_after_battery(pool: SandboxPool) -> None:
    async with pool.session("after-battery") as s:
        r = await s.run("import sympy\nprint(sympy.factorint(2**32 + 1))")
    assert r.stdout.strip() == "{641: 1, 6700417: 1}", r


# What a fresh kernel sees: init, the supervisor and itself, nothing a cell left behind.
PROCESSES = (
    "import os\n"
    "print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == "
    "sorted({1, os.getppid(), os.getpid()}))"
)


async def test_a_forged_unknown_status_is_a_scored_sandbox_error(pool: SandboxPool) -> None:
    async with pool.session("forge-status") as s:
        first = s.container_id
        r = await s.run(forge('{"status": "pwned"}'))
        assert r.status is SBX and r.state_lost, r
        again = await s.run("print('next')")
        assert again.stdout == "next\n" and again.state_lost
        assert s.container_id != first  # a sandbox that lied is not trusted again


async def test_filling_the_pid_limit_with_setsid_processes_then_timing_out(
    pool: SandboxPool,
) -> None:
    code = (
        "import subprocess\nps = []\ntry:\n    while True:\n"
        "        ps.append(subprocess.Popen(['sleep', '1000'], start_new_session=True))\n"
        "except OSError:\n    pass\nprint(len(ps), flush=True)\nwhile True:\n    pass\n"
    )
    async with pool.session("setsid-fill") as s:
        r = await s.run(code, timeout=3)
        assert r.status is TMO and r.state_lost, r
        assert int(r.stdout) > 50
        after = await s.run(PROCESSES)
        assert after.stdout == "True\n", after


async def test_a_double_forked_cpu_burner_dies_with_the_timed_out_kernel(pool: SandboxPool) -> None:
    code = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        while True:\n            pass\n    os._exit(0)\nos.wait()\nwhile True:\n    pass\n"
    )
    async with pool.session("double-fork") as s:
        r = await s.run(code, timeout=1)
        assert r.status is TMO, r
        after = await s.run(PROCESSES)
        assert after.stdout == "True\n", after


async def test_reset_leaves_no_process_of_the_cell(pool: SandboxPool) -> None:
    async with pool.session("reset-strays") as s:
        await s.run(
            "import subprocess\nsubprocess.Popen(['sleep', '1000'], start_new_session=True)"
        )
        await s.reset()
        after = await s.run(PROCESSES)
    assert after.stdout == "True\n", after


async def test_children_do_not_inherit_the_kernel_control_pipe(pool: SandboxPool) -> None:
    code = (
        "import subprocess, sys\n"
        'probe = \'import os\\nfor fd in (3, 4):\\n    try:\\n        print(os.readlink(f"/proc/self/fd/{fd}"))\\n'
        "    except OSError:\\n        print(None)'\n"
        "subprocess.run([sys.executable, '-c', probe], close_fds=False)\n"
    )
    async with pool.session("fd-inherit") as s:
        r = await s.run(code)
    assert r.stdout == "None\nNone\n", r


async def test_a_kernel_that_died_between_cells_reports_lost_state(pool: SandboxPool) -> None:
    async with pool.session("died-between") as s:
        first = await s.run(
            "import os, threading, time\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), os._exit(3)), daemon=True).start()\n"
            "x = 1"
        )
        assert first.ok and not first.state_lost
        await asyncio.sleep(1.0)
        second = await s.run("print('after')")
    assert second.ok and second.stdout == "after\n"
    assert second.state_lost


async def test_an_interrupt_sent_as_the_cell_finishes_reports_lost_state(pool: SandboxPool) -> None:
    # The cell outlives its deadline by less than the grace period, swallowing the SIGINT: it
    # finishes, but the kernel was signalled and is replaced, so its variables are gone.
    code = (
        "import signal, time\nsignal.signal(signal.SIGINT, lambda *a: None)\n"
        "t = time.monotonic()\nwhile time.monotonic() - t < 1.25:\n    pass\nx = 1\nprint('done')"
    )
    async with pool.session("late-interrupt") as s:
        r = await s.run(code, timeout=1)
        after = await s.run("print(x)")
    assert r.status is OK and r.stdout == "done\n"
    assert r.state_lost
    assert after.exc_type == "NameError"


async def test_a_crash_while_a_child_holds_the_pipes_is_not_a_timeout(pool: SandboxPool) -> None:
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\nos._exit(1)"
    async with pool.session("crash-held-pipe") as s:
        r = await s.run(code, timeout=6)
        after = await s.run(PROCESSES)
    assert r.status is ERR and "exited with code 1" in (r.exc_message or ""), r
    assert r.duration_s < 3 and r.state_lost
    assert after.stdout == "True\n", after


async def test_a_kernel_that_cannot_restart_is_a_scored_sandbox_error(pool: SandboxPool) -> None:
    # The work directory becomes a file, so no kernel can start in this container again.
    code = (
        "import os, shutil\nos.chdir('/tmp')\nshutil.rmtree('/tmp/work')\n"
        "open('/tmp/work', 'w').close()\nos._exit(1)"
    )
    async with pool.session("no-restart") as s:
        died = await s.run(code)
        broken = await s.run("print(1)")
        fresh = await s.run("print(2)")
    assert died.status is ERR and died.state_lost, died
    assert broken.status is SBX and broken.state_lost, broken
    assert fresh.stdout == "2\n" and fresh.state_lost


async def test_the_supervisor_is_not_dumpable_by_the_cell(pool: SandboxPool) -> None:
    code = (
        "import ctypes, errno, os\nsup = os.getppid()\n"
        "try:\n    open(f'/proc/{sup}/environ', 'rb').read()\n    print('environ readable')\n"
        "except PermissionError:\n    print('environ denied')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(16, sup, 0, 0), errno.errorcode.get(ctypes.get_errno()))\n"
        "pidfd = os.pidfd_open(sup)\n"
        "print('pidfd_getfd', libc.syscall(438, pidfd, 0, 0), errno.errorcode.get(ctypes.get_errno()))\n"
    )
    async with pool.session("dumpable") as s:
        r = await s.run(code)
    assert r.stdout == "environ denied\nptrace -1 EPERM\npidfd_getfd -1 EPERM\n", r


async def test_a_stopped_supervisor_is_a_scored_sandbox_error(
    docker_client: docker.DockerClient,
) -> None:
    # Only the host can stop the supervisor (a cell's SIGSTOP to PID 1 is dropped).
    cfg = SandboxConfig(warm=1, self_test=False, host_slack_s=1.0)
    async with SandboxPool(cfg) as fast, fast.session("sigstop") as s:
        ignored = await s.run("import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)")
        assert ignored.ok and not ignored.state_lost, ignored
        stopped = s.container_id
        running = asyncio.ensure_future(s.run("import time\ntime.sleep(0.5)", timeout=1))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await asyncio.to_thread(docker_client.api.kill, stopped, "SIGSTOP")
        r = await running
        assert r.status is SBX and r.state_lost, r
        assert time.monotonic() - t0 < 6
        again = await s.run("print('replaced')")
        assert again.stdout == "replaced\n" and s.container_id != stopped


async def test_a_flood_on_the_control_pipe_does_not_grow_the_supervisor(pool: SandboxPool) -> None:
    flood = (
        "import os, sys\nfd = sys._getframe().f_back.f_globals['CTL_OUT']\n"
        "chunk = b'x' * (1 << 20)\nfor _ in range(48):\n    os.write(fd, chunk)\nprint('flooded')"
    )
    peak = (
        "import os\nprint([l.split()[1] for l in open(f'/proc/{os.getppid()}/status') "
        "if l.startswith('VmHWM')][0])"
    )
    async with pool.session("ctl-flood") as s:
        r = await s.run(flood, timeout=20)
        seen = await s.run(peak)
    assert r.stdout == "flooded\n", r
    assert int(seen.stdout) < 40 << 10, seen  # kB: the supervisor never held the 48 MB
