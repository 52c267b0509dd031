"""Playing an eval's samples on a Ray cluster: one eval actor per node, each with its own worker.

Each actor (:class:`EvalActor`) builds a worker from the job's
:class:`~evals.worker.WorkerSpec` — its own policy client and sandbox pool — on its first call
and keeps it until it is closed. The driver hands out work a problem at a time (all of that
problem's missing samples in one call) and keeps several calls in flight on each actor, as many
as fit its ``concurrency``; as each call returns, its samples and losses go to the callbacks in
the driver's event loop — so a killed job loses only the problems in flight, and since every
sample is seeded by (problem, sample index), the output is the same as a local run's.

An actor that dies (its process or node lost) is restarted by Ray and its calls replayed; a
call that raises aborts the job with that exception, as it would locally. Whichever way the
job ends, every actor is closed (its sandbox pool removes its containers) and then killed.

Ray is optional: it is imported when a job asks for it, and a missing Ray or an unreachable
cluster is a :class:`RayUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any, TypedDict

from evals.runner import WorkItem
from evals.sample import EvalSample, Lost
from evals.worker import Worker, WorkerSpec, open_worker

__all__ = ["ACTOR_CPUS", "EvalActor", "Played", "RayUnavailable", "run_on_ray"]

ACTOR_CPUS = 0.25
"""Logical CPUs an eval actor reserves: its episodes mostly wait on the model and the sandbox,
so a small share lets several actors, and other work, fit on a 2-core node."""

_RESTARTS = 2  # restarts of a dead actor (and replays of its calls) before the job gives up
_CONNECT_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 60.0


class RayUnavailable(RuntimeError):
    """Ray is not installed, the cluster cannot be reached, or it cannot host the eval actors."""


class Played(TypedDict):
    """What one actor call returns: the ``to_dict`` records of its samples and losses."""

    samples: list[dict[str, Any]]
    lost: list[dict[str, Any]]


class EvalActor:
    """A Ray actor's body: one worker, built on the first call and kept until :meth:`close`.

    Args:
        spec: the worker to build.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self._spec = spec
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._worker: Worker | None = None
        self._closed = False

    async def play(self, items: list[WorkItem]) -> Played:
        """Play ``items`` on this actor's worker (see :meth:`evals.worker.Worker.run`).

        Raises:
            what building the worker or playing raises.
        """
        worker = await self._open()
        played = Played(samples=[], lost=[])
        await worker.run(
            items,
            lambda sample: played["samples"].append(sample.to_dict()),
            lambda loss: played["lost"].append(loss.to_dict()),
        )
        return played

    async def close(self) -> None:
        """Close the worker (its sandbox pool removes its containers); later calls fail."""
        async with self._lock:
            self._closed = True
            stack, self._stack, self._worker = self._stack, None, None
            if stack is not None:
                await stack.aclose()

    async def _open(self) -> Worker:
        async with self._lock:
            if self._closed:
                raise RuntimeError("the eval actor is closed")
            if self._worker is None:
                stack = AsyncExitStack()
                self._worker = await stack.enter_async_context(open_worker(self._spec))
                self._stack = stack
            return self._worker


async def run_on_ray(
    items: Sequence[WorkItem],
    spec: WorkerSpec,
    *,
    address: str,
    workers: int | None = None,
    on_sample: Callable[[EvalSample], None],
    on_lost: Callable[[Lost], None],
) -> None:
    """Play every item on a Ray cluster; report each as a finished sample or as lost.

    Args:
        items: the samples to play.
        spec: the worker each actor builds (its ``concurrency`` is per actor).
        address: ``"auto"`` (the cluster running on this machine), ``"ray://host:port"`` (a
            Ray client server), ``"host:port"`` (a cluster's GCS), or ``"local"`` (start a new
            cluster here, stopped at the end). A process already connected to Ray uses that
            connection, whatever the address.
        workers: eval actors (default: one per node with a CPU to spare).
        on_sample / on_lost: called in the event loop's thread as each problem's call
            returns.

    Raises:
        RayUnavailable: Ray is not installed, the cluster cannot be reached, cannot host
            ``workers`` actors, or an actor died past its restarts.
        ValueError: ``workers`` < 1, or an address of none of those forms.
        what an actor's call raises (building the policy, starting the sandbox pool, …).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not items:
        return
    ray = _import_ray()
    connected_here = await asyncio.to_thread(_connect, ray, address)
    try:
        strategies = _placements(ray, workers)
        await _Dispatch(ray, spec, strategies, on_sample, on_lost).run(_by_problem(items))
    finally:
        if connected_here:
            await asyncio.to_thread(ray.shutdown)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(f"Ray is not installed (pip install 'ray>=2.40'): {exc}") from None
    return ray


def _connect(ray: Any, address: str) -> bool:
    """Connect this process to Ray unless it already is; whether this call connected it."""
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, **quiet}
    else:
        if address != "auto":
            _check_reachable(address)
        kwargs = {"address": address, **quiet}
    try:
        with warnings.catch_warnings():  # the error below says it in one line
            warnings.simplefilter("ignore")
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise RayUnavailable(f"cannot connect to Ray at {address!r}: {_one_line(exc)}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast on a closed port: Ray itself retries an unreachable address for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"a Ray address reads 'auto', 'local', 'ray://host:port' or 'host:port', "
            f"got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), _CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc}") from None


def _placements(ray: Any, workers: int | None) -> list[Any]:
    """A scheduling strategy per actor: one per able node by default, else spread."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [
        n
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources", {}).get("CPU", 0.0) >= ACTOR_CPUS
    ]
    if not nodes:
        raise RayUnavailable(
            f"no live node of the Ray cluster has {ACTOR_CPUS} CPU for an eval actor"
        )
    if workers is None:
        return [NodeAffinitySchedulingStrategy(n["NodeID"], soft=True) for n in nodes]
    room = sum(int(n["Resources"]["CPU"] / ACTOR_CPUS) for n in nodes)
    if workers > room:
        raise RayUnavailable(
            f"the Ray cluster has room for {room} eval actors ({ACTOR_CPUS} CPU each), "
            f"{workers} asked for"
        )
    return ["SPREAD"] * workers


def _by_problem(items: Sequence[WorkItem]) -> list[list[WorkItem]]:
    """The items grouped by problem, problems in order of first appearance."""
    groups: dict[str, list[WorkItem]] = {}
    for item in items:
        groups.setdefault(item.task.key, []).append(item)
    return list(groups.values())


@dataclass
class _Call:
    actor: int
    group: list[WorkItem]
    ref: Any


class _Dispatch:
    """The driver's side: actors, the problems still to hand out, and the calls in flight.

    An actor takes another problem while the samples it has in flight, each call counted as
    at most ``concurrency``, leave room for it (an idle actor always takes one).
    """

    def __init__(
        self,
        ray: Any,
        spec: WorkerSpec,
        strategies: list[Any],
        on_sample: Callable[[EvalSample], None],
        on_lost: Callable[[Lost], None],
    ) -> None:
        self._ray = ray
        self._spec = spec
        self._strategies = strategies
        self._on_sample = on_sample
        self._on_lost = on_lost
        self._actors: list[Any] = []
        self._load: list[int] = []
        self._calls: dict[asyncio.Future[Played], _Call] = {}

    async def run(self, groups: list[list[WorkItem]]) -> None:
        """Play every group; close and kill the actors however it ends."""
        actor_class = self._ray.remote(EvalActor)
        try:
            for strategy in self._strategies:
                self._actors.append(
                    actor_class.options(
                        num_cpus=ACTOR_CPUS,
                        max_restarts=_RESTARTS,
                        max_task_retries=_RESTARTS,
                        scheduling_strategy=strategy,
                    ).remote(self._spec)
                )
                self._load.append(0)
            pending = list(reversed(groups))
            while pending or self._calls:
                while pending and self._hand_out(pending[-1]):
                    pending.pop()
                finished, _ = await asyncio.wait(self._calls, return_when=asyncio.FIRST_COMPLETED)
                failure: Exception | None = None
                for future in finished:  # keep every finished problem, even past a failure
                    try:
                        self._settle(future)
                    except Exception as exc:
                        failure = failure or exc
                if failure is not None:
                    raise failure
        finally:
            await self._release()

    def _weight(self, group: list[WorkItem]) -> int:
        return min(len(group), self._spec.concurrency)

    def _hand_out(self, group: list[WorkItem]) -> bool:
        """Start ``group`` on the least loaded actor if it has room; whether it did."""
        actor = min(range(len(self._actors)), key=lambda a: self._load[a])
        weight = self._weight(group)
        if self._load[actor] and self._load[actor] + weight > self._spec.concurrency:
            return False
        ref = self._actors[actor].play.remote(group)
        self._calls[asyncio.wrap_future(ref.future())] = _Call(actor, group, ref)
        self._load[actor] += weight
        return True

    def _settle(self, future: asyncio.Future[Played]) -> None:
        call = self._calls.pop(future)
        self._load[call.actor] -= self._weight(call.group)
        try:
            played = future.result()
        except self._ray.exceptions.RayActorError as exc:
            raise RayUnavailable(f"an eval actor was lost: {_one_line(exc)}") from None
        except self._ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, Exception):  # as a local run would raise it
                raise cause.with_traceback(None) from exc
            raise
        for record in played["samples"]:
            self._on_sample(EvalSample.from_dict(record))
        for record in played["lost"]:
            self._on_lost(Lost.from_dict(record))

    async def _release(self) -> None:
        """Cancel the calls in flight, close every actor (bounded wait), then kill them."""
        try:
            for call in self._calls.values():
                self._ray.cancel(call.ref)
            closing = [asyncio.wrap_future(a.close.remote().future()) for a in self._actors]
            settle = asyncio.gather(*closing, *self._calls, return_exceptions=True)
            # an actor that does not close in time is killed: the sandbox reaper then removes
            # its containers
            with suppress(TimeoutError):
                await asyncio.wait_for(settle, _CLOSE_TIMEOUT_S)
        finally:
            for actor in self._actors:
                self._ray.kill(actor)
            self._actors.clear()
            self._calls.clear()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__
