"""A flow's own bpy scene code, run as jobs on the Blender worker pool.

Each job runs ``target`` (``"module:function"``, e.g. ``tasks.erank_gs.blender_views:render_views``,
``tasks.faceswap.blender_faces:render_face_job``, ``tasks.pixelhuman.blender_body:render_body``)
inside a :class:`workers.blender.BlenderWorker` through its ``run_job`` hook, on
:func:`workers.pool.run_pool`: a worker that dies is replaced and its job requeued, and the job
functions skip what is already on disk, so every image is written exactly once.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .blender import BlenderWorker, scratch_dir
from .pool import run_pool


def run_blender_jobs(target: str, jobs: dict[str, dict[str, Any]], out_dir: Path | str, *, workers: int,
                     threads: int = 1, num_gpus: float = 0, max_attempts: int = 3) -> dict[str, Any]:
    """Run every job (its dict plus ``"name"`` goes to ``target``); return per-job results and pool stats."""
    scratch = scratch_dir(Path(out_dir))
    device = "cuda" if num_gpus else "cpu"

    def start() -> Any:
        return BlenderWorker.options(num_cpus=threads, num_gpus=num_gpus).remote(threads, device, str(scratch))

    try:
        pool = run_pool(start, jobs, lambda actor, name, job: actor.run_job.remote(target, {**job, "name": name}),
                        size=workers, max_attempts=max_attempts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"jobs": pool.results, "workers_replaced": pool.replaced, "wall_seconds": pool.wall_seconds,
            "failures": pool.failures}
