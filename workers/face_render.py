"""faceswap face renders on the Blender worker pool.

Each job renders the frames of one head shape (``tasks.faceswap.blender_faces``) inside a
:class:`workers.blender.BlenderWorker` through its ``run_job`` hook, on
:func:`workers.pool.run_pool`: a worker that dies is replaced and its job requeued, and frames
already on disk are skipped, so every frame is written exactly once.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .blender import BlenderWorker, scratch_dir
from .pool import run_pool

TARGET = "tasks.faceswap.blender_faces:render_face_job"


def render_face_jobs(jobs: dict[str, dict[str, Any]], out_dir: Path | str, *, workers: int, threads: int = 1,
                     max_attempts: int = 3) -> dict[str, Any]:
    """Run every job ({"shape", "frames", "out", ...}); return per-job results and pool stats."""
    scratch = scratch_dir(Path(out_dir))

    def start() -> Any:
        return BlenderWorker.options(num_cpus=threads).remote(threads, "cpu", str(scratch))

    try:
        pool = run_pool(start, jobs, lambda actor, name, job: actor.run_job.remote(TARGET, {**job, "name": name}),
                        size=workers, max_attempts=max_attempts)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"jobs": pool.results, "workers_replaced": pool.replaced, "wall_seconds": pool.wall_seconds,
            "failures": pool.failures}
