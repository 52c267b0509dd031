"""A supervisor that breaks the protocol: every reply it can send is a typed result, never a raise.

Code in a container runs as the supervisor's user, so the host trusts nothing that comes
back over the channel. These containers run a hostile stand-in for the supervisor (a
real container, a real channel): each run request's code names the misbehaviour.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sandbox import RunStatus, SandboxConfig, SandboxPool

pytestmark = pytest.mark.docker

ROGUE = r"""
import json, os, socket
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["SPO_SOCKET"])
def send(obj):
    s.sendall((json.dumps(obj) + "\n").encode())
send({"op": "hello", "token": os.environ["SPO_TOKEN"]})
for line in s.makefile("rb"):
    req = json.loads(line)
    rid = req["id"]
    mode = req.get("code", req["op"])
    if mode == "unknown_status":
        send({"op": "result", "id": rid, "status": "pwned"})
    elif mode == "not_json":
        s.sendall(b"{nope\n")
    elif mode == "not_an_object":
        s.sendall(b"[1, 2]\n")
    elif mode == "wrong_id":
        send({"op": "result", "id": rid + 7, "status": "ok"})
    elif mode == "wrong_types":
        send({"op": "result", "id": rid, "status": "ok", "stdout": 5, "duration_s": "x"})
    elif mode == "error_op":
        send({"op": "error", "id": rid, "message": "nope"})
    elif mode == "oversized_line":
        s.sendall(b"x" * (129 << 20) + b"\n")
    elif mode == "huge_fields":
        big = "x" * (16 << 20)
        send({"op": "result", "id": rid, "status": "error", "stdout": big, "exc_type": big})
    elif mode == "scrub":
        send({"op": "scrubbed", "id": rid})
    else:
        send({"op": "result", "id": rid, "status": "ok", "stdout": "fine\n"})
"""
ROGUE_COMMAND = {"command": ["python3", "-c", ROGUE]}


@pytest_asyncio.fixture(scope="module")
async def rogue_pool() -> AsyncIterator[SandboxPool]:
    async with SandboxPool(
        SandboxConfig(warm=2, self_test=False), container_overrides=ROGUE_COMMAND
    ) as p:
        yield p


@pytest.mark.parametrize(
    "mode",
    [
        "unknown_status",
        "not_json",
        "not_an_object",
        "wrong_id",
        "wrong_types",
        "error_op",
        "oversized_line",
    ],
)
async def test_a_malformed_reply_is_a_scored_sandbox_error(
    rogue_pool: SandboxPool, mode: str
) -> None:
    async with rogue_pool.session(f"rogue-{mode}") as s:
        first = s.container_id
        r = await s.run(mode)
        assert r.status is RunStatus.SANDBOX_ERROR and r.state_lost, r
        again = await s.run("anything")
        assert again.stdout == "fine\n" and again.state_lost
        assert s.container_id != first


async def test_oversized_fields_are_clipped_on_the_host(rogue_pool: SandboxPool) -> None:
    async with rogue_pool.session("rogue-huge") as s:
        r = await s.run("huge_fields")
    keep = rogue_pool.config.output_keep_bytes
    assert r.status is RunStatus.ERROR and r.truncated
    assert len(r.stdout) < 8 * keep and len(r.exc_type or "") < 8 * keep


async def test_a_malformed_scrub_reply_removes_the_container() -> None:
    cfg = SandboxConfig(warm=0, max_containers=1, reuse=True, self_test=False)
    async with SandboxPool(cfg, container_overrides=ROGUE_COMMAND) as pool:
        async with pool.session("rogue-dirty") as s:
            first = s.container_id
            assert (await s.run("anything")).ok
        async with pool.session("rogue-next", acquire_timeout_s=15) as s:
            assert s.container_id != first
            assert (await s.run("anything")).ok
        stats = pool.stats()
    assert stats.reused == 0 and stats.created == 2
