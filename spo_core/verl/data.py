"""Task data for verl: parquet files in the row schema spo-gym's agent loop reads.

Sources:

* the paper's data by name, from the Hugging Face hub (:data:`HUB_DATASETS`): DAPO-Math-17k
  (English) for training, AIME24, AIME25, HMMT25 (Feb), BRUMO25 and BeyondAIME for evaluation;
* local task files (``.jsonl`` / ``.json`` / ``.parquet`` in verl's schema or ``{problem,
  answer}`` rows, read by :func:`envs.load_tasks`), e.g. the AIME files of ``../shared/data/``;
* the built-in arithmetic tiers: a training file and a held-out file that shares no expression
  with it.

Every row (:data:`SCHEMA`)::

    data_source   str
    prompt        [{"role": "user", "content": <the problem text>}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": <answer>}
    agent_name    spo_core.verl.fields.AGENT_NAME
    prompt_key    the canonical prompt key (envs.prompt_key of the problem text)
    extra_info    {"index", "question", "answer", "env", "split"}

The prompt is the bare problem: the env adds its own instructions and template, so the key of a
problem is the same here, in ``spo-gym eval`` (whose ``offline_values.jsonl`` is keyed by it) and
in the tracker. Files are written atomically, and only once every source has loaded: a bad row
(named by file and line) leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from envs.tasks import Task, TaskDataError, Tier, TierError, heldout_tasks, load_tasks, tier_tasks
from spo_core.verl.fields import AGENT_NAME, PROMPT_KEY

__all__ = [
    "HUB_DATASETS",
    "SCHEMA",
    "DataPrepareError",
    "HubDataset",
    "PreparedFile",
    "Source",
    "hub_unreachable_reason",
    "parse_source",
    "prepare",
    "verl_rows",
]

Split = Literal["train", "test"]
SPLITS: Final[tuple[Split, ...]] = ("train", "test")
HUB_TIMEOUT_S: Final = 5.0


class DataPrepareError(ValueError):
    """A source that cannot be turned into verl parquet; the message is one line."""


@dataclass(frozen=True)
class HubDataset:
    """A dataset of the paper's setting on the Hugging Face hub.

    Attributes:
        name: the short name (``spo-gym data prepare NAME``) and output file stem.
        repo_id: the hub dataset.
        subset: the hub config (``None``: the default one).
        hub_split: the hub split holding the problems.
        split: what it is here: training data or an evaluation set.
    """

    name: str
    repo_id: str
    subset: str | None
    hub_split: str
    split: Split


HUB_DATASETS: Final[Mapping[str, HubDataset]] = {
    d.name: d
    for d in (
        HubDataset("dapo_math_17k", "open-r1/DAPO-Math-17k-Processed", "en", "train", "train"),
        HubDataset("aime24", "Maxwell-Jia/AIME_2024", None, "train", "test"),
        HubDataset("aime25", "yentinglin/aime_2025", None, "train", "test"),
        HubDataset("hmmt25", "MathArena/hmmt_feb_2025", None, "train", "test"),
        HubDataset("brumo25", "MathArena/brumo_2025", None, "train", "test"),
        HubDataset("beyondaime", "ByteDance-Seed/BeyondAIME", None, "test", "test"),
    )
}
"""The paper's training set and its five evaluation sets (SPO_SPEC §8)."""

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA: Final = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(_MESSAGE)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("agent_name", pa.string()),
        (PROMPT_KEY, pa.string()),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("question", pa.string()),
                    ("answer", pa.string()),
                    ("env", pa.string()),
                    ("split", pa.string()),
                ]
            ),
        ),
    ]
)
"""The columns of every file written here (see the module docstring)."""


@dataclass(frozen=True)
class Source:
    """One thing to prepare.

    Attributes:
        kind: ``hub`` (a :data:`HUB_DATASETS` name), ``file`` (a local task file) or ``tiers``.
        name: the output file stem (and ``data_source`` of rows without one).
        path: the local file (``file`` only).
        tiers: the tier names (``tiers`` only).
        count: tasks per tier (``tiers`` only).
    """

    kind: Literal["hub", "file", "tiers"]
    name: str
    path: Path | None = None
    tiers: tuple[str, ...] = ()
    count: int = 0


@dataclass(frozen=True)
class PreparedFile:
    """A written file: its name, split, path, row count and data sources."""

    name: str
    split: Split
    path: Path
    rows: int
    data_sources: tuple[str, ...]


DEFAULT_TIER_COUNT: Final = 64


def parse_source(text: str) -> Source:
    """A source from its command-line form: ``NAME`` (hub), ``NAME=PATH`` or ``PATH`` (local
    file; the name is the file stem), or ``tiers:d2o1,d3o1[:N]`` (``N`` tasks per tier).

    Raises:
        DataPrepareError: none of these forms.
    """
    if text.startswith("tiers:"):
        spec, _, count_text = text.removeprefix("tiers:").partition(":")
        try:
            tiers = tuple(Tier.parse(t).name for t in spec.split(",") if t.strip())
            count = int(count_text) if count_text else DEFAULT_TIER_COUNT
        except (TierError, ValueError) as exc:
            raise DataPrepareError(f"{text}: {exc}") from None
        if not tiers or count < 1:
            raise DataPrepareError(f"{text}: expected tiers:d2o1,d3o1[:N] with N >= 1")
        return Source("tiers", "tiers-" + "-".join(tiers), tiers=tiers, count=count)
    name, sep, path_text = text.partition("=")
    if sep:
        if not name or "/" in name:
            raise DataPrepareError(f"{text}: expected NAME=PATH with a plain NAME")
        return Source("file", name, path=Path(path_text).expanduser())
    path = Path(text).expanduser()
    if text in HUB_DATASETS and not path.exists():
        return Source("hub", text)
    if path.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return Source("file", path.stem, path=path)
    raise DataPrepareError(
        f"unknown source {text!r}: a hub name ({', '.join(HUB_DATASETS)}), a task file "
        "(.jsonl/.json/.parquet, optionally NAME=PATH), or tiers:d2o1,d3o1[:N]"
    )


def verl_rows(tasks: Sequence[Task], *, split: Split, env: str) -> list[dict[str, Any]]:
    """The verl rows of ``tasks``, indexed in order (see the module docstring).

    Raises:
        DataPrepareError: a task with no answer, or whose answer order a row cannot carry.
    """
    rows = []
    for index, task in enumerate(tasks):
        where = f"{task.data_source}, task {index + 1} ({task.key})"
        if not task.answer:
            raise DataPrepareError(f"{where}: no answer")
        if task.answer_order != "notation":
            # The rows carry no answer order: the grader would read this answer differently.
            raise DataPrepareError(
                f"{where}: answer order {task.answer_order!r} cannot be kept in verl rows"
            )
        question = task.problem
        rows.append(
            {
                "data_source": task.data_source,
                "prompt": [{"role": "user", "content": question}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": task.answer},
                "agent_name": AGENT_NAME,
                PROMPT_KEY: task.key,
                "extra_info": {
                    "index": index,
                    "question": question,
                    "answer": task.answer,
                    "env": env,
                    "split": split,
                },
            }
        )
    return rows


def hub_unreachable_reason(repo_id: str, timeout_s: float = HUB_TIMEOUT_S) -> str | None:
    """Why dataset ``repo_id`` cannot be fetched from the Hugging Face hub (``None``: the hub
    knows it), decided within ``timeout_s``.

    Honours ``HF_ENDPOINT`` and the offline switches ``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE``. Only the hub's own answer for the dataset counts (200, or 401/403
    for a gated one): an intercepting proxy answers anything with an error page. The probe runs
    in a daemon thread, so a name lookup that hangs cannot hold the command.
    """
    for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(switch, "").lower() in ("1", "true", "yes", "on"):
            return f"{switch} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/datasets/{repo_id}"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError as exc:
            outcome.append(None if exc.code in (401, 403) else f"{url}: HTTP {exc.code}")
        except (OSError, ValueError) as exc:
            outcome.append(f"{endpoint}: {getattr(exc, 'reason', exc)}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"{endpoint}: no answer within {timeout_s:g} s"


def _hub_tasks(dataset: HubDataset, scratch: Path) -> list[Task]:
    """Download ``dataset`` and read it like a local file (so it gets the same checks)."""
    reason = hub_unreachable_reason(dataset.repo_id)
    if reason is not None:
        raise DataPrepareError(
            f"{dataset.name}: the Hugging Face hub is not reachable ({reason}); download "
            f"{dataset.repo_id} elsewhere and pass the file: "
            f"spo-gym data prepare {dataset.name}=/path/to/file.jsonl (or .json/.parquet)"
        )
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        table = datasets.load_dataset(dataset.repo_id, dataset.subset, split=dataset.hub_split)
    except (DatasetsError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataPrepareError(f"{dataset.name}: cannot load {dataset.repo_id}: {first}") from None
    path = scratch / f"{dataset.name}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in table:
            # Some sets name their columns Problem / Answer.
            f.write(json.dumps({k.lower(): v for k, v in dict(row).items()}, default=str) + "\n")
    return _file_tasks(path, dataset.name, shown=f"{dataset.repo_id} ({dataset.hub_split})")


def _file_tasks(path: Path, name: str, *, shown: str | None = None) -> list[Task]:
    """The tasks of a local file; errors name ``shown`` (default: the path) and the row."""
    if not path.is_file():
        raise DataPrepareError(f"{path}: no such file")
    try:
        return load_tasks(path, data_source=name)
    except (TaskDataError, OSError) as exc:
        message = str(exc)
        raise DataPrepareError(message.replace(str(path), shown, 1) if shown else message) from None


def _source_files(
    source: Source,
    scratch: Path,
    *,
    split: Split | None,
    heldout_per_tier: int,
    seed: int,
    heldout_seed: int,
) -> list[tuple[str, Split, list[Task]]]:
    """``(file stem, split, tasks)`` of each file ``source`` makes."""
    if source.kind == "tiers":
        tiers = [Tier.parse(t) for t in source.tiers]
        try:
            train = tier_tasks(tiers, source.count, seed)
            files: list[tuple[str, Split, list[Task]]] = [(f"{source.name}-train", "train", train)]
            if heldout_per_tier > 0:
                test = heldout_tasks(tiers, heldout_per_tier, heldout_seed, exclude=train)
                files.append((f"{source.name}-test", "test", test))
        except ValueError as exc:  # TierError included: a tier too small for the count
            raise DataPrepareError(f"{source.name}: {exc}") from None
        return files
    known = HUB_DATASETS.get(source.name)
    role: Split = split or (known.split if known else "train")
    if source.kind == "hub":
        assert known is not None
        return [(source.name, role, _hub_tasks(known, scratch))]
    assert source.path is not None
    return [(source.name, role, _file_tasks(source.path, source.name))]


def prepare(
    sources: Sequence[Source],
    out_dir: Path,
    *,
    split: Split | None = None,
    heldout_per_tier: int = 32,
    seed: int = 0,
    heldout_seed: int = 1_000_003,
    env: str = "retool",
) -> list[PreparedFile]:
    """Write one parquet file per source (two per tier source: train and held-out test).

    Args:
        sources: what to prepare (:func:`parse_source`).
        out_dir: where the files go, as ``<name>.parquet``.
        split: the split of local files (default: a hub name's own, else ``train``).
        heldout_per_tier: held-out tasks per tier (0: no held-out file).
        seed / heldout_seed: the tier tasks' seeds (the training seed is ``spo-gym eval
            --dataset tiers:...``'s default, so its offline values match these keys).
        env: ``extra_info.env``, the env that plays the rows.

    Raises:
        DataPrepareError: a source cannot be read (the file, line and field are named), or two
            sources would write the same file. Nothing is written then.
    """
    if split is not None and split not in SPLITS:
        raise DataPrepareError(f"split must be train or test, got {split!r}")
    if heldout_per_tier < 0:
        raise DataPrepareError("heldout_per_tier must be >= 0")
    planned: list[tuple[str, Split, list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="spo-gym-data-") as scratch:
        for source in sources:
            for stem, role, tasks in _source_files(
                source,
                Path(scratch),
                split=split,
                heldout_per_tier=heldout_per_tier,
                seed=seed,
                heldout_seed=heldout_seed,
            ):
                if any(stem == other for other, _, _ in planned):
                    raise DataPrepareError(f"two sources would both write {stem}.parquet")
                if not tasks:
                    raise DataPrepareError(f"{stem}: no tasks")
                planned.append((stem, role, verl_rows(tasks, split=role, env=env)))
    return _write_all(planned, out_dir)


def _write_all(
    planned: Sequence[tuple[str, Split, list[dict[str, Any]]]], out_dir: Path
) -> list[PreparedFile]:
    # Every file goes to a temporary sibling first; renames happen only once all are written.
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for stem, _, rows in planned:
            final = out_dir / f"{stem}.parquet"
            tmp = out_dir / f".{stem}.parquet.{os.getpid()}.tmp"
            staged.append((tmp, final))
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [
        PreparedFile(
            stem,
            role,
            out_dir / f"{stem}.parquet",
            len(rows),
            tuple(sorted({r["data_source"] for r in rows})),
        )
        for stem, role, rows in planned
    ]
