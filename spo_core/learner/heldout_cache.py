"""A cache of held-out evaluations of an initial model.

Every run from the same warm start scores the same weights on the same held-out set before it
trains; the experiment runs a dozen of them. The report is cached under a key of everything
that determines it — the weights (:func:`~spo_core.learner.offline_values.weights_fingerprint`),
the problems (keys and answers), the episode spec (env, env options, sampling parameters
including the seed, chat-template variables), ``k`` and the sampling temperature — so a second
run with the same key reads it instead of replaying ~1,500 episodes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from agents.episode_fn import EpisodeSpec
from spo_core.learner.heldout import HeldoutReport, HeldoutSet

__all__ = ["heldout_cache_key", "read_cached_report", "write_cached_report"]


def heldout_cache_key(
    model_id: str, heldout: HeldoutSet, spec: EpisodeSpec, k: int, temperature: float
) -> str:
    """The cache key of one held-out evaluation (see the module docstring)."""
    inputs: dict[str, Any] = {
        "model": model_id,
        "tasks": [[t.key, t.answer] for t in heldout.tasks],
        "env_id": spec.env_id,
        "env_options": dict(spec.env_options),
        "sampling": spec.sampling.to_dict(),
        "chat_template_kwargs": dict(spec.chat_template_kwargs),
        "k": k,
        "temperature": temperature,
    }
    text = json.dumps(inputs, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _path(cache_dir: str | os.PathLike[str], key: str) -> Path:
    return Path(cache_dir) / f"heldout-{key}.json"


def read_cached_report(cache_dir: str | os.PathLike[str], key: str) -> HeldoutReport | None:
    """The report cached under ``key``, or None (absent, or unreadable: then it is re-measured)."""
    path = _path(cache_dir, key)
    try:
        return HeldoutReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_cached_report(cache_dir: str | os.PathLike[str], key: str, report: HeldoutReport) -> Path:
    """Cache ``report`` under ``key`` atomically; returns the file."""
    path = _path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report.to_dict()) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
