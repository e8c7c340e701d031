"""The replace-a-dead-actor pool every worker pool of paperline runs on.

A worker pool (Blender renderers, router profilers, NPU simulators) hands named jobs to
long-lived Ray actors. Actors die — a crash, an OOM kill, ``kill -9``, their node removed —
and Ray's in-place restart would put the new process on the same (possibly gone) node, so
:func:`run_pool` does it the cluster's way: a dead actor is killed for good and a fresh one is
started wherever the cluster has room, and the job it held goes back to the front of the queue.
A slot whose replacement waits for resources does not hold up the others; a job that kills its
actor ``max_attempts`` times fails the pool (it is the job, not the worker); every actor is
killed when the pool ends, however it ends.

Jobs must be idempotent on the worker side (write their output atomically, skip one already
written): a job whose actor died after it wrote its output may be submitted again.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayActorError, WorkerCrashedError

log = logging.getLogger(__name__)

#: what a lost worker looks like from the driver: its process or its node went away
WORKER_ERRORS: tuple[type[BaseException], ...] = (
    RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError, NodeDiedError,
)


@dataclass
class SlotStats:
    """One place in the pool, across the actors that held it."""

    slot: int
    jobs: list[str] = field(default_factory=list)
    busy_seconds: float = 0.0  # submit → result, as the driver saw it
    actors: int = 1  # 1 + how many times its actor was replaced


@dataclass
class PoolResult:
    results: dict[str, Any]  # job name → what its submit returned, in completion order
    replaced: int  # actors replaced after dying
    failures: list[str]  # "job: ErrorType" per lost attempt
    wall_seconds: float
    per_slot: list[SlotStats]
    slot_of: dict[str, int] = field(default_factory=dict)  # job name → the slot that finished it


class PoolError(RuntimeError):
    """A job kept killing its workers, or no worker of a slot could start."""


def run_pool(
    start_actor: Callable[[], ActorHandle],
    jobs: dict[str, Any],
    submit: Callable[[ActorHandle, str, Any], ray.ObjectRef],
    *,
    size: int,
    on_done: Callable[[str, Any], None] | None = None,
    max_attempts: int = 3,
) -> PoolResult:
    """Run every job of ``jobs`` on at most ``size`` actors made by ``start_actor``.

    ``submit(actor, name, job)`` starts one job on an actor and returns its ``ObjectRef``.
    ``on_done(name, value)`` is called in the driver after each finished job (progress; tests
    use it to kill a worker mid-run). An application error raised by a job (anything but a lost
    worker) ends the pool and is re-raised as Ray raises it (an instance of the job's own
    exception type too, so a ``ValueError`` stays a ``ValueError``).
    """
    t0 = time.perf_counter()
    queue = list(jobs)
    n = max(1, min(size, len(queue))) if queue else 0
    actors: list[ActorHandle] = []
    starting: dict[ray.ObjectRef, int] = {}  # readiness probe → slot
    start_failures = [0] * n  # consecutive failed starts per slot
    running: dict[ray.ObjectRef, tuple[str, int, float]] = {}  # job ref → (job, slot, submitted at)
    idle: list[int] = []
    attempts: dict[str, int] = {}
    stats = [SlotStats(i) for i in range(n)]
    result = PoolResult({}, 0, [], 0.0, stats)

    def start(slot: int) -> None:
        actor = start_actor()
        if slot < len(actors):
            actors[slot] = actor
        else:
            actors.append(actor)
        # A slot takes work once its actor answers; until then (it may be waiting for room on
        # the cluster) the other slots carry on.
        starting[actor.__ray_ready__.remote()] = slot

    def replace(slot: int) -> None:
        ray.kill(actors[slot], no_restart=True)
        start(slot)
        result.replaced += 1
        stats[slot].actors += 1

    try:
        for slot in range(n):
            start(slot)
        while queue or running:
            while queue and idle:
                slot = idle.pop()
                name = queue.pop(0)
                attempts[name] = attempts.get(name, 0) + 1
                if attempts[name] > max_attempts:
                    raise PoolError(f"job {name} lost its worker {max_attempts} times; "
                                    f"last: {result.failures[-1] if result.failures else '?'}")
                running[submit(actors[slot], name, jobs[name])] = (name, slot, time.perf_counter())
            (ref,), _ = ray.wait(list(running) + list(starting), num_returns=1)
            if ref in starting:
                slot = starting.pop(ref)
                try:
                    ray.get(ref)
                except WORKER_ERRORS as e:
                    start_failures[slot] += 1
                    if start_failures[slot] >= max_attempts:
                        raise PoolError(f"pool slot {slot}: a worker failed to start {max_attempts} times: "
                                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
                    replace(slot)
                    continue
                start_failures[slot] = 0
                idle.append(slot)
                continue
            name, slot, submitted = running.pop(ref)
            try:
                value = ray.get(ref)
            except WORKER_ERRORS as e:  # its process or node died: a new actor, the job back in line
                result.failures.append(f"{name}: {type(e).__name__}")
                log.warning("pool: worker of slot %d lost while running %s (%s); replacing it", slot, name,
                            type(e).__name__)
                queue.insert(0, name)
                replace(slot)
                continue
            result.results[name] = value
            result.slot_of[name] = slot
            stats[slot].jobs.append(name)
            stats[slot].busy_seconds += time.perf_counter() - submitted
            idle.append(slot)
            if on_done is not None:
                on_done(name, value)
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    result.wall_seconds = time.perf_counter() - t0
    return result


__all__ = ["run_pool", "PoolResult", "SlotStats", "PoolError", "WORKER_ERRORS"]
