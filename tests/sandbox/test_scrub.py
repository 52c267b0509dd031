"""Container reuse: after a verified scrub, an episode finds nothing an earlier one left.

Each case plants something on one channel. In a control episode the planter's own look
sees it; then one episode plants it and the next one, served the same container (the pool
has only one), must find nothing. A scrub that cannot prove the container clean removes
it, and the next episode gets a fresh one.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sandbox import SandboxConfig, SandboxPool
from sandbox.scrub import ScrubRejected, verify_scrub

pytestmark = pytest.mark.docker

FILES = (
    "import os, socket\n"
    "os.makedirs('/tmp/deep/a/b/c')\nopen('/tmp/deep/a/b/c/answer', 'w').write('42')\n"
    "open('/tmp/.answer', 'w').write('42')\nopen('/tmp/work/answer.txt', 'w').write('42')\n"
    # A tree its owner cannot list or change: removing it needs its permissions back first.
    "os.makedirs('/tmp/locked/inner')\nopen('/tmp/locked/inner/answer', 'w').write('42')\n"
    "os.chmod('/tmp/locked/inner', 0)\nos.chmod('/tmp/locked', 0o500)\n"
    "os.symlink('/tmp/.answer', '/tmp/link')\nos.mkfifo('/tmp/fifo')\n"
    "socket.socket(socket.AF_UNIX).bind('/tmp/answer.sock')\nprint('planted')"
)
FILES_LOOK = (
    "import os\nfound = []\nfor root, dirs, files in os.walk('/tmp'):\n"
    "    found += [os.path.join(root, n) for n in dirs + files]\nprint(sorted(found))"
)

# HOME is /tmp; a fresh kernel imports from its working directory and the user site.
INTERPRETER = (
    "import builtins, os, site, sys\nd = site.getusersitepackages()\nos.makedirs(d)\n"
    "open(os.path.join(d, 'answer.pth'), 'w').write('import builtins; builtins.answer = 42\\n')\n"
    "for where in ('/tmp', '/tmp/work'):\n"
    "    open(f'{where}/json.py', 'w').write('answer = 42\\n')\n"
    "os.environ['ANSWER'] = '42'\nbuiltins.answer = 42\nsys.answer = 42\nprint('planted')"
)
INTERPRETER_LOOK = (
    "import builtins, json, os, subprocess, sys\n"
    "fresh = subprocess.run([sys.executable, '-c', 'import builtins, json; "
    'print(getattr(builtins, "answer", None), getattr(json, "answer", None))\'], '
    "capture_output=True, text=True, cwd='/tmp').stdout.strip()\n"
    "print(getattr(builtins, 'answer', None), getattr(sys, 'answer', None), "
    "os.environ.get('ANSWER'), fresh)"
)

IPC = (
    "import ctypes, os\nopen('/dev/shm/answer', 'w').write('42')\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "assert libc.mq_open(b'/answer', os.O_CREAT | os.O_RDWR, 0o600, None) >= 0\n"
    "assert libc.shmget(0x4242, 4096, 0o1000 | 0o600) >= 0\n"
    "assert libc.semget(0x4243, 1, 0o1000 | 0o600) >= 0\n"
    "q = libc.msgget(0x4244, 0o1000 | 0o600)\n"
    "message = ctypes.create_string_buffer(b'\\x01\\0\\0\\0\\0\\0\\0\\0' + b'42')\n"
    "assert libc.msgsnd(q, message, 2, 0) == 0\nprint('planted')"
)
IPC_LOOK = (
    "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
    "print(sorted(os.listdir('/dev/shm')), sorted(os.listdir('/dev/mqueue')), "
    "[len(open(f'/proc/sysvipc/{k}').read().splitlines()) - 1 for k in ('shm', 'sem', 'msg')], "
    "libc.msgget(0x4244, 0))"
)

# A setsid daemon, a double-forked one that ignores SIGTERM and SIGHUP, a stopped child,
# and a parent that never reaps its exited child (a zombie).
PROCESSES = (
    "import os, signal, subprocess, time\n"
    "subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
    "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
    "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "        signal.signal(signal.SIGHUP, signal.SIG_IGN)\n        time.sleep(1000)\n"
    "    os._exit(0)\nos.wait()\n"
    "stopped = subprocess.Popen(['sleep', '1000'])\nos.kill(stopped.pid, signal.SIGSTOP)\n"
    "if os.fork() == 0:\n    if os.fork() == 0:\n        os._exit(0)\n    time.sleep(1000)\n"
    "time.sleep(0.2)\nprint('planted')"
)
PROCESSES_LOOK = (
    "import os\nprint(sorted(int(p) for p in os.listdir('/proc') "
    "if p.isdigit() and int(p) not in (1, os.getpid())))"
)

# A daemon listening on an abstract unix socket, on TCP and UDP; and a unix socket that
# only a descriptor in flight (sent to itself) keeps alive after its process exits.
SOCKETS = (
    "import array, os, socket, time\n"
    "if os.fork() == 0:\n    os.setsid()\n"
    "    a = socket.socket(socket.AF_UNIX)\n    a.bind('\\0answer')\n    a.listen()\n"
    "    t = socket.socket()\n    t.bind(('127.0.0.1', 4242))\n    t.listen()\n"
    "    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    u.bind(('127.0.0.1', 4243))\n"
    "    time.sleep(1000)\n"
    "if os.fork() == 0:\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
    "    s.bind('\\0inflight')\n"
    "    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [s.fileno()]))]\n"
    "    s.sendmsg([b'42'], fds, 0, '\\0inflight')\n    os._exit(0)\n"
    "os.wait()\ntime.sleep(0.2)\nprint('planted')"
)
SOCKETS_LOOK = (
    "import socket\nout = []\n"
    "for fam, kind, addr in ((socket.AF_UNIX, socket.SOCK_STREAM, '\\0answer'), "
    "(socket.AF_UNIX, socket.SOCK_DGRAM, '\\0inflight'), "
    "(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', 4242)), "
    "(socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', 4243))):\n"
    "    s = socket.socket(fam, kind)\n    try:\n        s.bind(addr)\n        out.append('free')\n"
    "    except OSError:\n        out.append('taken')\n    s.close()\n"
    "print(out, [line.split()[-1] for line in open('/proc/net/unix') if '@' in line])"
)

# Locks on files that outlive any episode (the read-only image and the container's own
# /etc files): an flock, an open-file-description lock and a POSIX record lock.
LOCKS = (
    "import fcntl, os, struct, time\n"
    "if os.fork() == 0:\n    os.setsid()\n"
    "    a = open('/opt/spo-gym/kernel.py')\n    fcntl.flock(a, fcntl.LOCK_SH)\n"
    "    b = open('/etc/hostname')\n"
    "    fcntl.fcntl(b, fcntl.F_OFD_SETLK, struct.pack('hhqqi4x', fcntl.F_RDLCK, 0, 0, 0, 0))\n"
    "    c = open('/etc/hosts')\n    fcntl.lockf(c, fcntl.LOCK_SH)\n    time.sleep(1000)\n"
    "time.sleep(0.2)\nprint('planted')"
)
LOCKS_LOOK = (
    "import fcntl, struct\na = open('/opt/spo-gym/kernel.py')\n"
    "try:\n    fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    flock = 'free'\n"
    "except OSError:\n    flock = 'held'\n"
    "def probe(path, cmd):\n    f = open(path)\n"
    "    got = fcntl.fcntl(f, cmd, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, 0, 0, 0))\n"
    "    return 'free' if struct.unpack('hhqqi4x', got)[0] == fcntl.F_UNLCK else 'held'\n"
    "print(flock, probe('/etc/hostname', fcntl.F_OFD_GETLK), probe('/etc/hosts', fcntl.F_GETLK))"
)

# Timers that fire after the episode: a thread timer in the kernel, an interval timer in a
# daemon; each would write a file.
TIMERS = (
    "import os, signal, threading, time\n"
    "threading.Timer(1.5, lambda: open('/tmp/late', 'w').write('42')).start()\n"
    "if os.fork() == 0:\n    os.setsid()\n"
    "    signal.signal(signal.SIGALRM, lambda *_: open('/dev/shm/late', 'w').write('42'))\n"
    "    signal.setitimer(signal.ITIMER_REAL, 1.5)\n    time.sleep(1000)\n"
    "print('planted')"
)
TIMERS_LOOK = (
    "import os, time\ntime.sleep(2.5)\n"
    "print(os.path.exists('/tmp/late'), os.path.exists('/dev/shm/late'))"
)

# (channel, plant, look, what a clean container shows)
CHANNELS = [
    ("files", FILES, FILES_LOOK, "['/tmp/work']\n"),
    ("interpreter", INTERPRETER, INTERPRETER_LOOK, "None None None None None\n"),
    ("ipc", IPC, IPC_LOOK, "[] [] [0, 0, 0] -1\n"),
    ("processes", PROCESSES, PROCESSES_LOOK, "[]\n"),
    ("sockets", SOCKETS, SOCKETS_LOOK, "['free', 'free', 'free', 'free'] []\n"),
    ("locks", LOCKS, LOCKS_LOOK, "free free free\n"),
    ("timers", TIMERS, TIMERS_LOOK, "False False\n"),
]


@pytest_asyncio.fixture(scope="module")
async def one_box() -> AsyncIterator[SandboxPool]:
    """A pool of one container: every episode gets it again unless a scrub rejects it."""
    cfg = SandboxConfig(warm=1, max_containers=1, reuse=True, self_test=False)
    async with SandboxPool(cfg) as p:
        yield p


def test_reuse_with_a_verified_scrub_is_the_default() -> None:
    cfg = SandboxConfig()
    assert cfg.reuse and cfg.verify_scrub


@pytest.mark.parametrize(
    ("channel", "plant", "look", "clean"), CHANNELS, ids=[c[0] for c in CHANNELS]
)
async def test_the_next_episode_in_the_same_container_finds_nothing(
    one_box: SandboxPool, channel: str, plant: str, look: str, clean: str
) -> None:
    async with one_box.session(f"control-{channel}") as s:
        container = s.container_id
        before = one_box.stats()  # taken in a session: no scrub is under way
        assert (await s.run(plant, timeout=20)).stdout == "planted\n"
        control = await s.run(look, timeout=20)
    assert control.ok and control.stdout != clean, control  # the look does see a plant
    async with one_box.session(f"plant-{channel}") as s:
        assert s.container_id == container
        planted = await s.run(plant, timeout=20)
        assert planted.stdout == "planted\n", planted
    async with one_box.session(f"look-{channel}") as s:
        assert s.container_id == container  # the same container, recycled
        seen = await s.run(look, timeout=20)
        after = one_box.stats()
    assert seen.ok and seen.stdout == clean, seen
    assert after.reused == before.reused + 2
    assert after.scrub_rejections == before.scrub_rejections


async def test_pid1_is_out_of_the_cells_reach(one_box: SandboxPool) -> None:
    # PID 1 (the supervisor) lives as long as the container: a cell that could attach to it,
    # write its memory or stop it could keep something there for the next episode.
    code = (
        "import ctypes, errno, os, signal\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.ptrace(16, 1, 0, 0), errno.errorcode.get(ctypes.get_errno()))\n"
        "try:\n    open('/proc/1/mem', 'r+b')\nexcept OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "for sig in (signal.SIGSTOP, signal.SIGKILL, signal.SIGTERM):\n    os.kill(1, sig)\n"
        "print('alive')"
    )
    async with one_box.session("pid1") as s:
        r = await s.run(code)
        after = await s.run("print('served')")
    assert r.stdout == "-1 EPERM\nEACCES\nalive\n", r
    assert after.stdout == "served\n" and not after.state_lost


# A cell runs as the supervisor's user and can change these attributes of PID 1 from
# outside; a kernel started afterwards would inherit them. No scrub can undo all of them.
TAMPER = {
    "nice": "import os\nos.setpriority(os.PRIO_PROCESS, 1, 7)",
    "rlimit": "import resource\nresource.prlimit(1, resource.RLIMIT_CORE, (7, 7))",
    "affinity": "import os\nos.sched_setaffinity(1, {0})",
    "scheduler": "import os\nos.sched_setscheduler(1, os.SCHED_BATCH, os.sched_param(0))",
    "ioprio": (
        "import ctypes, os\nioprio_set = {'x86_64': 251, 'aarch64': 30}[os.uname().machine]\n"
        "assert ctypes.CDLL(None).syscall(ioprio_set, 1, 1, (2 << 13) | 7) == 0"
    ),
}
ATTRIBUTES = (
    "import os, resource\nprint(os.getpriority(os.PRIO_PROCESS, 1), "
    "resource.prlimit(1, resource.RLIMIT_CORE)[0], len(os.sched_getaffinity(1)) == os.cpu_count(), "
    "os.sched_getscheduler(1))"
)


@pytest.mark.parametrize("attribute", list(TAMPER))
async def test_a_tampered_supervisor_is_not_reused(one_box: SandboxPool, attribute: str) -> None:
    async with one_box.session(f"tamper-{attribute}") as s:
        tampered = s.container_id
        before = one_box.stats()
        r = await s.run(TAMPER[attribute])
        assert r.ok, r
    async with one_box.session(f"after-{attribute}", acquire_timeout_s=30) as s:
        assert s.container_id != tampered
        seen = await s.run(ATTRIBUTES)
        after = one_box.stats()
    assert seen.stdout == "0 0 True 0\n", seen
    assert after.reused == before.reused
    assert after.scrub_rejections.get("process", 0) == before.scrub_rejections.get("process", 0) + 1


# A closed loopback connection lingers in TIME_WAIT for a minute with its ports readable.
TIME_WAIT = (
    "import socket\nsrv = socket.socket()\nsrv.bind(('127.0.0.1', 4244))\nsrv.listen()\n"
    "c = socket.create_connection(('127.0.0.1', 4244))\na, _ = srv.accept()\n"
    "c.close()\na.close()\nsrv.close()\nprint('closed')"
)
TIME_WAITING = "print(open('/proc/net/sockstat').read().split(' tw ')[1].split()[0])"


async def test_a_container_whose_scrub_is_not_clean_is_discarded(one_box: SandboxPool) -> None:
    async with one_box.session("time-wait") as s:
        first = s.container_id
        before = one_box.stats()
        assert (await s.run(TIME_WAIT)).stdout == "closed\n"
    async with one_box.session("after-time-wait", acquire_timeout_s=30) as s:
        assert s.container_id != first
        seen = await s.run(TIME_WAITING)
        after = one_box.stats()
    assert seen.stdout == "0\n", seen
    assert after.reused == before.reused
    assert after.scrub_rejections.get("sockets", 0) == before.scrub_rejections.get("sockets", 0) + 1


async def test_without_verification_an_unclean_container_is_served_again() -> None:
    # What the bench-only switch gives up: the same TIME_WAIT container is served again.
    cfg = SandboxConfig(warm=1, max_containers=1, reuse=True, self_test=False, verify_scrub=False)
    async with SandboxPool(cfg) as pool:
        async with pool.session("time-wait") as s:
            first = s.container_id
            assert (await s.run(TIME_WAIT)).stdout == "closed\n"
        async with pool.session("next") as s:
            assert s.container_id == first
            seen = await s.run(
                "print(open('/proc/net/sockstat').read().split('tw ')[1].split()[0])"
            )
        stats = pool.stats()
    assert seen.stdout == "1\n", seen
    assert stats.reused == 1 and stats.scrub_rejections == {}


async def test_every_check_rejects_evidence_that_is_not_clean(one_box: SandboxPool) -> None:
    box = await one_box.factory.start(f"verify-{uuid.uuid4().hex[:8]}")
    try:
        reply = await box.channel.request({"op": "scrub", "verify": True}, 30)
    finally:
        await one_box.factory.remove(box)
    cfg, baseline = one_box.config, box.baseline
    verify_scrub(reply, baseline, cfg)  # a real, clean container passes
    evidence = reply["evidence"]
    sockets, attrs = evidence["sockets"], evidence["process"]
    unclean: dict[str, list[dict[str, object]]] = {
        "processes": [{"processes": [42]}, {"processes": None}],
        "files": [{"files": {**evidence["files"], "/dev/shm": ["answer"]}}],
        "ptys": [{"ptys": ["0"]}],
        "sysv": [{"sysv": {"shm": 0, "sem": 1, "msg": 0}}],
        "sockets": [
            {"sockets": {**sockets, "unix": [*sockets["unix"], "999999999"]}},
            {"sockets": {k: v for k, v in sockets.items() if k != "netlink"}},
            {"sockets": {**sockets, "sockstat": ["TCP tw 1"]}},
        ],
        "process": [{"process": {**attrs, "nice": 7}}, {"process": {}}],
    }
    for check, variants in unclean.items():
        for change in variants:
            with pytest.raises(ScrubRejected) as info:
                verify_scrub({**reply, "evidence": {**evidence, **change}}, baseline, cfg)
            assert check in info.value.checks, (check, change, info.value.checks)
    missing = {k: v for k, v in evidence.items() if k != "sysv"}
    with pytest.raises(ScrubRejected, match="sysv"):
        verify_scrub({**reply, "evidence": missing}, baseline, cfg)
    other_limits = SandboxConfig(nofile=2048)
    with pytest.raises(ScrubRejected) as limits:
        verify_scrub(reply, baseline, other_limits)
    assert limits.value.checks == ("limits",)
    for bad_reply, bad_baseline, check in (
        ({"op": "error", "message": "nope"}, baseline, "reply"),
        ({"op": "scrubbed"}, baseline, "evidence"),
        (reply, None, "baseline"),
    ):
        with pytest.raises(ScrubRejected) as info:
            verify_scrub(bad_reply, bad_baseline, cfg)
        assert info.value.checks == (check,)
