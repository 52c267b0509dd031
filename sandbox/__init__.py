"""The Docker code sandbox: hardened containers, a persistent kernel per episode, typed results.

Public API::

    from sandbox import SandboxPool, SandboxConfig, RunResult, RunStatus

    async with SandboxPool(SandboxConfig(warm=4)) as pool:
        async with pool.session("episode-7") as s:
            result = await s.run("print(6 * 7)", timeout=10)
"""

from sandbox.config import SandboxConfig
from sandbox.pool import PoolStats, SandboxPool
from sandbox.results import (
    ImageBuildError,
    RunResult,
    RunStatus,
    SandboxError,
    SandboxProtocolError,
    SandboxSelfTestFailed,
    SandboxUnavailable,
)
from sandbox.session import SandboxSession

__all__ = [
    "ImageBuildError",
    "PoolStats",
    "RunResult",
    "RunStatus",
    "SandboxConfig",
    "SandboxError",
    "SandboxPool",
    "SandboxProtocolError",
    "SandboxSelfTestFailed",
    "SandboxSession",
    "SandboxUnavailable",
]
