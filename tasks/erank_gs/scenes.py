"""Procedural scene → NeRF-synthetic folder: the view plan, the Blender jobs, the transforms files.

A scene folder holds ``transforms_{train,test}.json`` (NeRF-synthetic, plus per-frame
``depth_file_path`` / ``normal_file_path`` and a top-level ``mesh_path``), ``train/`` and
``test/`` (RGBA PNG, camera-z depth and world-normal ``.npy`` per view) and ``mesh.ply`` (the
ground-truth triangle mesh, written with trimesh).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import SceneRender
from .procedural import scene_mesh, sphere_views
from .scene_io import write_transforms


def view_plan(sr: SceneRender) -> dict[str, list[dict[str, Any]]]:
    train = sphere_views(sr.train_views, sr.camera_radius)
    # the held-out spiral is rotated by half a golden-angle step: no test view repeats a train view
    test = sphere_views(sr.test_views, sr.camera_radius, offset=1.2, min_elev_deg=-5.0, max_elev_deg=60.0)
    return {"train": [{"name": f"r_{i}", "c2w": m.tolist()} for i, m in enumerate(train)],
            "test": [{"name": f"r_{i}", "c2w": m.tolist()} for i, m in enumerate(test)]}


def render_jobs(scene: str, sr: SceneRender, out: Path, *, per_job: int = 12) -> dict[str, dict[str, Any]]:
    """Blender jobs of ≤ ``per_job`` views each (a job rebuilds the scene once, then renders)."""
    jobs = {}
    for split, views in view_plan(sr).items():
        for k in range(0, len(views), per_job):
            jobs[f"{split}_{k // per_job:03d}"] = {
                "scene": scene, "resolution": sr.resolution, "camera_angle_x": math.radians(sr.camera_angle_deg),
                "samples": sr.samples, "views": views[k:k + per_job], "out": str(out / split)}
    return jobs


def write_scene_files(scene: str, sr: SceneRender, out: Path) -> dict[str, Any]:
    """The transforms files and the true mesh, once every view is on disk."""
    import trimesh

    verts, faces = scene_mesh(scene)
    trimesh.Trimesh(verts, faces, process=False).export(out / "mesh.ply")
    counts = {}
    for split, views in view_plan(sr).items():
        frames = [{"file_path": f"./{split}/{v['name']}", "transform_matrix": v["c2w"],
                   "depth_file_path": f"{split}/{v['name']}_depth.npy",
                   "normal_file_path": f"{split}/{v['name']}_normal.npy"} for v in views]
        for f in frames:
            if not (out / (f["file_path"] + ".png")).is_file():
                raise FileNotFoundError(f"{out}: view {f['file_path']} was not rendered")
        write_transforms(out / f"transforms_{split}.json", math.radians(sr.camera_angle_deg), frames,
                         mesh_path="mesh.ply", w=sr.resolution, h=sr.resolution)
        counts[split] = len(frames)
    return {"scene": scene, "views": counts, "mesh_vertices": len(verts), "mesh_faces": len(faces)}
