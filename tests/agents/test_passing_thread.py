"""Work off the event loop in a thread that ends with it, torch's thread team included."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from agents.hf_policy import HFPolicy
from agents.passing_thread import in_passing_thread
from agents.policy import SamplingParams


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def parallel_sum() -> float:
    # Large enough for torch to run it on its thread team.
    return float(torch.ones(1 << 24).sum())


async def settled_threads(expected: int, timeout_s: float = 5.0) -> int:
    deadline = time.monotonic() + timeout_s
    while os_threads() != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return os_threads()


async def test_returns_the_result_from_another_thread() -> None:
    caller = threading.get_ident()
    result = await in_passing_thread(lambda a, b: (a + b, threading.get_ident()), 2, 3)
    assert result[0] == 5
    assert result[1] != caller


async def test_raises_what_the_work_raises() -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await in_passing_thread(fail)


async def test_no_thread_outlives_the_work(two_torch_threads: None) -> None:
    before = os_threads()
    assert await in_passing_thread(parallel_sum) == 1 << 24
    assert await settled_threads(before) == before


async def test_an_idle_policy_holds_no_thread(smollm2_dir: Path, two_torch_threads: None) -> None:
    policy = HFPolicy.from_pretrained(smollm2_dir, num_threads=2)
    try:
        before = os_threads()
        out = await policy.generate([1, 2, 3, 4], SamplingParams(max_tokens=4, temperature=0))
        assert len(out.token_ids) >= 1
        assert await settled_threads(before) == before
    finally:
        await policy.aclose()
