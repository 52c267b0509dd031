"""Which containers on a shared Docker daemon belong to no live pool, and removing them.

Several pools (tests, eval jobs, trainer workers; on one machine, or in several
containers or hosts sharing one daemon) keep their sandboxes on the same daemon. Each
container carries its pool's id and its owner process in labels. A reaper removes a
container only when it can tell that nobody will use it again:

* its owner is a process the reaper can see (same boot, same pid namespace) and that
  process no longer runs (its pid is gone or now belongs to a process started later);
* or the container has exited: its supervisor ends when its owner's connection closes,
  so an exited sandbox serves nobody, whoever owns it.

A running container whose owner cannot be seen from here (another host, another pid
namespace) is left alone: its owner's liveness cannot be judged from here.
"""

from __future__ import annotations

import os
import shutil
import socket
from functools import cache
from pathlib import Path

import docker
import psutil

from sandbox.box import remove_container

LABEL_POOL = "spo-gym.pool"
LABEL_OWNER = "spo-gym.owner"  # host:pid:start time of the owning process
LABEL_OWNER_NS = "spo-gym.owner-ns"  # the boot and pid namespace that pid belongs to
LABEL_DIR = "spo-gym.pool-dir"


@cache
def pid_namespace() -> str:
    """This process's boot id and pid namespace: where a pid in an owner label is meaningful."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"{boot}/{os.readlink('/proc/self/ns/pid')}"


def owner_labels(pool_id: str, pool_dir: Path) -> dict[str, str]:
    """The labels that tie a container to its pool and to this (owning) process."""
    me = psutil.Process()
    return {
        LABEL_POOL: pool_id,
        LABEL_OWNER: f"{socket.gethostname()}:{me.pid}:{me.create_time():.2f}",
        LABEL_OWNER_NS: pid_namespace(),
        LABEL_DIR: str(pool_dir),
    }


def owner_alive(labels: dict[str, str]) -> bool | None:
    """Whether the owning process still runs; None when it cannot be judged from here."""
    if labels.get(LABEL_OWNER_NS) != pid_namespace():
        return None
    _, _, rest = labels.get(LABEL_OWNER, "").partition(":")
    pid_text, _, start_text = rest.partition(":")
    try:
        proc = psutil.Process(int(pid_text))
        return abs(proc.create_time() - float(start_text)) < 0.05
    except (psutil.NoSuchProcess, ValueError):
        return False


def reap(client: docker.DockerClient, own_pool: str) -> int:
    """Removes the containers no live pool will use again; returns how many (blocking).

    ``own_pool``'s containers are removed only once exited: the caller is alive.
    """
    removed = 0
    for c in client.api.containers(all=True, filters={"label": LABEL_POOL}):
        labels = c.get("Labels") or {}
        exited = c.get("State") in ("exited", "dead")
        owner_dead = labels.get(LABEL_POOL) != own_pool and owner_alive(labels) is False
        if exited or owner_dead:
            remove_container(client, c["Id"])
            removed += 1
        if owner_dead and labels.get(LABEL_DIR):
            shutil.rmtree(labels[LABEL_DIR], ignore_errors=True)  # on this machine: same boot
    return removed


def remove_by_label(client: docker.DockerClient, labels: dict[str, str]) -> None:
    """Removes every container carrying all of ``labels`` (blocking)."""
    filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
    for c in client.api.containers(all=True, filters=filters):
        remove_container(client, c["Id"])
