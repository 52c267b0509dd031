"""Learner checkpoints: written atomically, read back with a one-line error when they cannot be.

A checkpoint is a directory ``step_00000012/`` holding ``learner.pt`` (model, optimizer, step,
policy version, episodes, the sampler/source state, the §4 response store, the engine's
admission counters and a fingerprint of the run) and ``tracker.npz`` (the value tracker, exact).
It is written into a hidden temporary directory and renamed into place, so a crash leaves either
the whole checkpoint or none.

When: between steps, after the weight push, while the learner is idle — model, optimizer,
tracker and store are then one consistent state. Episodes may still be running; they are not
saved: the prompts they hold are recorded as in flight, and a resumed run hands them out again
before drawing new ones, so none is lost and none is ever in flight twice. ``learner.pt`` is read with ``torch.load(weights_only=True)``:
plain tensors, numbers and strings only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from spo_core.tracker import ValueTracker

FORMAT = 1
_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or was written by a different run (one line)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike[str], step: int, state: dict[str, Any], tracker: ValueTracker
) -> Path:
    """Write ``state`` and ``tracker`` as checkpoint ``step`` under ``directory``; its path.

    An existing checkpoint of the same step is replaced.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with open(tmp / "learner.pt", "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        tracker.save(tmp / "tracker.npz")
        (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "step": step}) + "\n")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a checkpoint, else its latest ``step_*`` checkpoint.

    Raises:
        CheckpointError: there is none.
    """
    p = Path(path)
    if (p / "learner.pt").is_file():
        return p
    steps = sorted(q for q in p.glob(f"{_PREFIX}*") if (q / "learner.pt").is_file())
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: the path does not exist")
    if not steps:
        raise CheckpointError(f"no checkpoint in {p} (expected learner.pt or step_* folders)")
    return steps[-1]


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], ValueTracker]:
    """Read the checkpoint at ``path`` (or the latest under it): its state and tracker.

    Raises:
        CheckpointError: missing, unreadable, or of another format version.
    """
    where = find_checkpoint(path)
    try:
        with open(where / "learner.pt", "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
        tracker = ValueTracker.load(where / "tracker.npz")
    except Exception as exc:  # any decoding failure is the same verdict: unreadable
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"unreadable checkpoint {where}: {type(exc).__name__}: {detail}"[:300]
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise CheckpointError(f"checkpoint {where} has format {found!r}, expected {FORMAT}")
    state["path"] = str(where)
    return state, tracker
