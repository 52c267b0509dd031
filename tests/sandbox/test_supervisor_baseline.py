"""The supervisor's socket baseline is not taken while a unix socket is half-made.

A unix socket caught while being set up is listed in ``/proc/net/unix`` with inode 0 and gets
its real inode a moment later; a baseline holding the 0 does not know that inode, and every
later scrub of the container is rejected for "sockets" (seen on a loaded host). The
supervisor's module is plain Python, loaded here from its file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SUPERVISOR = Path(__file__).resolve().parents[2] / "sandbox" / "image" / "supervisor.py"


@pytest.fixture
def supervisor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("spo_supervisor_under_test", SUPERVISOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_baseline_waits_for_half_made_sockets(
    supervisor: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    readings = iter(
        [
            {"unix": ["0", "1001"], "sockstat": []},
            {"unix": ["0", "1001"], "sockstat": []},
            {"unix": ["1001", "1002"], "sockstat": []},
        ]
    )
    calls: list[dict[str, Any]] = []

    def fake() -> dict[str, Any]:
        calls.append(next(readings))
        return calls[-1]

    monkeypatch.setattr(supervisor, "_sockets", fake)
    assert supervisor._named_sockets() == {"unix": ["1001", "1002"], "sockstat": []}
    assert len(calls) == 3


def test_the_baseline_wait_is_bounded(
    supervisor: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "SOCKET_SETTLE_S", 0.05)
    monkeypatch.setattr(supervisor, "_sockets", lambda: {"unix": ["0"], "sockstat": []})
    assert supervisor._named_sockets() == {"unix": ["0"], "sockstat": []}
