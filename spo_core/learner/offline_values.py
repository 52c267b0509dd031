"""Offline values (SPO_SPEC §5): ``k`` samples per prompt from the initial policy, cached.

Every training prompt is played ``k`` times through the rollout engine and the sandbox at the
training sampling parameters; the rewards are written as the JSON Lines file that
:func:`spo_core.offline.read_offline_jsonl` reads and :meth:`ValueTracker.init_offline` takes.
Masked episodes are infrastructure failures, not samples of the policy: they are left out, so
such a prompt has ``n < k`` scores, which §5's formulas weigh accordingly.

The file is cached under a key of everything that determines the samples: the model's identity
(a hash of its weights, :func:`weights_fingerprint`), the task set (keys and answers), the
episode spec (env, env options, sampling parameters including the seed, chat-template
variables) and ``k``. A second call with the same key reads the file and samples nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from agents.episode_fn import EpisodeSpec, episode_fn
from agents.policy import Policy
from envs.tasks import Task
from sandbox import SandboxPool
from spo_core.learner.task_samples import ProgressCallback, sample_each_task
from spo_core.offline import read_offline_table, write_offline_jsonl

__all__ = [
    "OfflineValues",
    "offline_cache_key",
    "offline_values",
    "read_offline_values",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineValues:
    """The offline samples of one task set.

    Attributes:
        path: the JSON Lines file (``{"key": ..., "scores": [...]}`` per prompt, task order).
        scores: each prompt's rewards, masked episodes left out (empty if all were masked).
        k: samples asked for per prompt.
        masked: masked episodes left out.
        cached: whether the file was read from the cache rather than sampled now.
        wall_s: seconds the sampling took (when it was done, for a cached file).
        cache_key: the key the file is cached under.
    """

    path: Path
    scores: dict[str, list[float]]
    k: int
    masked: int
    cached: bool
    wall_s: float
    cache_key: str

    @property
    def samples(self) -> int:
        """Scored (unmasked) samples over all prompts."""
        return sum(len(s) for s in self.scores.values())


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of a model's weights: parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def offline_cache_key(model_id: str, tasks: Sequence[Task], spec: EpisodeSpec, k: int) -> str:
    """The cache key of an offline-values pass (see the module docstring)."""
    inputs: dict[str, Any] = {
        "model": model_id,
        "tasks": [[t.key, t.answer] for t in tasks],
        "env_id": spec.env_id,
        "env_options": dict(spec.env_options),
        "sampling": spec.sampling.to_dict(),
        "chat_template_kwargs": dict(spec.chat_template_kwargs),
        "k": k,
    }
    text = json.dumps(inputs, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


async def offline_values(
    policy: Policy,
    tokenizer: PreTrainedTokenizerBase,
    pool: SandboxPool,
    spec: EpisodeSpec,
    tasks: Sequence[Task],
    *,
    model_id: str,
    cache_dir: str | os.PathLike[str],
    k: int = 8,
    episodes_in_flight: int = 32,
    episode_timeout_s: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> OfflineValues:
    """``k`` scores per prompt of ``tasks`` from ``policy``, from the cache when present.

    Args:
        policy: the initial policy.
        tokenizer: its tokenizer.
        pool: the sandbox pool the episodes' code runs in.
        spec: the training episode spec (env and sampling parameters of training).
        tasks: the training prompts.
        model_id: the model's identity for the cache, e.g. :func:`weights_fingerprint` of it.
        cache_dir: folder of the cached files (created if missing).
        k: samples per prompt (§5's n₀).
        episodes_in_flight: about how many episodes run at once (whole groups of ``k``).
        episode_timeout_s: active-time budget of one episode.
        on_progress: called after each prompt's ``k`` episodes (not on a cache hit).

    Raises:
        ValueError: ``k < 1``, no tasks, or a key listed twice.
        RolloutError: too many episodes were masked (more than half).
    """
    key = offline_cache_key(model_id, tasks, spec, k)
    folder = Path(cache_dir)
    path, meta_path = folder / f"offline-{key}.jsonl", folder / f"offline-{key}.json"
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        log.info("offline values: cache hit %s (%d prompts), nothing sampled", path, len(tasks))
        return OfflineValues(
            path=path,
            scores=read_offline_table(path),
            k=k,
            masked=int(meta["masked"]),
            cached=True,
            wall_s=float(meta["wall_s"]),
            cache_key=key,
        )
    log.info("offline values: cache miss %s, sampling %d prompts x %d", key, len(tasks), k)
    t0 = time.monotonic()
    trajectories = await sample_each_task(
        episode_fn(spec, policy, tokenizer, pool),
        tasks,
        k,
        policy=policy,
        episodes_in_flight=episodes_in_flight,
        episode_timeout_s=episode_timeout_s,
        on_progress=on_progress,
    )
    wall_s = time.monotonic() - t0
    scores = {
        key_: [t.reward for t in trajs if not t.masked] for key_, trajs in trajectories.items()
    }
    masked = sum(t.masked for trajs in trajectories.values() for t in trajs)
    folder.mkdir(parents=True, exist_ok=True)
    write_offline_jsonl(path, scores)
    meta = {"cache_key": key, "model": model_id, "k": k, "masked": masked, "wall_s": wall_s}
    tmp = meta_path.with_name(f".{meta_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)  # written last: its presence marks a complete file
    return OfflineValues(path, scores, k, masked, False, wall_s, key)


def read_offline_values(
    path: str | os.PathLike[str], tasks: Sequence[Task], k: int
) -> OfflineValues:
    """Offline values sampled elsewhere — ``spo-gym eval … -k K`` writes them as its run's
    ``offline_values.jsonl`` — for the prompts of ``tasks``.

    Entries for other prompts are ignored; samples past the first ``k`` of a prompt are left
    out, so the file weighs like ``k`` samples at most.

    Raises:
        ValueError: the file cannot be read, or a prompt of ``tasks`` has no sample in it
            (the message names how many are missing).
        OSError: the file cannot be opened.
    """
    table = read_offline_table(path)
    missing = [t.key for t in tasks if not table.get(t.key)]
    if missing:
        raise ValueError(
            f"{path} has no sample for {len(missing)} of {len(tasks)} training prompts "
            f"(e.g. {missing[0]}): evaluate the training prompts themselves, at the training "
            "sampling parameters"
        )
    scores = {t.key: table[t.key][:k] for t in tasks}
    return OfflineValues(
        path=Path(path),
        scores=scores,
        k=k,
        masked=0,  # lost samples are not in the file: the evaluation counted them apart
        cached=True,
        wall_s=0.0,
        cache_key=f"file:{Path(path).name}",
    )
