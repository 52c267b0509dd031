"""What an eval runs on: a task file, or a built-in task family, sliced and fingerprinted.

``--dataset`` forms:

* a path to a ``.jsonl`` / ``.json`` / ``.parquet`` file (verl's schema, or ``{problem,
  answer}`` rows: :func:`envs.load_tasks`), e.g. ``../shared/data/aime24.jsonl``;
* ``tiers:d1o1,d3o2[:N]`` — ``N`` (default 50) tasks of each arithmetic tier;
* ``env[:N]`` — ``N`` (default 50) tasks from the env's own task source.

Hugging Face dataset names need the hub, which is not assumed reachable: download the file and
pass its path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envs
from envs.tasks import Task, Tier, TierError, tier_tasks

__all__ = ["DatasetError", "EvalDataset", "load_dataset"]

DEFAULT_COUNT = 50


class DatasetError(ValueError):
    """A ``--dataset`` that cannot be loaded; the message says why and what would work."""


@dataclass(frozen=True)
class EvalDataset:
    """A loaded task set.

    Attributes:
        name: a short name (the file stem, or the family spec) for run ids and tables.
        tasks: the tasks, in order, after the slice.
        identity: what the run id hashes: the name and a hash of every task's key, answer and
            answer order (so the slice is part of it).
    """

    name: str
    tasks: list[Task]
    identity: dict[str, Any]


def load_dataset(
    ref: str,
    *,
    env_id: str = "spo_gym/ReTool-v0",
    offset: int = 0,
    limit: int | None = None,
    seed: int = 0,
) -> EvalDataset:
    """Load ``ref`` (see the module docstring), then keep ``limit`` tasks from ``offset``.

    Raises:
        DatasetError: an unknown form, a bad row (the row and field are named), or an empty
            slice.
    """
    if offset < 0 or (limit is not None and limit < 1):
        raise DatasetError("need offset >= 0 and limit >= 1")
    path = Path(ref).expanduser()
    try:
        if path.is_file():
            name, tasks = path.stem, envs.load_tasks(path)
        elif ref.startswith("tiers:"):
            name, tasks = ref, _tiers(ref.removeprefix("tiers:"), seed)
        elif ref == "env" or ref.startswith("env:"):
            count = _count(ref.removeprefix("env").removeprefix(":") or None)
            name = f"{env_id.rsplit('/', 1)[-1]}-tasks"
            tasks = envs.make(env_id).sample_tasks(count, seed=seed)
        elif path.suffix in {".jsonl", ".json", ".parquet"} or ("/" in ref and not path.exists()):
            raise DatasetError(f"dataset file {ref} does not exist")
        else:
            raise DatasetError(
                f"unknown dataset {ref!r}: give a task file (.jsonl/.json/.parquet), "
                "'tiers:d1o1,d3o2[:N]' or 'env[:N]' (Hugging Face names need the hub, which is "
                "not reachable here: download the file and pass its path)"
            )
    except (envs.TaskDataError, TierError, OSError) as exc:
        raise DatasetError(str(exc)) from None
    sliced = tasks[offset : None if limit is None else offset + limit]
    if not sliced:
        raise DatasetError(f"{ref}: no tasks in the slice (offset {offset}, limit {limit})")
    digest = hashlib.blake2b(digest_size=16)
    for t in sliced:
        digest.update(json.dumps([t.key, t.answer, t.answer_order]).encode())
    return EvalDataset(name, sliced, {"name": name, "tasks": digest.hexdigest(), "n": len(sliced)})


def _tiers(spec: str, seed: int) -> list[Task]:
    names, _, count = spec.partition(":")
    tiers = [Tier.parse(n) for n in names.split(",") if n.strip()]
    return tier_tasks(tiers, _count(count or None), seed)


def _count(text: str | None) -> int:
    if text is None:
        return DEFAULT_COUNT
    try:
        n = int(text)
    except ValueError:
        raise DatasetError(f"bad task count {text!r}: expected a positive integer") from None
    if n < 1:
        raise DatasetError(f"bad task count {n}: expected a positive integer")
    return n
