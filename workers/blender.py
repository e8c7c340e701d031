"""Blender render workers: Ray actors that each own one ``bpy`` process.

``bpy`` is one Blender per process, so parallel rendering means processes: each
:class:`BlenderWorker` imports ``bpy`` once, keeps its scene between frames of the same head,
and resets it (factory settings) between identities. :func:`render_shards` spreads shards over
a pool of them. A worker that dies (crash, OOM, ``kill -9``, its node removed) is replaced by a
new actor, wherever the cluster has room, and the shard it held goes back in line. Shards are
written atomically and a finished one is never redone, so the result has every frame exactly
once whatever fails on the way.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

WORKER_ERRORS = (RayActorError, ActorDiedError, ActorUnavailableError)


@ray.remote(max_restarts=0, max_task_retries=0)
class BlenderWorker:
    def __init__(self, threads: int = 1, device: str = "cpu"):
        from tasks.animeceleb.blender_scene import BlenderScene

        self.scene = BlenderScene(threads=threads, device=device)

    def pid(self) -> int:
        return os.getpid()

    def render_shard(self, shard: str, rows: list[dict[str, Any]], out_dir: str) -> dict[str, Any]:
        from tasks.animeceleb.shards import render_shard

        return {**render_shard(self.scene, shard, rows, out_dir), "node": ray.get_runtime_context().get_node_id()}


def render_shards(
    shards: dict[str, list[dict[str, Any]]],
    out_dir: Path | str,
    *,
    workers: int,
    threads: int = 1,
    num_gpus: float = 0,
    max_attempts: int = 4,
    on_done: Callable[[dict[str, Any], list], None] | None = None,
) -> dict[str, Any]:
    """Render every shard not yet on disk; return per-worker and per-shard statistics.

    ``on_done(result, actors)`` is called after each finished shard (progress; tests use it to
    kill a worker mid-run).
    """
    from tasks.animeceleb.shards import clear_temporaries, is_done

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temporaries(out_dir)
    todo = [s for s in shards if not is_done(out_dir, s)]
    skipped = len(shards) - len(todo)
    device = "cuda" if num_gpus else "cpu"
    n = max(1, min(workers, len(todo))) if todo else 0

    def start() -> Any:
        return BlenderWorker.options(num_cpus=threads, num_gpus=num_gpus).remote(threads, device)

    actors = [start() for _ in range(n)]
    # A slot takes work once its actor answers; a replacement may wait for resources (its node
    # is gone and the others are busy) without holding up the rest of the pool.
    starting: dict[Any, int] = {a.pid.remote(): i for i, a in enumerate(actors)}
    idle: list[int] = []
    attempts: dict[str, int] = {}
    running: dict[Any, tuple[str, int]] = {}
    per_worker: dict[int, dict[str, float]] = {}
    results, failures, replaced = [], [], 0
    nodes: set[str] = set()
    queue = list(todo)
    t0 = time.perf_counter()

    def submit(slot: int) -> None:
        shard = queue.pop(0)
        attempts[shard] = attempts.get(shard, 0) + 1
        if attempts[shard] > max_attempts:
            raise RuntimeError(f"shard {shard} failed {max_attempts} times; last error: {failures[-1] if failures else '?'}")
        running[actors[slot].render_shard.remote(shard, shards[shard], str(out_dir))] = (shard, slot)

    def replace(slot: int) -> None:
        nonlocal replaced
        ray.kill(actors[slot], no_restart=True)
        actors[slot] = start()
        starting[actors[slot].pid.remote()] = slot
        replaced += 1

    while queue or running:
        while queue and idle:
            submit(idle.pop())
        ready, _ = ray.wait(list(running) + list(starting), num_returns=1)
        ref = ready[0]
        if ref in starting:
            slot = starting.pop(ref)
            try:
                ray.get(ref)
                idle.append(slot)
            except WORKER_ERRORS:
                replace(slot)
            continue
        shard, slot = running.pop(ref)
        try:
            res = ray.get(ref)
        except WORKER_ERRORS as e:  # the process or its node died: a new worker, the shard back in line
            failures.append(f"{shard}: {type(e).__name__}")
            queue.insert(0, shard)
            replace(slot)
            continue
        results.append(res)
        nodes.add(res["node"])
        w = per_worker.setdefault(slot, {"frames": 0, "seconds": 0.0, "shards": 0})
        w["frames"] += res["frames"]
        w["seconds"] += res["seconds"]
        w["shards"] += 1
        idle.append(slot)
        if on_done:
            on_done(res, actors)
    wall = time.perf_counter() - t0
    for a in actors:
        ray.kill(a, no_restart=True)
    clear_temporaries(out_dir)  # what killed workers left behind
    frames = sum(r["frames"] for r in results)
    return {
        "shards_rendered": len(results),
        "shards_skipped": skipped,
        "shards_redone": len(failures),
        "workers_replaced": replaced,
        "failures": failures,
        "frames": frames,
        "wall_seconds": wall,
        "frames_per_second": frames / wall if wall > 0 and frames else 0.0,
        "workers": n,
        "nodes": sorted(nodes),
        "per_worker": [{"worker": k, **v, "frames_per_second": v["frames"] / v["seconds"] if v["seconds"] else 0.0}
                       for k, v in sorted(per_worker.items())],
    }
