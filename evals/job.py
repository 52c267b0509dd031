"""An eval job end to end: dataset → run id → resume → samples → summary and outputs.

1. Load the dataset slice and hash what determines the samples — model, sampling, env config,
   dataset slice, seed — into the run id; the run lives in ``<out>/<run id>/`` (``k`` is not
   in the id: samples are seeded by their index, so a larger ``k`` extends a run).
2. Lock the run and read what it holds; every (problem, index < k) without a finished sample is
   still to play. A finished run goes straight to step 4: no model is loaded.
3. Play the rest — locally (one worker: policy client, sandbox pool) or on a Ray cluster (a
   worker per actor) — appending each sample to ``samples.jsonl`` as it finishes and each
   sample lost to infrastructure (after retries) to ``lost.jsonl``.
4. Summarise the first ``k`` samples of each problem and write ``summary.json``,
   ``summary.md``, ``pass_at_k.png`` and ``offline_values.jsonl`` (SPO's offline prior:
   every problem's rewards, keyed by the stable prompt key, lost samples left out).
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from agents.episode_fn import EpisodeSpec
from agents.policy import SamplingParams
from agents.policy_spec import PolicySpec
from envs.grading import grader_version
from evals.datasets import EvalDataset, load_dataset
from evals.plots import plot_pass_at_k
from evals.regrade import apply_regrades
from evals.report import markdown_summary
from evals.runner import WorkItem
from evals.sample import EvalSample, Lost, sample_id
from evals.store import LOST, RunStore
from evals.summary import EvalSummary, summarize
from evals.worker import WorkerSpec, open_worker
from sandbox import SandboxConfig
from sandbox.image import image_digest
from spo_core.offline import write_offline_jsonl

__all__ = ["EvalConfig", "EvalOutcome", "EvalProgress", "plan_run", "run_eval"]

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
CURVE_PNG = "pass_at_k.png"
OFFLINE_VALUES = "offline_values.jsonl"

_VERSIONED = ("spo-gym", "torch", "transformers", "math-verify", "docker", "ray")


@dataclass(frozen=True)
class EvalConfig:
    """One eval job.

    Attributes:
        dataset: see :mod:`evals.datasets`.
        policy: the model (see :class:`~agents.policy_spec.PolicySpec`).
        env_id / env_options: the env, and its constructor options (``generation`` among
            them: ``max_turns``, ``max_episode_tokens``).
        k: samples per problem.
        sampling: temperature, top-p, top-k, per-turn max tokens and the run seed.
        offset / limit: the dataset slice.
        out: the folder runs are kept in.
        concurrency: episodes at once (per worker in Ray mode).
        episode_timeout_s: an episode's active-time budget.
        max_attempts: plays of a sample lost to infrastructure before it counts as lost.
        sandbox: the sandbox pool of each worker.
        ray_address: play on this Ray cluster (``"auto"``, ``"ray://host:port"``, or
            ``"local"`` to start one here); ``None``: locally.
        ray_workers: eval actors on the cluster (default: one per node).
    """

    dataset: str
    policy: PolicySpec = field(default_factory=PolicySpec)
    env_id: str = "spo_gym/ReTool-v0"
    env_options: Mapping[str, Any] = field(default_factory=dict)
    k: int = 8
    sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(
            max_tokens=1024, temperature=0.6, top_p=0.95, top_k=20
        )
    )
    offset: int = 0
    limit: int | None = None
    out: Path = Path("runs/eval")
    concurrency: int = 8
    episode_timeout_s: float | None = 600.0
    max_attempts: int = 3
    sandbox: SandboxConfig = field(default_factory=lambda: SandboxConfig(warm=2, reuse=True))
    ray_address: str | None = None
    ray_workers: int | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be >= 1")

    @property
    def episode(self) -> EpisodeSpec:
        """The episode every sample plays."""
        return EpisodeSpec(self.env_id, dict(self.env_options), self.sampling)

    def worker(self) -> WorkerSpec:
        """The worker that plays this job's samples."""
        return WorkerSpec(
            self.policy,
            self.episode,
            self.sandbox,
            self.concurrency,
            self.episode_timeout_s,
            self.max_attempts,
        )


@dataclass(frozen=True)
class EvalProgress:
    """How far a job has come (for progress bars).

    Attributes:
        done: samples settled (finished or lost), those from earlier sessions included.
        total: samples the job needs.
        correct: right ones among the finished.
        lost: lost ones.
        played: samples settled in this session.
        elapsed_s: seconds since this session started playing.
    """

    done: int
    total: int
    correct: int
    lost: int
    played: int
    elapsed_s: float


@dataclass(frozen=True)
class EvalOutcome:
    """What a job leaves.

    Attributes:
        store: the run's folder.
        summary: its summary.
        played: samples played in this session (0: the run was already complete).
        wall_s: seconds this session spent building its worker(s) and playing.
    """

    store: RunStore
    summary: EvalSummary
    played: int
    wall_s: float


def run_identity(config: EvalConfig, dataset: EvalDataset) -> dict[str, Any]:
    """Everything the run id hashes."""
    sampling = config.sampling.to_dict()
    return {
        "policy": config.policy.identity(),
        "env_id": config.env_id,
        "env_options": _jsonable(dict(config.env_options)),
        "sampling": sampling,
        "dataset": dataset.identity,
    }


def plan_run(config: EvalConfig) -> tuple[EvalDataset, RunStore, dict[str, Any]]:
    """Load the dataset and find the run's folder (it need not exist yet).

    Raises:
        evals.datasets.DatasetError: the dataset cannot be loaded.
        agents.models.ModelNotFoundError: a local model cannot be found.
    """
    dataset = load_dataset(
        config.dataset,
        env_id=config.env_id,
        offset=config.offset,
        limit=config.limit,
        seed=config.sampling.seed or 0,
    )
    identity = run_identity(config, dataset)
    digest = hashlib.blake2b(
        json.dumps(identity, sort_keys=True).encode(), digest_size=6
    ).hexdigest()
    run_id = f"{_slug(dataset.name)}-{_slug(config.policy.label)}-{digest}"
    return dataset, RunStore(config.out / run_id), identity


async def run_eval(
    config: EvalConfig, *, on_progress: Callable[[EvalProgress], None] | None = None
) -> EvalOutcome:
    """Run (or resume, or just summarise) the eval ``config`` describes.

    Raises:
        evals.datasets.DatasetError, evals.store.RunLocked, evals.store.RunCorrupt, and what
        building the policy or starting the sandbox raises (nothing is lost: the run resumes).
    """
    dataset, store, identity = plan_run(config)
    with store.lock():
        if not store.exists():
            store.create(identity, dataset.tasks)
        tasks = store.problems()
        done = store.samples()
        todo = [
            WorkItem(t, i)
            for t in tasks
            for i in range(config.k)
            if sample_id(t.key, i) not in done
        ]
        played, wall = 0, 0.0
        if todo:
            store.add_session(_session(config))
            played, wall = await _play(config, store, todo, done, on_progress)
        summary = summarize_run(store, config.k)
        write_outputs(store, summary)
    return EvalOutcome(store, summary, played, wall)


def summarize_run(store: RunStore, k: int) -> EvalSummary:
    """The summary of a run's first ``k`` samples of each problem, re-grades applied."""
    tasks = store.problems()
    samples = apply_regrades(store, store.samples())
    return summarize(store.run_id, tasks, samples, store.lost(), k)


def write_outputs(store: RunStore, summary: EvalSummary) -> None:
    """``summary.json``, ``summary.md``, ``pass_at_k.png`` and ``offline_values.jsonl``."""
    with open(store.path(SUMMARY_JSON), "w", encoding="utf-8") as f:
        json.dump(summary.to_dict(), f, indent=2)
        f.write("\n")
    store.path(SUMMARY_MD).write_text(markdown_summary(summary), encoding="utf-8")
    plot_pass_at_k([summary], store.path(CURVE_PNG))
    samples = apply_regrades(store, store.samples())
    table = {
        task.key: [
            samples[sid].reward
            for sid in (sample_id(task.key, i) for i in range(summary.k))
            if sid in samples
        ]
        for task in store.problems()
    }
    write_offline_jsonl(store.path(OFFLINE_VALUES), table)


async def _play(
    config: EvalConfig,
    store: RunStore,
    todo: list[WorkItem],
    done: Mapping[str, EvalSample],
    on_progress: Callable[[EvalProgress], None] | None,
) -> tuple[int, float]:
    total = len(store.problems()) * config.k
    earlier = [s for s in done.values() if s.sample_index < config.k]
    counts = {"done": len(earlier), "correct": sum(s.correct for s in earlier), "lost": 0}
    t0 = time.monotonic()
    played = 0

    def report() -> None:
        if on_progress is not None:
            on_progress(
                EvalProgress(
                    counts["done"],
                    total,
                    counts["correct"],
                    counts["lost"],
                    played,
                    time.monotonic() - t0,
                )
            )

    with store.appender() as samples_log, store.appender(LOST) as lost_log:

        def on_sample(sample: EvalSample) -> None:
            nonlocal played
            samples_log.append(sample.to_dict())
            played += 1
            counts["done"] += 1
            counts["correct"] += sample.correct
            report()

        def on_lost(loss: Lost) -> None:
            nonlocal played
            lost_log.append(loss.to_dict())
            played += 1
            counts["done"] += 1
            counts["lost"] += 1
            report()

        report()
        if config.ray_address is not None:
            from evals.ray_runner import run_on_ray

            await run_on_ray(
                todo,
                config.worker(),
                address=config.ray_address,
                workers=config.ray_workers,
                on_sample=on_sample,
                on_lost=on_lost,
            )
        else:
            async with open_worker(config.worker()) as worker:
                await worker.run(todo, on_sample, on_lost)
    return played, time.monotonic() - t0


def _session(config: EvalConfig) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "k": config.k,
        "versions": versions,
        "sandbox_image": _image(config.sandbox),
        "grader_version": grader_version(),
        "mode": "ray" if config.ray_address is not None else "local",
    }


def _image(sandbox: SandboxConfig) -> dict[str, str | None]:
    """The sandbox image's tag and digest (``None`` if the daemon cannot say)."""
    return {"tag": sandbox.image, "id": image_digest(sandbox.image, sandbox.docker_url)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "x"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))
