"""A run's folder: manifest, problems, and the append-only sample log that makes runs resumable.

Layout of ``<out>/<run id>/``:

* ``manifest.json`` — the run id and everything it hashes, plus one entry per session (library
  versions, sandbox image digest, grader version) — a resumed run records its own;
* ``problems.jsonl`` — the task set, so summaries and re-grading need not reload the dataset;
* ``samples.jsonl`` — one finished sample per line, appended as it finishes;
* ``lost.jsonl`` — samples every attempt of which was lost to infrastructure;
* ``regrade.jsonl`` — verdicts changed by ``--regrade`` (the sample log itself is not edited);
* the outputs: ``summary.json``, ``summary.md``, ``pass_at_k.png``, ``offline_values.jsonl``.

**Crash safety.** Each line is written with a single ``write`` to a file opened for appending,
so a job killed at any point — even by SIGKILL — leaves whole lines and at most one torn last
line. Opening the log for appending cuts a torn tail off; reading keeps the first line of each
sample id. A resumed run therefore loses no finished sample and duplicates none, and since
samples are seeded by (problem, sample index), what it regenerates is what was lost.

**One writer.** A run is locked (``flock`` on ``.lock``) while a job writes it; a second job on
the same run fails at once with :class:`RunLocked`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from envs.tasks import ChatMessage, Task
from evals.sample import EvalSample, Lost

__all__ = ["RunCorrupt", "RunLocked", "RunStore"]

MANIFEST = "manifest.json"
PROBLEMS = "problems.jsonl"
SAMPLES = "samples.jsonl"
LOST = "lost.jsonl"
REGRADE = "regrade.jsonl"


class RunLocked(RuntimeError):
    """Another job is writing this run."""


class RunCorrupt(ValueError):
    """A run file has a line that is not a record (not a torn last line: that is repaired)."""


class RunStore:
    """The files of one run (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def run_id(self) -> str:
        """The run's id: its folder's name."""
        return self.folder.name

    # -- manifest and problems ----------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the run has been created."""
        return (self.folder / MANIFEST).is_file()

    def create(self, identity: Mapping[str, Any], tasks: list[Task]) -> None:
        """Create the run: its manifest (``identity``: what the run id hashes) and problems."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_json(self.folder / PROBLEMS, None, lines=[_task_record(t) for t in tasks])
        _write_json(
            self.folder / MANIFEST,
            {"run_id": self.run_id, "identity": dict(identity), "sessions": []},
        )

    def manifest(self) -> dict[str, Any]:
        """The manifest as stored."""
        with open(self.folder / MANIFEST, encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
        return data

    def add_session(self, session: Mapping[str, Any]) -> None:
        """Record one job's environment (versions, image, grader) in the manifest."""
        manifest = self.manifest()
        manifest["sessions"].append(dict(session))
        _write_json(self.folder / MANIFEST, manifest)

    def problems(self) -> list[Task]:
        """The run's task set, in order."""
        tasks = []
        for number, record in _records(self.folder / PROBLEMS):
            try:
                tasks.append(
                    Task(
                        key=record["key"],
                        prompt=record["prompt"]
                        if isinstance(record["prompt"], str)
                        else tuple(ChatMessage(m["role"], m["content"]) for m in record["prompt"]),
                        answer=record["answer"],
                        data_source=record["data_source"],
                        extra=record.get("extra", {}),
                        answer_order=record.get("answer_order", "notation"),
                    )
                )
            except (KeyError, TypeError) as exc:
                raise RunCorrupt(f"{self.folder / PROBLEMS}:{number}: {exc}") from None
        return tasks

    # -- the sample log -----------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's writer lock.

        Raises:
            RunLocked: another job holds it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLocked(
                    f"run {self.run_id} is being written by another job ({self.folder})"
                ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def samples(self) -> dict[str, EvalSample]:
        """Every finished sample by id (the first line of an id wins)."""
        out: dict[str, EvalSample] = {}
        for number, record in _records(self.folder / SAMPLES):
            try:
                sample = EvalSample.from_dict(record)
            except ValueError as exc:
                raise RunCorrupt(f"{self.folder / SAMPLES}:{number}: {exc}") from None
            out.setdefault(sample.id, sample)
        return out

    def lost(self) -> dict[str, Lost]:
        """Samples lost to infrastructure and not finished since, by id (the last loss wins)."""
        done = {s for s in self.samples()}
        out: dict[str, Lost] = {}
        for number, record in _records(self.folder / LOST):
            try:
                loss = Lost.from_dict(record)
            except (KeyError, TypeError, ValueError) as exc:
                raise RunCorrupt(f"{self.folder / LOST}:{number}: {exc}") from None
            if loss.id not in done:
                out[loss.id] = loss
        return out

    def appender(self, name: str = SAMPLES) -> LineLog:
        """An appending writer to one of the run's logs (a torn tail is cut off first)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return LineLog(self.folder / name)

    def path(self, name: str) -> Path:
        """A file of the run."""
        return self.folder / name


class LineLog:
    """Appends JSON lines, each in one ``write`` call (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        _repair_tail(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line."""
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        written = os.write(self._fd, data)
        if written != len(data):  # a short write to a regular file: disk full
            raise OSError(f"short write ({written} of {len(data)} bytes)")

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)

    def __enter__(self) -> LineLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (no newline) off a log."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records of a log with their line numbers; a torn last line is skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line the writer never finished
    del torn
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunCorrupt(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict):
            raise RunCorrupt(f"{path}:{number}: not a JSON object")
        yield number, record


def _task_record(task: Task) -> dict[str, Any]:
    return {
        "key": task.key,
        "prompt": task.prompt
        if isinstance(task.prompt, str)
        else [{"role": m.role, "content": m.content} for m in task.prompt],
        "answer": task.answer,
        "data_source": task.data_source,
        "answer_order": task.answer_order,
        "extra": _jsonable(task.extra),
    }


def _jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into a string."""
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, data: Any, *, lines: list[Any] | None = None) -> None:
    """Write a JSON document (or JSON lines) atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        if lines is None:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        else:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
