"""Per-request sampling seeds derived from what a sample *is*, not from when it was scheduled.

A run seed alone would repeat one random stream on every turn of every episode; a scheduling
counter would change with concurrency and break resumption. Each generation request's seed is
instead a hash of (run seed, prompt key, sample index of that prompt, request index within the
episode): reproducible, distinct for every sample and turn, and the same after a resume that
restores the sample counts.
"""

from __future__ import annotations

import hashlib
import json

SEED_BITS = 63
"""Seeds fit a signed 64-bit integer (vLLM's request ``seed`` field and torch generators)."""


def turn_seed(run_seed: int, prompt_key: str, sample_index: int, turn: int) -> int:
    """The sampling seed of one generation request.

    Args:
        run_seed: the run's seed.
        prompt_key: the task's canonical key.
        sample_index: which sample of that prompt this episode is (0, 1, ... in this run).
        turn: the request's index within the episode (0 for the first generate call; a turn
            continued over several calls uses one index per call).

    Returns:
        An integer in ``[0, 2**63)``.
    """
    payload = json.dumps([int(run_seed), prompt_key, int(sample_index), int(turn)]).encode()
    digest = hashlib.blake2b(payload, digest_size=8, person=b"spo-gym-seed").digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)
