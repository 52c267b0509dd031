"""`spo-gym sandbox run`: results as they finish, resumable, clear errors on bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from sandbox import RunStatus, SandboxPool
from sandbox.batch import BatchInputError, Job, completed_ids, read_jobs, run_batch

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "spo-gym")


def write_jobs(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"code": "print(1)"}', "missing or non-scalar 'id'"),
        ('{"id": "x"}', "has no 'code' string"),
        ('{"id": "x", "code": "1", "timeout": -1}', "'timeout' must be a positive number"),
        ('{"id": "x", "code": "1", "files": {"a": 1}}', "'files' must map paths to text"),
        ('{"id": "x", "code": "1", "timeout": NaN}', "'timeout' must be a positive number"),
        ('{"id": "x", "code": "1", "timeout": Infinity}', "'timeout' must be a positive number"),
        ('{"id": "x", "code": "1", "timeout": true}', "'timeout' must be a positive number"),
        ('{"id": "x", "code": "1", "timout": 5}', "unknown key 'timout'"),
    ],
)
def test_bad_input_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "ok", "code": "print(1)"}\n' + line + "\n")
    with pytest.raises(BatchInputError, match=message) as info:
        read_jobs(path)
    assert f"{path}:2" in str(info.value)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_jobs(path, [{"id": 1, "code": "1"}, {"id": "1", "code": "2"}])
    with pytest.raises(BatchInputError, match="duplicate id '1'"):
        read_jobs(path)


def test_torn_last_line_is_cut_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "status": "ok"}\n{"id": "b", "sta')
    assert completed_ids(out) == {"a"}
    assert out.read_text() == '{"id": "a", "status": "ok"}\n'


def test_cli_rejects_bad_input_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "x"}\n')
    proc = subprocess.run(
        [CLI, "sandbox", "run", str(path), str(tmp_path / "o.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "has no 'code' string" in proc.stderr


@pytest.mark.docker
def test_batch_survives_a_kill_without_lost_or_duplicated_ids(tmp_path: Path) -> None:
    jobs = [
        {"id": f"j{i}", "code": f"import time\ntime.sleep(0.3)\nprint({i} ** 2)"} for i in range(24)
    ]
    jobs.append({"id": "boom", "code": "raise ValueError('bad')"})
    jobs.append(
        {"id": "file", "code": "print(open('in.txt').read())", "files": {"in.txt": "payload"}}
    )
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(src, jobs)
    cmd = [CLI, "sandbox", "run", str(src), str(out), "--concurrency", "4"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 5):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    partial = completed_ids(out)
    assert 5 <= len(partial) < len(jobs)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted(j["id"] for j in jobs)  # none lost, none duplicated
    by_id = {r["id"]: r for r in rows}
    assert by_id["j7"]["stdout"] == "49\n" and by_id["j7"]["status"] == "ok"
    assert by_id["boom"]["status"] == "error" and by_id["boom"]["exc_type"] == "ValueError"
    assert by_id["file"]["stdout"] == "payload\n"
    assert "already done (skipped)" in second.stderr and "ok" in second.stderr
    assert owned_by(docker.from_env(), first.pid) == []  # the second run reaped them


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "-1"], "--timeout"),
        (["--timeout", "nan"], "--timeout"),
        (["--memory-mb", "-5"], "--memory-mb"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "in.jsonl"
    write_jobs(path, [{"id": "a", "code": "print(1)"}])
    proc = subprocess.run(
        [CLI, "sandbox", "run", str(path), str(tmp_path / "o.jsonl"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_rejects_an_output_in_a_missing_folder(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    write_jobs(path, [{"id": "a", "code": "print(1)"}])
    out = tmp_path / "missing" / "o.jsonl"
    proc = subprocess.run(
        [CLI, "sandbox", "run", str(path), str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and str(out.parent) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.docker
async def test_a_job_that_forges_its_reply_does_not_abort_the_batch(
    pool: SandboxPool, tmp_path: Path
) -> None:
    forge = (
        "import sys\nframe = sys._getframe().f_back\n"
        "frame.f_globals['reply']({'op': 'done', 'status': 'pwned', "
        "'nonce': frame.f_locals['req']['nonce']})"
    )
    out = tmp_path / "out.jsonl"
    summary = await run_batch(
        pool, [Job("forge", forge), Job("fine", "print(2)")], out, concurrency=2
    )
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["forge"]["status"] == RunStatus.SANDBOX_ERROR.value
    assert rows["fine"]["stdout"] == "2\n"
    assert summary.done == 2


def owned_by(client: docker.DockerClient, pid: int) -> list[str]:
    """Sandbox containers whose owner label names process ``pid`` of this host."""
    return [
        c["Id"]
        for c in client.api.containers(all=True, filters={"label": "spo-gym.owner"})
        if c["Labels"]["spo-gym.owner"].split(":")[1] == str(pid)
    ]


@pytest.mark.docker
def test_sigterm_stops_cleanly_with_a_summary(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    jobs = [{"id": f"j{i}", "code": "import time\ntime.sleep(0.5)\nprint(1)"} for i in range(40)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jobs(src, jobs)
    cmd = [CLI, "sandbox", "run", str(src), str(out), "--concurrency", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "sandbox jobs" in stderr and "interrupted" in stderr, stderr
    assert "Traceback" not in stderr
    assert owned_by(docker_client, proc.pid) == []
    done = completed_ids(out)
    assert 3 <= len(done) < len(jobs)


def test_an_output_that_is_not_a_batch_result_is_named(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "a", "status": "ok"}\nnot a result\n')
    with pytest.raises(BatchInputError, match=f"{out}:2: not a result line"):
        completed_ids(out)
