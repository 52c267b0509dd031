"""Sandbox configuration: one validated, frozen model of every limit and knob."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_IMAGE = "spo-gym-sandbox:latest"


class SandboxConfig(BaseModel):
    """Limits and pool behaviour of the Docker sandbox.

    Every container gets: no network, a read-only root, a sized ``/tmp`` tmpfs, a
    non-root user, all capabilities dropped, ``no-new-privileges``, pids / memory (=
    memory+swap) / cpu / nofile / fsize limits and the supervisor as its init (PID 1, not
    dumpable). The start-up self-test proves each of them. By default a container serves
    one episode after another, each after a scrub that proves it clean
    (:mod:`sandbox.scrub`); ``reuse=False`` gives every episode a fresh container.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    image: str = Field(
        DEFAULT_IMAGE, description="image tag; 'latest' resolves to the built recipe"
    )
    docker_url: str | None = Field(None, description="Docker Engine URL; None = environment")
    user: str = "1000:1000"
    memory_mb: int = Field(1024, ge=64)
    cpus: float = Field(1.0, gt=0)
    pids_limit: int = Field(128, ge=16)
    tmpfs_mb: int = Field(256, ge=8)
    nofile: int = Field(1024, ge=64)
    fsize_mb: int = Field(128, ge=1)
    default_timeout_s: float = Field(30.0, gt=0)
    grace_s: float = Field(0.5, ge=0.05, description="SIGINT → SIGKILL grace on timeout")
    output_keep_bytes: int = Field(8192, ge=256, description="head and tail kept per stream")
    output_hard_cap_bytes: int = Field(
        8 << 20, ge=4096, description="streamed bytes before the cell is stopped"
    )
    echo_last_expr: bool = Field(
        False, description="print repr of a trailing expression, REPL-style"
    )
    stateless: bool = Field(False, description="fresh kernel for every run() call")
    warm: int = Field(2, ge=0, description="containers kept started and ready")
    max_containers: int = Field(64, ge=1, description="containers alive at once (warm + in use)")
    max_concurrent_ops: int = Field(4, ge=1, description="container create/remove calls at once")
    acquire_timeout_s: float = Field(60.0, gt=0)
    start_timeout_s: float = Field(30.0, gt=0, description="container start until supervisor hello")
    host_slack_s: float = Field(10.0, gt=0, description="host backstop beyond timeout + grace")
    reuse: bool = Field(
        True, description="serve a container to the next episode after a verified scrub"
    )
    verify_scrub: bool = Field(
        True,
        description="prove each scrub clean before reuse; False is unsafe (a container a "
        "scrub failed to clean is served again), an upper bound for benchmarks only",
    )
    self_test: bool = True
    breaker_threshold: int = Field(
        5, ge=1, description="consecutive daemon errors that open the breaker"
    )
    breaker_cooldown_s: float = Field(5.0, gt=0)
    reap_interval_s: float = Field(
        30.0, gt=0, description="how often dead pools' containers are removed"
    )
