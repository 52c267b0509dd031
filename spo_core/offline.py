"""Offline initialisation of the value tracker from samples of the initial policy (§5).

Two file formats are read into one in-memory form, :class:`OfflineScores`:

* the authors' JSON ``{prompt_text: [score, ...]}``; scores are binarised with ``> 0`` and the
  raw prompt texts are turned into prompt keys by a function the caller passes in (the envs
  package owns the canonical key);
* this project's JSON Lines, one ``{"key": ..., "scores": [...]}`` object per line, keys already
  canonical and scores kept as they are (fractional rewards are allowed).

The prior formulas fix two defects of the authors' code: the success rate is divided by n + 1,
not n₀ + 1, and the pseudo-count scales with the evidence instead of being N₀ for one sample.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from spo_core.config import OfflineConfig

_DEFAULT_OFFLINE = OfflineConfig()  # frozen, so sharing one default instance is safe

FloatArray = npt.NDArray[np.float64]


class OfflineMatchError(ValueError):
    """An offline table covers too few training prompts (the authors' "never trained" defect)."""


@dataclass(frozen=True)
class OfflineScores:
    """Sufficient statistics of each prompt's offline samples, after subsampling to n₀."""

    keys: list[str]
    counts: npt.NDArray[np.int64]  # n: samples kept
    sums: FloatArray  # Σ r
    sq_sums: FloatArray  # Σ r², needed by the EMA tracker

    @classmethod
    def from_lists(
        cls, table: Mapping[str, Sequence[float]], config: OfflineConfig = _DEFAULT_OFFLINE
    ) -> OfflineScores:
        """Reduce ``{key: [score, ...]}`` to sums, keeping a seeded random n₀ of longer lists."""
        rng = np.random.default_rng(config.subsample_seed)
        keys = list(table)
        counts = np.zeros(len(keys), dtype=np.int64)
        sums = np.zeros(len(keys))
        sq_sums = np.zeros(len(keys))
        for i, key in enumerate(keys):
            scores = np.asarray(table[key], dtype=np.float64)
            if scores.size > config.n0:
                scores = rng.choice(scores, size=config.n0, replace=False)
            counts[i], sums[i], sq_sums[i] = scores.size, scores.sum(), np.square(scores).sum()
        return cls(keys=keys, counts=counts, sums=sums, sq_sums=sq_sums)


@dataclass(frozen=True)
class OfflineReport:
    """How an offline table matched the training prompts."""

    n_train: int  # prompts registered in the tracker
    n_offline: int  # prompts in the table with at least one sample
    matched: int  # training prompts that received an offline prior
    match_rate: float  # matched / n_train


def beta_prior(
    successes: FloatArray, n: FloatArray, config: OfflineConfig = _DEFAULT_OFFLINE
) -> tuple[FloatArray, FloatArray]:
    """Offline Beta counts (α₀, β₀) from s successes in n ≥ 1 samples.

    v̂₀ = (s + 0.5) / (n + 1),  α₀ + β₀ = N₀ · n / n₀,  α₀ = (α₀ + β₀)·v̂₀,  β₀ = (α₀ + β₀)·(1 − v̂₀).
    """
    value = (successes + 0.5) / (n + 1.0)
    total = config.pseudo_count * n / config.n0
    return total * value, total * (1.0 - value)


def ema_prior(
    sums: FloatArray,
    sq_sums: FloatArray,
    n: FloatArray,
    prior_mean: float,
    prior_second_moment: float,
    config: OfflineConfig = _DEFAULT_OFFLINE,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Offline EMA state (N_eff, mean, second moment): §5 with the prior as one pseudo-sample.

    For binary rewards and the default prior (0.5, 0.5) this is exactly :func:`beta_prior`:
    mean = (s + 0.5)/(n + 1) = α₀/(α₀ + β₀) and N_eff = α₀ + β₀.
    """
    mean = (sums + prior_mean) / (n + 1.0)
    second = (sq_sums + prior_second_moment) / (n + 1.0)
    return config.pseudo_count * n / config.n0, mean, second


def read_authors_json(
    path: str | os.PathLike[str],
    key_fn: Callable[[str], str],
    config: OfflineConfig = _DEFAULT_OFFLINE,
) -> OfflineScores:
    """Read the authors' ``{prompt_text: [score, ...]}``; scores binarised with ``> 0``.

    Texts that map to the same key (the key function normalises) have their samples merged.
    """
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{prompt_text: [scores]}}")
    merged: dict[str, list[float]] = {}
    for text, scores in raw.items():
        merged.setdefault(key_fn(text), []).extend(1.0 if s > 0 else 0.0 for s in scores)
    return OfflineScores.from_lists(merged, config)


def read_offline_jsonl(
    path: str | os.PathLike[str], config: OfflineConfig = _DEFAULT_OFFLINE
) -> OfflineScores:
    """Read this project's format: one ``{"key": str, "scores": [float, ...]}`` per line."""
    return OfflineScores.from_lists(read_offline_table(path), config)


def read_offline_table(path: str | os.PathLike[str]) -> dict[str, list[float]]:
    """This project's format as written: ``{key: [score, ...]}``, every sample kept (lines of
    the same key merged in file order)."""
    merged: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("key"), str) or not isinstance(record.get("scores"), list):
                raise ValueError(f"{path}:{line_no}: expected {{'key': str, 'scores': [float]}}")
            merged.setdefault(record["key"], []).extend(float(s) for s in record["scores"])
    return merged


def write_offline_jsonl(path: str | os.PathLike[str], table: Mapping[str, Sequence[float]]) -> None:
    """Write ``{key: [score, ...]}`` in this project's format, atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for key, scores in table.items():
            f.write(json.dumps({"key": key, "scores": [float(s) for s in scores]}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
