"""Blender render workers: Ray actors that each own one ``bpy`` process.

``bpy`` is one Blender per process, so parallel rendering means processes: each
:class:`BlenderWorker` imports ``bpy`` once, keeps its scene between frames of the same head,
and resets it (factory settings) between identities. :func:`render_shards` spreads shards over
a pool of them (:func:`workers.pool.run_pool`): a worker that dies (crash, OOM, ``kill -9``,
its node removed) is replaced by a new actor wherever the cluster has room, and the shard it
held goes back in line. Shards are written atomically and a finished one is skipped, so the
result has every frame exactly once whatever fails on the way.

Blender keeps a session temp folder (``blender_XXXXXX``) that it removes only on a clean exit,
and pool actors end by being killed: so each worker's temp files (Blender's and the PNGs of the
shard in progress) live in a scratch folder beside the output, ``.<out>.workers.tmp/``, which
the pool removes when it ends and the flow's start-of-run sweep removes after a crash.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import ray

from .pool import run_pool


@ray.remote(max_restarts=0, max_task_retries=0)
class BlenderWorker:
    def __init__(self, threads: int = 1, device: str = "cpu", scratch: str | None = None):
        if scratch:
            # Before bpy is imported: Blender makes its session temp folder under $TMPDIR.
            Path(scratch).mkdir(parents=True, exist_ok=True)
            own = tempfile.mkdtemp(prefix=f"worker-{os.getpid()}-", dir=scratch)
            os.environ["TMPDIR"] = own
            tempfile.tempdir = own
        from tasks.animeceleb.blender_scene import BlenderScene

        self.scene = BlenderScene(threads=threads, device=device)

    def pid(self) -> int:
        return os.getpid()

    def tempdir(self) -> str:
        """Where this process's Blender keeps its temp files (tests check it is the scratch)."""
        return self.scene.bpy.app.tempdir

    def run_job(self, target: str, *args: Any) -> Any:
        """Run ``package.module:function(*args)`` in this worker's Blender process: the hook other
        domains' scene generators (erank_gs) use to share this actor and its pool."""
        import importlib

        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)(*args)

    def render_shard(self, shard: str, rows: list[dict[str, Any]], out_dir: str) -> dict[str, Any]:
        from tasks.animeceleb.shards import render_shard

        return {**render_shard(self.scene, shard, rows, out_dir), "node": ray.get_runtime_context().get_node_id()}


def scratch_dir(out_dir: Path | str) -> Path:
    """The pool's temp folder: a hidden ``.tmp`` sibling of the output (swept at flow start)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.workers.tmp"


def render_shards(
    shards: dict[str, list[dict[str, Any]]],
    out_dir: Path | str,
    *,
    workers: int,
    threads: int = 1,
    num_gpus: float = 0,
    max_attempts: int = 4,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Render every shard not yet on disk; return per-worker and per-shard statistics.

    ``on_done(result)`` is called in the driver after each finished shard (the render step
    records the shard there; progress; tests use it to kill a worker mid-run).
    """
    from tasks.animeceleb.shards import clear_temporaries, is_done

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_temporaries(out_dir)
    todo = {s: rows for s, rows in shards.items() if not is_done(out_dir, s)}
    skipped = len(shards) - len(todo)
    device = "cuda" if num_gpus else "cpu"
    scratch = scratch_dir(out_dir)

    def start() -> Any:
        return BlenderWorker.options(num_cpus=threads, num_gpus=num_gpus).remote(threads, device, str(scratch))

    try:
        pool = run_pool(start, todo, lambda actor, shard, rows: actor.render_shard.remote(shard, rows, str(out_dir)),
                        size=workers, max_attempts=max_attempts,
                        on_done=(lambda _shard, res: on_done(res)) if on_done else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # every actor is dead by now
        clear_temporaries(out_dir)  # what killed workers left half-written
    results = list(pool.results.values())
    per_worker = []
    for slot in pool.per_slot:
        done = [pool.results[s] for s in slot.jobs]
        if not done:  # a slot whose actor never got room on the cluster
            continue
        frames, seconds = sum(r["frames"] for r in done), sum(r["seconds"] for r in done)
        per_worker.append({"worker": slot.slot, "frames": frames, "seconds": seconds, "shards": len(done),
                           "frames_per_second": frames / seconds if seconds else 0.0})
    frames = sum(r["frames"] for r in results)
    wall = pool.wall_seconds
    return {
        "shards_rendered": len(results),
        "shards_skipped": skipped,
        "shards_redone": len(pool.failures),
        "workers_replaced": pool.replaced,
        "failures": pool.failures,
        "frames": frames,
        "wall_seconds": wall,
        "frames_per_second": frames / wall if wall > 0 and frames else 0.0,
        "workers": len(pool.per_slot),
        "nodes": sorted({r["node"] for r in results}),
        "per_worker": per_worker,
    }
