"""Behaviour of a session against the real sandbox."""

from __future__ import annotations

import pytest

from sandbox import RunStatus, SandboxConfig, SandboxPool, SandboxSession

pytestmark = pytest.mark.docker


async def test_state_persists_within_an_episode(pool: SandboxPool) -> None:
    async with pool.session("persist") as s:
        assert (await s.run("x = 6 * 7")).ok
        r = await s.run("print(x + 1)")
    assert r.status is RunStatus.OK
    assert r.stdout == "43\n"
    assert not r.state_lost


@pytest.mark.parametrize("reuse", [False, True], ids=["single-use", "reuse"])
async def test_state_does_not_leak_across_episodes(reuse: bool) -> None:
    # One container at most: a fresh one for each episode, or the same one after a scrub.
    cfg = SandboxConfig(warm=1, max_containers=1, reuse=reuse, self_test=False)
    async with SandboxPool(cfg) as pool:
        async with pool.session("a") as s:
            await s.run("secret = 123")
            await s.put_file("left.txt", "behind")
            first = s.container_id
        async with pool.session("b") as s:
            r = await s.run("print(secret)")
            f = await s.run("import os; print(os.path.exists('/tmp/work/left.txt'))")
            assert (s.container_id == first) is reuse
    assert r.status is RunStatus.ERROR
    assert r.exc_type == "NameError"
    assert f.stdout.strip() == "False"


async def test_exception_carries_type_message_and_user_traceback(pool: SandboxPool) -> None:
    async with pool.session() as s:
        r = await s.run("def f(n):\n    return 10 // n\nprint('before')\nf(0)")
    assert r.status is RunStatus.ERROR
    assert r.exc_type == "ZeroDivisionError"
    assert r.exc_message == "integer division or modulo by zero"
    assert r.stdout == "before\n"
    assert 'File "<cell-1>", line 4' in r.stderr and "return 10 // n" in r.stderr
    assert "supervisor" not in r.stderr and "KERNEL" not in r.stderr  # only user frames


async def test_syntax_error_is_a_result(pool: SandboxPool) -> None:
    async with pool.session() as s:
        r = await s.run("def broken(:\n  pass")
    assert r.status is RunStatus.ERROR
    assert r.exc_type == "SyntaxError"


async def test_timeout_interrupts_restarts_and_reports_state_loss(pool: SandboxPool) -> None:
    async with pool.session() as s:
        await s.run("kept = 1")
        r = await s.run("import time\nfor i in range(100):\n    time.sleep(0.1)", timeout=1)
        after = await s.run("print(kept)")
    assert r.status is RunStatus.TIMEOUT
    assert r.state_lost
    assert 0.9 < r.duration_s < 3.0
    assert "time.sleep(0.1)" in r.stderr  # the interrupt shows where the code was stuck
    assert "variables were lost" in (r.exc_message or "")
    assert after.exc_type == "NameError"


async def test_timeout_when_interrupt_is_ignored(pool: SandboxPool) -> None:
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    async with pool.session() as s:
        r = await s.run(code, timeout=1)
        ok = await s.run("print('fresh')")
    assert r.status is RunStatus.TIMEOUT and r.state_lost
    assert ok.stdout == "fresh\n"


async def test_large_output_is_truncated_with_marker(pool: SandboxPool) -> None:
    async with pool.session() as s:
        r = await s.run("for i in range(200000):\n    print(i)")
    assert r.status is RunStatus.OK
    assert r.truncated
    assert r.stdout.startswith("0\n1\n2\n")
    assert r.stdout.rstrip().endswith("199999")
    assert "bytes truncated]" in r.stdout
    assert len(r.stdout) < 3 * pool.config.output_keep_bytes


async def test_files_in_and_out(pool: SandboxPool) -> None:
    async with pool.session() as s:
        await s.put_file("data/in.txt", "3\n4\n")
        r = await s.run(
            "nums = [int(l) for l in open('data/in.txt')]\nopen('out.txt', 'w').write(str(sum(nums)))"
        )
        assert r.ok
        assert await s.get_file("out.txt") == b"7"
        binary = bytes(range(256))
        await s.put_file("blob.bin", binary)
        assert await s.get_file("blob.bin") == binary


async def test_reset_gives_a_fresh_kernel(pool: SandboxPool) -> None:
    async with pool.session() as s:
        await s.run("y = 5")
        await s.reset()
        r = await s.run("print(y)")
    assert r.exc_type == "NameError"


async def test_stateless_mode_forgets_between_calls(pool: SandboxPool) -> None:
    async with pool.session(stateless=True) as s:
        await s.run("z = 1")
        r = await s.run("print(z)")
    assert r.exc_type == "NameError"


async def test_echo_last_expression(pool: SandboxPool) -> None:
    async with pool.session(echo_last_expr=True) as s:
        r = await s.run("a = 2\na ** 10")
        quiet = await s.run("a = 3")
        none = await s.run("None")
    assert r.stdout == "1024\n"
    assert quiet.stdout == "" and none.stdout == ""


async def test_output_does_not_bleed_into_the_next_call(pool: SandboxPool) -> None:
    async with pool.session() as s:
        first = await s.run("import sys\nsys.stdout.write('x' * 100000)\nsys.stderr.write('e')")
        second = await s.run("print('second')")
    assert first.truncated and first.stdout.startswith("xxx") and first.stdout.endswith("xxx")
    assert first.stderr == "e"
    assert second.stdout == "second\n"


async def test_invalid_arguments_are_rejected(pool: SandboxPool) -> None:
    async with pool.session() as s:
        with pytest.raises(TypeError):
            await s.run(b"print(1)")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await s.run("print(1)", timeout=0)


def test_observation_is_never_generic() -> None:
    from sandbox import RunResult

    assert RunResult(RunStatus.OK).observation() == "(the code ran and printed nothing)"
    r = RunResult(RunStatus.OOM, exc_type="MemoryError", exc_message="killed for memory")
    assert r.observation() == "MemoryError: killed for memory"
    lost = RunResult(RunStatus.OK, stdout="1\n", state_lost=True).observation()
    assert lost.startswith("1\n") and "variables from earlier cells are gone" in lost
    assert isinstance(SandboxSession, type)
