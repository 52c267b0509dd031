"""Batch sandbox jobs: JSONL in, JSONL out, resumable.

Each input line is one job, a JSON object with exactly these keys:

* ``id`` (string or integer, unique): names the job in the output;
* ``code`` (string): the Python cell to run;
* ``timeout`` (positive number of seconds, optional): default the pool's;
* ``files`` (object, optional): ``{"relative/path": "text", ...}``, written as UTF-8
  under the working directory ``/tmp/work`` before the code runs.

Any other key is an error (a misspelt ``"timout"`` must not silently run with the
default). Each job runs in its own fresh session. Each finished job is appended to the
output as one line (the job's ``id`` plus the :class:`RunResult` fields) the moment it
finishes, so a killed run loses at most the jobs in flight; re-running skips ids already
in the output (a torn last line is cut off first). Jobs that could not get a sandbox, or
that were stopped by :func:`run_batch`'s ``stop`` event, are not written, so a re-run
retries them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.pool import SandboxPool
from sandbox.results import RunResult, RunStatus, SandboxError, SandboxUnavailable

JOB_KEYS = ("id", "code", "timeout", "files")


class BatchInputError(ValueError):
    """The input file is malformed; the message names the line and the problem."""


@dataclass(frozen=True)
class Job:
    """One batch job (see the module docstring for the input format).

    Attributes:
        id: the job's name in the output.
        code: the Python cell to run.
        timeout: seconds, or None for the pool's default.
        files: relative path → text, written under ``/tmp/work`` before the code runs.
    """

    id: str
    code: str
    timeout: float | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchSummary:
    """What a batch run did."""

    total: int
    skipped: int
    statuses: Counter[str]
    unavailable: list[str]
    durations_s: list[float]
    wall_s: float
    interrupted: bool = False

    @property
    def not_run(self) -> int:
        """Jobs of this run that were not written (no sandbox, or stopped): a re-run does them."""
        return self.total - self.skipped - self.done

    @property
    def done(self) -> int:
        """Jobs written in this run."""
        return sum(self.statuses.values())


def read_jobs(path: str | Path) -> list[Job]:
    """Parses and validates the input; raises BatchInputError naming the bad line."""
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BatchInputError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise BatchInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if "id" not in row or not isinstance(row["id"], (str, int)):
                raise BatchInputError(f"{where}: missing or non-scalar 'id'")
            job_id = str(row["id"])
            if job_id in seen:
                raise BatchInputError(
                    f"{where}: duplicate id {job_id!r} (first on line {seen[job_id]})"
                )
            seen[job_id] = lineno
            unknown = sorted(set(row) - set(JOB_KEYS))
            if unknown:
                raise BatchInputError(
                    f"{where}: job {job_id!r}: unknown key {unknown[0]!r} "
                    f"(a job has {', '.join(JOB_KEYS)})"
                )
            if not isinstance(row.get("code"), str):
                raise BatchInputError(f"{where}: job {job_id!r} has no 'code' string")
            timeout = row.get("timeout")
            if timeout is not None and not _positive_seconds(timeout):
                raise BatchInputError(
                    f"{where}: job {job_id!r}: 'timeout' must be a positive number"
                )
            files = row.get("files") or {}
            if not isinstance(files, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()
            ):
                raise BatchInputError(f"{where}: job {job_id!r}: 'files' must map paths to text")
            jobs.append(Job(job_id, row["code"], float(timeout) if timeout else None, files))
    return jobs


def _positive_seconds(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def completed_ids(out_path: str | Path) -> set[str]:
    """Ids already in the output; cuts off a torn last line left by a killed run.

    Raises:
        BatchInputError: a whole line of the output is not a result of a batch run.
    """
    path = Path(out_path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    ids = set()
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise BatchInputError(
                f"{out_path}:{lineno}: not a result line of a batch run; is this the right output file?"
            ) from exc
    return ids


async def run_batch(
    pool: SandboxPool,
    jobs: list[Job],
    out_path: str | Path,
    *,
    concurrency: int = 8,
    on_result: Callable[[Job, RunResult | None], None] | None = None,
    stop: asyncio.Event | None = None,
) -> BatchSummary:
    """Runs the jobs not yet in ``out_path``, appending each result as it finishes.

    Whatever a job's code does, its result is written: one job never aborts the batch.
    When ``stop`` is set (say, on SIGTERM), no further job starts and running ones are
    cancelled, their containers released; the summary says ``interrupted``.

    Raises:
        SandboxError: another batch run holds the output file.
    """
    t0 = time.monotonic()
    out = open(out_path, "ab")  # noqa: SIM115 - held for the whole run under a lock
    try:
        try:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SandboxError(f"{out_path} is being written by another batch run") from exc
        done = completed_ids(out_path)
        todo = [j for j in jobs if j.id not in done]
        summary = BatchSummary(len(jobs), len(jobs) - len(todo), Counter(), [], [], 0.0)
        sem = asyncio.Semaphore(concurrency)

        async def one(job: Job) -> None:
            async with sem:
                try:
                    async with pool.session(f"batch-{job.id}") as s:
                        try:
                            for path, content in job.files.items():
                                await s.put_file(path, content)
                        except SandboxError as exc:
                            result = RunResult(
                                RunStatus.ERROR, exc_type="FileError", exc_message=str(exc)
                            )
                        else:
                            result = await s.run(job.code, timeout=job.timeout)
                except SandboxUnavailable as exc:
                    summary.unavailable.append(f"{job.id}: {exc}")
                    if on_result is not None:
                        on_result(job, None)
                    return
            record: dict[str, Any] = {"id": job.id, **result.to_dict()}
            out.write(json.dumps(record).encode() + b"\n")
            out.flush()  # one write per line: a kill leaves whole lines (or one torn tail)
            summary.statuses[result.status.value] += 1
            summary.durations_s.append(result.duration_s)
            if on_result is not None:
                on_result(job, result)

        summary.interrupted = await _until_done_or_stopped(
            [asyncio.ensure_future(one(j)) for j in todo], stop
        )
        os.fsync(out.fileno())
    finally:
        out.close()
    summary.wall_s = time.monotonic() - t0
    return summary


async def _until_done_or_stopped(
    tasks: list[asyncio.Future[None]], stop: asyncio.Event | None
) -> bool:
    """Awaits ``tasks``; if ``stop`` is set first, cancels them and returns True."""
    everything: asyncio.Future[Any] = asyncio.gather(*tasks)
    stopped: asyncio.Future[Any] = asyncio.ensure_future(
        stop.wait() if stop is not None else asyncio.Event().wait()
    )
    try:
        await asyncio.wait({everything, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if everything.done():
        await everything  # a bug in a job surfaces here rather than vanishing
        return False
    for task in tasks:
        task.cancel()
    await asyncio.wait({everything})
    if not everything.cancelled():
        everything.exception()  # the cancellations it reports are ours: mark them seen
    return True
