"""Blender side of the erank-GS scene generator: build a procedural scene in ``bpy``, render
its views with Cycles and write the true depth and normal passes beside each image.

Runs inside a :class:`workers.blender.BlenderWorker` (one ``bpy`` per process). The meshes are
the numpy meshes of :mod:`tasks.erank_gs.procedural`, so the exported ground-truth mesh is
exactly what was rendered. Depth (camera z) and normals (world space, facing the camera) are
exact per pixel centre: each pixel's ray is cast against the same triangles with Blender's
BVH tree, rather than read back from Cycles' anti-aliased, sample-averaged passes. Every file
is written through a temp name and renamed, and views already on disk are skipped, so a
replaced worker never writes a view twice.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, arr)
    os.replace(tmp, path)


def _material(bpy, part) -> Any:
    mat = bpy.data.materials.new(part.name)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (*part.color, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.6
    if part.checker:
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = 6.0
        tex.inputs["Color1"].default_value = (*part.color, 1.0)
        tex.inputs["Color2"].default_value = (0.1, 0.1, 0.12, 1.0)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def build(bpy, scene_name: str, resolution: int, camera_angle_x: float, samples: int, threads: int):
    from .procedural import scene_parts

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    r = scene.render
    r.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_animated_seed = False
    r.threads_mode, r.threads = "FIXED", max(1, threads)
    r.resolution_x = r.resolution_y = resolution
    r.resolution_percentage = 100
    r.film_transparent = True  # NeRF-synthetic images: RGBA, transparent background
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("world")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (1, 1, 1, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.5
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 3.0
    sun_obj = bpy.data.objects.new("sun", sun)
    sun_obj.rotation_euler = (math.radians(40), math.radians(10), math.radians(30))
    scene.collection.objects.link(sun_obj)
    verts, faces, off = [], [], 0
    for part in scene_parts(scene_name):
        mesh = bpy.data.meshes.new(part.name)
        mesh.from_pydata(part.verts.tolist(), [], part.faces.tolist())
        mesh.update()
        obj = bpy.data.objects.new(part.name, mesh)
        obj.data.materials.append(_material(bpy, part))
        scene.collection.objects.link(obj)
        verts += part.verts.tolist()
        faces += (part.faces + off).tolist()
        off += len(part.verts)
    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.angle = camera_angle_x
    cam.clip_start = 0.05
    cam_obj = bpy.data.objects.new("camera", cam)
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    return scene, cam_obj, verts, faces


def true_passes(bvh, c2w: np.ndarray, resolution: int, camera_angle_x: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel-centre camera-z depth [H, W] and world normal [H, W, 3] (0 where no hit)."""
    from mathutils import Vector

    f = 0.5 * resolution / math.tan(0.5 * camera_angle_x)
    depth = np.zeros((resolution, resolution), np.float32)
    normal = np.zeros((resolution, resolution, 3), np.float32)
    R, origin = c2w[:3, :3], Vector(c2w[:3, 3].tolist())
    c = 0.5 * resolution
    for v in range(resolution):
        for u in range(resolution):
            # OpenGL camera: x right, y up, looking down −z
            d_cam = np.array([(u + 0.5 - c) / f, -(v + 0.5 - c) / f, -1.0])
            d = R @ d_cam
            norm = float(np.linalg.norm(d))
            loc, n, _, dist = bvh.ray_cast(origin, Vector((d / norm).tolist()))
            if loc is None:
                continue
            depth[v, u] = dist / norm  # distance along the ray → camera z (d_cam has |z| = 1)
            nn = np.array(n[:])
            normal[v, u] = -nn if float(nn @ d) > 0 else nn
    return depth, normal


def render_views(job: dict[str, Any]) -> dict[str, Any]:
    """Render ``job['views']`` ({"name", "c2w"}) of ``job['scene']`` into ``job['out']``."""
    import bpy
    from mathutils import Matrix
    from mathutils.bvhtree import BVHTree

    t0 = time.perf_counter()
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    scene, cam, verts, faces = build(bpy, job["scene"], job["resolution"], job["camera_angle_x"], job["samples"],
                                     job.get("threads", 1))
    bvh = BVHTree.FromPolygons(verts, faces, all_triangles=True)
    done = 0
    for view in job["views"]:
        name = view["name"]
        files = [out / f"{name}.png", out / f"{name}_depth.npy", out / f"{name}_normal.npy"]
        if all(f.is_file() for f in files):
            continue
        c2w = np.asarray(view["c2w"], float)
        cam.matrix_world = Matrix(c2w.tolist())
        tmp_png = out / f".{name}.{os.getpid()}.tmp.png"
        scene.render.filepath = str(tmp_png)
        bpy.ops.render.render(write_still=True)
        depth, normal = true_passes(bvh, c2w, job["resolution"], job["camera_angle_x"])
        _atomic_save_npy(files[1], depth)
        _atomic_save_npy(files[2], normal)
        os.replace(tmp_png, files[0])  # the PNG last: its presence marks the view done
        done += 1
    return {"job": job["name"], "frames": done, "seconds": time.perf_counter() - t0}
