"""The SPO trainer's per-prompt state: value tracker, prioritised sampler, and their checkpoint.

Plain spo_core objects with no verl in them, so the trainer mode is only plumbing. Tracker rows
are dataset positions: the training set's ``prompt_key`` column is registered in order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from spo_core.offline import OfflineReport, read_offline_jsonl
from spo_core.rho import forgetting_factor
from spo_core.sampler import PromptSampler
from spo_core.tracker import ValueTracker
from spo_core.verl.settings import SPOSettings

TRACKER_FILE: Final = "spo_tracker.npz"
SAMPLER_FILE: Final = "spo_sampler.json"


class PromptStateError(ValueError):
    """The training set or a checkpoint does not fit the SPO state."""


@dataclass(frozen=True)
class TrackerUpdate:
    """One step's tracker figures (logged under ``spo/``)."""

    baseline_mean: float
    value_mean: float
    n_eff_mean: float
    rho_mean: float


class PromptState:
    """Tracker and sampler over one training set (SPO_SPEC §3, §5, §6)."""

    def __init__(self, keys: Sequence[str], settings: SPOSettings) -> None:
        repeated = [key for key, n in Counter(keys).items() if n > 1]
        if repeated:
            raise PromptStateError(
                f"the training set repeats {len(repeated)} prompt key(s), e.g. {repeated[0]!r}: "
                "each prompt needs its own key for the tracker"
            )
        self.settings = settings
        self.keys = list(keys)
        self.tracker = ValueTracker(keys, settings.tracker)
        self.sampler = PromptSampler(settings.sampler, seed=settings.seed)
        self.offline: OfflineReport | None = None
        if settings.offline_values is not None:
            scores = read_offline_jsonl(settings.offline_values, settings.offline)
            self.offline = self.tracker.init_offline(scores, settings.offline)

    def __len__(self) -> int:
        return len(self.tracker)

    def draw(self, n: int, in_flight: Iterable[str]) -> npt.NDArray[np.int64]:
        """``n`` dataset positions by priority, never a prompt that is still in flight."""
        busy = list(in_flight)
        exclude = self.tracker.rows(busy) if busy else None
        return self.sampler.sample(self.tracker, n, exclude=exclude)

    def baselines(self, keys: Sequence[str]) -> npt.NDArray[np.float64]:
        """v̂₋₁(x) of each prompt, before this step's update."""
        return self.tracker.baseline(keys)

    def update(self, keys: Sequence[str], rewards: npt.ArrayLike) -> TrackerUpdate:
        """Fold the trained batch's rewards into the tracker (§2 step 6)."""
        before = self.tracker.baseline(keys)
        rho = forgetting_factor(len(keys), self.settings.rho)
        self.tracker.update(keys, rewards, rho)
        rows = self.tracker.rows(keys)
        return TrackerUpdate(
            baseline_mean=float(before.mean()) if len(keys) else 0.0,
            value_mean=float(self.tracker.value_at(rows).mean()) if len(keys) else 0.0,
            n_eff_mean=float(self.tracker.n_eff_at(rows).mean()) if len(keys) else 0.0,
            rho_mean=float(rho.mean()) if len(keys) else 0.0,
        )

    def save(self, folder: str | Path) -> None:
        """Write tracker and sampler into a checkpoint folder (each file atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tracker.save(folder / TRACKER_FILE)
        tmp = folder / f".{SAMPLER_FILE}.tmp"
        tmp.write_text(json.dumps(self.sampler.state_dict()))
        tmp.replace(folder / SAMPLER_FILE)

    def load(self, folder: str | Path) -> None:
        """Restore what :meth:`save` wrote; the checkpoint must be of this training set."""
        folder = Path(folder)
        if not (folder / TRACKER_FILE).is_file():
            raise PromptStateError(
                f"{folder} has no {TRACKER_FILE}: not a checkpoint of an SPO run"
            )
        stored = ValueTracker.load(folder / TRACKER_FILE)
        # Rows are dataset positions, so the stored rows must be this training set's, in order.
        same = len(stored) == len(self.keys) and bool(stored.contains(self.keys).all())
        if not same or not np.array_equal(stored.rows(self.keys), np.arange(len(self.keys))):
            raise PromptStateError(
                f"{folder / TRACKER_FILE} tracks {len(stored)} prompts that are not this "
                f"training set's {len(self.keys)}, in its order"
            )
        self.tracker.load_state_dict(stored.state_dict())
        self.sampler.load_state_dict(json.loads((folder / SAMPLER_FILE).read_text()))
