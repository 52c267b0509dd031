"""Eval jobs on a Ray cluster (the session's local one) against the real env, sandbox and grader:
the same samples and figures as a local run, resume after a cancelled run, errors as locally,
and every actor's sandbox pool closed at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest
import pytest_asyncio

from agents.policy import SamplingParams
from agents.policy_spec import PolicySpec, PolicySpecError
from evals import EvalConfig, EvalOutcome, EvalProgress, plan_run, run_eval
from evals.ray_runner import RayUnavailable, run_on_ray
from evals.runner import WorkItem
from evals.store import SAMPLES, RunStore
from evals.summary import EvalSummary
from sandbox import SandboxConfig
from sandbox.reaper import LABEL_OWNER

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SCRIPTED = "agents.scripted_policy:arithmetic_policy"
PROBLEMS, K = 8, 4


def _config(out: Path, **changes: Any) -> EvalConfig:
    config = EvalConfig(
        dataset="tiers:d2o1,d2o2:4",
        policy=PolicySpec(factory=SCRIPTED, seed=7),
        env_options={"generation": {"max_turns": 3}},
        k=K,
        sampling=SamplingParams(max_tokens=128, temperature=1.0, seed=7),
        out=out,
        concurrency=8,
        sandbox=SandboxConfig(warm=1, memory_mb=512, reuse=True),
    )
    return replace(config, **changes)


@pytest_asyncio.fixture(scope="module")
async def local_run(tmp_path_factory: pytest.TempPathFactory) -> EvalOutcome:
    """The reference: the job played locally."""
    return await run_eval(_config(tmp_path_factory.mktemp("local")))


def _results(outcome: EvalOutcome) -> dict[str, tuple[Any, ...]]:
    return {
        i: (s.answer, s.correct, s.turns, s.tool_calls) for i, s in outcome.store.samples().items()
    }


def _figures(summary: EvalSummary) -> dict[str, Any]:
    figures = summary.to_dict()
    del figures["time_s"]  # wall-clock splits differ between any two runs
    return figures


class _RayOwned:
    """Watches a Ray job's sandbox containers: records, as samples arrive, the processes this
    one started (the local cluster and its workers) and the containers they own."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.seen: dict[str, int] = {}
        self._client = docker.from_env()

    def containers(self) -> dict[str, int]:
        """Containers (any state) whose owner is one of the recorded processes: id -> owner."""
        host = socket.gethostname()
        found = {}
        for c in self._client.api.containers(all=True, filters={"label": LABEL_OWNER}):
            owner_host, _, rest = c["Labels"][LABEL_OWNER].partition(":")
            pid = int(rest.partition(":")[0])
            if owner_host == host and pid in self.pids:
                found[c["Id"]] = pid
        return found

    def on_progress(self, progress: EvalProgress) -> None:
        if progress.played == 0:
            return
        self.pids.update(p.pid for p in psutil.Process().children(recursive=True))
        if not self.seen:
            self.seen = self.containers()


async def test_ray_mode_gives_the_same_samples_and_figures_as_local_mode(
    ray_cluster: str, local_run: EvalOutcome, tmp_path: Path
) -> None:
    owned = _RayOwned()
    t0 = time.monotonic()
    outcome = await run_eval(
        _config(tmp_path, ray_address=ray_cluster, ray_workers=2), on_progress=owned.on_progress
    )
    print(f"ray run: {time.monotonic() - t0:.1f} s, local run: {local_run.wall_s:.1f} s")
    assert outcome.store.run_id == local_run.store.run_id  # the mode is not in the run's id
    assert outcome.played == PROBLEMS * K
    assert outcome.store.manifest()["sessions"][0]["mode"] == "ray"
    ray_results, local_results = _results(outcome), _results(local_run)
    assert len(ray_results) == PROBLEMS * K
    assert ray_results == local_results
    # the policy is stochastic: a problem's samples differ, so the seeds did the matching
    by_problem: dict[str, set[tuple[Any, ...]]] = {}
    for sample_id, result in local_results.items():
        by_problem.setdefault(sample_id.partition("#")[0], set()).add(result)
    assert any(len(results) > 1 for results in by_problem.values())
    assert _figures(outcome.summary) == _figures(local_run.summary)
    # the actors had sandbox pools, and closed them: none of their containers is left
    assert owned.seen
    assert owned.containers() == {}


async def test_a_cancelled_ray_run_resumes_with_no_lost_and_no_duplicated_sample(
    ray_cluster: str, local_run: EvalOutcome, tmp_path: Path
) -> None:
    config = _config(tmp_path, ray_address=ray_cluster)
    owned = _RayOwned()
    job: asyncio.Task[EvalOutcome] | None = None

    def cancel_once_a_problem_is_in(progress: EvalProgress) -> None:
        owned.on_progress(progress)
        if progress.played and job is not None:
            job.cancel()

    job = asyncio.ensure_future(run_eval(config, on_progress=cancel_once_a_problem_is_in))
    with pytest.raises(asyncio.CancelledError):
        await job
    assert owned.seen and owned.containers() == {}
    store = plan_run(config)[1]
    partial = store.samples()
    assert 0 < len(partial) < PROBLEMS * K
    resumed = await run_eval(config)
    assert resumed.played == PROBLEMS * K - len(partial)
    lines = store.path(SAMPLES).read_text().splitlines()
    assert len(lines) == PROBLEMS * K
    assert len({json.loads(line)["id"] for line in lines}) == PROBLEMS * K
    assert _results(resumed) == _results(local_run)


@pytest.mark.slow
async def test_a_killed_actor_is_restarted_and_its_problems_played_again(
    ray_cluster: str, local_run: EvalOutcome, tmp_path: Path
) -> None:
    owned = _RayOwned()
    killed: list[int] = []

    def kill_the_actor_once_a_problem_is_in(progress: EvalProgress) -> None:
        owned.on_progress(progress)
        if progress.played and not killed:
            (actor,) = set(owned.seen.values())  # the one actor owns the sandbox containers
            os.kill(actor, signal.SIGKILL)
            killed.append(actor)

    outcome = await run_eval(
        _config(tmp_path, ray_address=ray_cluster), on_progress=kill_the_actor_once_a_problem_is_in
    )
    assert killed and not psutil.pid_exists(killed[0])
    assert outcome.played == PROBLEMS * K and outcome.summary.lost == 0
    assert _results(outcome) == _results(local_run)
    assert owned.containers() == {}  # the dead actor's too (reaped by its successor's pool)


async def test_an_actor_error_is_raised_as_a_local_run_raises_it(
    ray_cluster: str, tmp_path: Path
) -> None:
    broken = PolicySpec(factory="tests.evals.no_such_module:factory")
    with pytest.raises(PolicySpecError) as local:
        await run_eval(_config(tmp_path / "local", policy=broken))
    with pytest.raises(PolicySpecError) as remote:
        await run_eval(_config(tmp_path / "ray", policy=broken, ray_address=ray_cluster))
    assert str(remote.value) == str(local.value)
    assert "no_such_module" in str(remote.value)


async def test_without_ray_installed_ray_mode_is_ray_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, _, _ = plan_run(_config(tmp_path))
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without Ray
    ignore: Callable[[Any], None] = lambda _: None  # noqa: E731
    with pytest.raises(RayUnavailable, match="Ray is not installed"):
        await run_on_ray(
            [WorkItem(dataset.tasks[0], 0)],
            _config(tmp_path).worker(),
            address="auto",
            on_sample=ignore,
            on_lost=ignore,
        )


def _cli(out: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-c", "from spo_gym.cli import main; main()",
        "eval", "--dataset", "tiers:d2o1:2", "-k", "2", "--policy-factory", SCRIPTED,
        "--temperature", "1.0", "--max-tokens", "128", "--max-turns", "3", "--seed", "7",
        "--out", str(out), "--no-progress", *args,
    ]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
async def test_the_cli_starts_a_local_cluster_of_its_own(tmp_path: Path) -> None:
    # its own process: this one may already be connected to the session's cluster
    t0 = time.monotonic()
    proc = _run(_cli(tmp_path / "ray", "--ray-address", "local"))
    print(f"--ray-address local: {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])["runs"][0]
    assert (figures["samples"], figures["played"], figures["lost"]) == (4, 4, 0)
    local = await run_eval(
        EvalConfig(
            dataset="tiers:d2o1:2",
            policy=PolicySpec(factory=SCRIPTED, seed=7),
            env_options={"generation": {"max_turns": 3}},
            k=2,
            sampling=SamplingParams(max_tokens=128, temperature=1.0, top_p=0.95, top_k=20, seed=7),
            out=tmp_path / "local",
            sandbox=SandboxConfig(warm=1, memory_mb=512, reuse=True),
        )
    )
    assert figures["run_id"] == local.store.run_id
    ray_run = RunStore(Path(figures["folder"]))
    assert ray_run.manifest()["sessions"][0]["mode"] == "ray"
    assert {i: (s.answer, s.correct) for i, s in ray_run.samples().items()} == {
        i: (s.answer, s.correct) for i, s in local.store.samples().items()
    }


_CONNECT_ONLY = """
import asyncio, sys, time
import ray  # imported before the clock starts: only the connection attempt is timed
from agents.episode_fn import EpisodeSpec
from agents.policy_spec import PolicySpec
from envs.tasks import Task
from evals.ray_runner import RayUnavailable, run_on_ray
from evals.runner import WorkItem
from evals.worker import WorkerSpec

spec = WorkerSpec(PolicySpec(factory="agents.scripted_policy:arithmetic_policy"),
                  EpisodeSpec("spo_gym/ReTool-v0"))
items = [WorkItem(Task.create("1 + 1", "2", "t"), 0)]
t0 = time.monotonic()
try:
    asyncio.run(run_on_ray(items, spec, address=sys.argv[1], on_sample=print, on_lost=print))
except RayUnavailable as exc:
    print(f"{time.monotonic() - t0:.2f}", exc)
"""


def test_an_unreachable_cluster_fails_fast(tmp_path: Path) -> None:
    # its own process: this one may already be connected to the session's cluster
    proc = subprocess.run(
        [sys.executable, "-c", _CONNECT_ONLY, "ray://127.0.0.1:1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, _, message = proc.stdout.strip().splitlines()[-1].partition(" ")
    assert "cannot reach the Ray cluster at ray://127.0.0.1:1" in message
    assert float(seconds) < 10  # Ray alone retries a client address for 30 s


def test_an_unreachable_cluster_is_a_one_line_cli_error(tmp_path: Path) -> None:
    address = "ray://127.0.0.1:1"
    proc = _run(_cli(tmp_path, "--ray-address", address))
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error:") and f"cannot reach the Ray cluster at {address}" in line
    assert proc.stdout == ""
    malformed = _run(_cli(tmp_path / "malformed", "--ray-address", "no-port-here"))
    assert malformed.returncode == 2 and "a Ray address reads" in malformed.stderr
