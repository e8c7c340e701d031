"""Blender side of the body renders: one anny identity as a vertex-coloured mesh, posed frame
by frame, rendered with Cycles into RGBA PNGs (alpha = the body mask).

Runs inside a :class:`workers.blender.BlenderWorker` (one ``bpy`` per process) through its
``run_job`` hook. The mesh is built once per identity from the triangles the driver saved;
each frame only replaces the vertex coordinates (the posed vertices anny computed in the
driver, so what is rendered is exactly the body model the flow's skinning uses). Every PNG is
written through a temp name and renamed, and renders already on disk are skipped, so a
replaced worker never writes one twice.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def build(bpy, faces: np.ndarray, colors: np.ndarray, rest: np.ndarray, job: dict[str, Any]):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    r = scene.render
    r.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = job["samples"]
    scene.cycles.use_denoising = False
    scene.cycles.use_animated_seed = False
    r.threads_mode, r.threads = "FIXED", max(1, job.get("threads", 1))
    r.resolution_x = r.resolution_y = job["resolution"]
    r.resolution_percentage = 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    world = bpy.data.worlds.new("world")
    scene.world = world
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Color"].default_value = (1, 1, 1, 1)
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    sun = bpy.data.lights.new("sun", "SUN")
    sun.energy = 2.5
    sun_obj = bpy.data.objects.new("sun", sun)
    sun_obj.rotation_euler = (math.radians(35), math.radians(15), math.radians(-30))
    scene.collection.objects.link(sun_obj)

    mesh = bpy.data.meshes.new("body")
    mesh.from_pydata(rest.tolist(), [], faces.tolist())
    mesh.update()
    attr = mesh.color_attributes.new("col", "FLOAT_COLOR", "POINT")
    rgba = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], 1)
    attr.data.foreach_set("color", rgba.reshape(-1).astype(np.float32))
    for p in mesh.polygons:
        p.use_smooth = True
    mat = bpy.data.materials.new("cloth")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = 0.7
    node = nodes.new("ShaderNodeAttribute")
    node.attribute_name = "col"
    links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    mesh.materials.append(mat)
    obj = bpy.data.objects.new("body", mesh)
    scene.collection.objects.link(obj)

    cam = bpy.data.cameras.new("camera")
    cam.sensor_fit = "HORIZONTAL"
    cam.angle = math.radians(job["fov_deg"])
    cam.clip_start = 0.05
    cam_obj = bpy.data.objects.new("camera", cam)
    scene.collection.objects.link(cam_obj)
    scene.camera = cam_obj
    return scene, mesh, cam_obj


def render_body(job: dict[str, Any]) -> dict[str, Any]:
    """Render ``job['renders']`` ({"frame", "camera", "c2w", "file"}) of one identity into ``job['out']``.

    ``job['frames']`` maps a frame name to its ``.npz`` (``vertices`` [V, 3]); ``job['faces']`` and
    ``job['colors']`` are ``.npy`` files; ``job['rest']`` the rest vertices."""
    import bpy
    from mathutils import Matrix

    t0 = time.perf_counter()
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in job["renders"] if not (out / r["file"]).is_file()]
    if not todo:
        return {"job": job["name"], "frames": 0, "seconds": time.perf_counter() - t0}
    faces = np.load(job["faces"])
    colors = np.load(job["colors"])
    rest = np.load(job["rest"])
    scene, mesh, cam = build(bpy, faces, colors, rest, job)
    done, current = 0, None
    for r in sorted(todo, key=lambda r: r["frame"]):
        if r["frame"] != current:
            verts = np.load(job["frames"][r["frame"]])["vertices"].astype(np.float32)
            mesh.vertices.foreach_set("co", verts.reshape(-1))
            mesh.update()
            current = r["frame"]
        cam.matrix_world = Matrix(np.asarray(r["c2w"], float).tolist())
        final = out / r["file"]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.stem}.{os.getpid()}.tmp.png")
        scene.render.filepath = str(tmp)
        bpy.ops.render.render(write_still=True)
        os.replace(tmp, final)
        done += 1
    return {"job": job["name"], "frames": done, "seconds": time.perf_counter() - t0}
