"""Fixtures for the Docker sandbox tests: one shared pool, docker client helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import docker
import pytest
import pytest_asyncio

from sandbox import SandboxConfig, SandboxPool
from sandbox.reaper import LABEL_POOL


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """A client of the daemon the suite runs against; fails loudly if there is none."""
    client = docker.from_env()
    client.ping()
    return client


@pytest_asyncio.fixture(scope="session")
async def pool() -> AsyncIterator[SandboxPool]:
    """The shared pool: self-tested once, a few warm containers."""
    async with SandboxPool(SandboxConfig(warm=2, memory_mb=512, default_timeout_s=10)) as p:
        yield p


def pool_containers(client: docker.DockerClient, pool_id: str) -> list[str]:
    """Ids of the containers labelled with ``pool_id`` (any state)."""
    return [
        c["Id"]
        for c in client.api.containers(all=True, filters={"label": f"{LABEL_POOL}={pool_id}"})
    ]
