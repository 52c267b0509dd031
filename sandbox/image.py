"""Builds the sandbox image, online or offline, cached by a content hash of its recipe.

Two routes to the same image:

* **registry**: ``docker build`` of ``image/Dockerfile`` on ``debian:bookworm-slim``.
* **offline** (no registry reachable): ``debootstrap`` a minimal Debian rootfs with
  python3, numpy and sympy from Debian's own packages, ``docker import`` it as the base,
  then the same ``docker build`` on top of it (a local base needs no registry).

The tag is ``spo-gym-sandbox:<hash>`` where the hash covers the Dockerfile, the
supervisor, the package list and the build route's parameters, so any change to the
recipe yields a new tag and a rebuild; an unchanged recipe is never rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, ImageNotFound

from sandbox.results import ImageBuildError

RECIPE_DIR = Path(__file__).parent / "image"
REPOSITORY = "spo-gym-sandbox"
BASE_REPOSITORY = "spo-gym-sandbox-base"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-numpy", "python3-sympy")
REGISTRY_BASE = "debian:bookworm-slim"
# Paths removed from the offline rootfs: caches and docs the sandbox never needs.
PRUNE = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
)

Log = Callable[[str], None]


def cache_root() -> Path:
    """The spo-gym cache root: ``$SPO_GYM_CACHE``, else ``$XDG_CACHE_HOME/spo-gym``, else
    ``~/.cache/spo-gym`` (shared by every package's caches)."""
    override = os.environ.get("SPO_GYM_CACHE")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "spo-gym"


def cache_dir() -> Path:
    """Where built artefacts (the offline rootfs tarball) are cached."""
    path = cache_root() / "sandbox"
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_hash() -> str:
    """Content hash of the offline base: suite and packages."""
    return hashlib.sha256(f"{SUITE}|{','.join(PACKAGES)}|{','.join(PRUNE)}".encode()).hexdigest()[
        :12
    ]


def recipe_hash() -> str:
    """Content hash of the whole recipe; it names the image tag."""
    digest = hashlib.sha256(base_hash().encode())
    for name in sorted(p.name for p in RECIPE_DIR.iterdir() if p.is_file()):
        digest.update(name.encode())
        digest.update((RECIPE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def image_tag() -> str:
    """The tag of the image the current recipe builds."""
    return f"{REPOSITORY}:{recipe_hash()}"


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    """True when the daemon already has ``tag``."""
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def registry_reachable(host: str = "registry-1.docker.io", timeout: float = 3.0) -> bool:
    """A quick TCP probe: machines without a registry get the offline build."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_image(
    client: docker.DockerClient | None = None,
    *,
    force: bool = False,
    offline: bool | None = None,
    log: Log = print,
) -> str:
    """Returns the tag of the current recipe's image, building it first if missing.

    Args:
        client: Docker client; defaults to ``docker.from_env()``.
        force: rebuild even when the tag exists.
        offline: force the route; ``None`` picks offline when no registry answers
            and the registry base image is not already present.
        log: receives one line per build step (the CLI shows them live).
    """
    client = client or docker.from_env()
    tag = image_tag()
    if not force and image_exists(client, tag):
        log(f"sandbox image {tag} is up to date")
        return tag
    if offline is None:
        offline = not image_exists(client, REGISTRY_BASE) and not registry_reachable()
    base = _ensure_offline_base(client, log, force) if offline else REGISTRY_BASE
    log(f"building {tag} on {base}")
    try:
        for chunk in client.api.build(
            path=str(RECIPE_DIR),
            tag=tag,
            buildargs={"BASE": base},
            rm=True,
            forcerm=True,
            decode=True,
            pull=False,
            labels={"spo-gym.recipe": recipe_hash()},
        ):
            if "error" in chunk:
                raise ImageBuildError(f"docker build failed: {chunk['error'].strip()}")
            line = chunk.get("stream", "").rstrip()
            if line:
                log(line)
    except (APIError, BuildError) as exc:
        raise ImageBuildError(f"docker build of {tag} failed: {exc}") from exc
    client.images.get(tag).tag(REPOSITORY, "latest")
    log(f"built {tag} (also tagged {REPOSITORY}:latest)")
    return tag


def _ensure_offline_base(client: docker.DockerClient, log: Log, force: bool) -> str:
    tag = f"{BASE_REPOSITORY}:{base_hash()}"
    if not force and image_exists(client, tag):
        log(f"offline base {tag} present")
        return tag
    tarball = cache_dir() / f"rootfs-{base_hash()}.tar"
    if force or not tarball.exists():
        _debootstrap_tarball(tarball, log)
    log(f"importing {tarball.name} as {tag}")
    client.api.import_image_from_file(str(tarball), repository=BASE_REPOSITORY, tag=base_hash())
    return tag


def _apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (fallback: deb.debian.org)."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(
        Path("/etc/apt/sources.list.d").glob("*")
    ):
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split()
            if line.startswith("URIs:") and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and "security" not in line:
                urls = [w for w in words if w.startswith(("http://", "https://"))]
                if urls:
                    return urls[0]
    return "http://deb.debian.org/debian"


def _debootstrap_tarball(tarball: Path, log: Log) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "no registry is reachable and debootstrap is missing: apt-get install -y debootstrap"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("the offline image build runs debootstrap, which needs root")
    with tempfile.TemporaryDirectory(prefix="spo-gym-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(root),
            _apt_mirror(),
        ]
        log("$ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log(line.rstrip())
        if proc.wait() != 0:
            raise ImageBuildError(f"debootstrap exited with {proc.returncode}")
        for rel in PRUNE:
            shutil.rmtree(root / rel, ignore_errors=True)
            (root / rel).mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        log(f"packing rootfs into {tarball}")
        with tarfile.open(partial, "w") as tar:
            tar.add(root, arcname=".")
        partial.replace(tarball)  # a killed build never leaves a half tarball under the real name


def image_digest(tag: str, docker_url: str | None = None) -> str | None:
    """The id (content digest) of image ``tag`` on the daemon; ``None`` if the daemon is
    unreachable or does not have it."""
    try:
        client = docker.DockerClient(base_url=docker_url) if docker_url else docker.from_env()
        try:
            return str(client.images.get(tag).id)
        finally:
            client.close()
    except docker.errors.DockerException:
        return None
