"""Blender side of the face data: one identity's head, many frames, each with its own look.

Runs inside a :class:`workers.blender.BlenderWorker` (through ``run_job``; see
:mod:`workers.blender_jobs`). A job is one head shape and a list of frames; the head (every hair
style included) is built once, and each frame sets its expression, pose, skin / iris / hair
colours, hair style, key light (direction and colour) and backdrop by changing node values and
object transforms only — which is also why a ground-truth swap (source shape, target's frame)
renders exactly like the target frame when the shapes are equal.

Per frame it writes ``<name>.png`` (Cycles), ``<name>_mask.png`` (the face mask: a second
pass in which the face-region skin and the eyeballs are flat white emission, every other
surface flat black and the backdrop black, one sample at the pixel centre — the mesh
rasterised with Blender's own visibility) and ``<name>_lm.npy`` (landmark pixels). Files are
written through temp names; the RGB PNG is renamed last and marks the frame done, so a replaced
worker never writes a frame twice.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from tasks.animeceleb.blender_scene import BlenderScene, _look_rotation

from .dataset import HAIR_STYLES

FACE_MATERIALS = ("skin_face", "sclera", "iris", "pupil")
LOOK_TARGET = np.array([0.0, -0.05, 0.11])


def background_colors(bg: int) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
    """Backdrop ``bg``: two colours and a noise scale, a pure function of the id."""
    r = np.random.default_rng(10_000 + int(bg))
    hue = r.uniform(0, 1)
    import colorsys

    c1 = colorsys.hsv_to_rgb(hue, r.uniform(0.1, 0.6), r.uniform(0.25, 0.9))
    c2 = colorsys.hsv_to_rgb((hue + r.uniform(0.1, 0.5)) % 1, r.uniform(0.1, 0.7), r.uniform(0.1, 0.8))
    return tuple(float(x) for x in c1), tuple(float(x) for x in c2), float(r.uniform(2.0, 12.0))


class FaceScene(BlenderScene):
    """The animeceleb scene with per-frame controllable materials, key light and backdrop."""

    def load(self, model, style="default", *, resolution, background=(0.5, 0.5, 0.5), key=None):
        self.nodes: dict[str, Any] = {}
        super().load(model, "default", resolution=resolution, background=background, key=key)
        self._backdrop()
        self._mask_materials()

    def _render_settings(self, scene, style: str) -> None:
        super()._render_settings(scene, style)
        c = scene.cycles  # a face at 128 px needs one diffuse bounce, not three (≈2× faster)
        c.max_bounces, c.diffuse_bounces, c.glossy_bounces, c.transparent_max_bounces = 2, 1, 1, 4

    def _lights(self, scene) -> None:
        bpy = self.bpy
        self.lights = {}
        for name, loc, energy, size in (("key", (-0.45, -0.75, 0.5), 9.0, 0.35), ("fill", (0.6, -0.7, 0.0), 1.6, 0.9),
                                        ("rim", (0.2, 0.6, 0.45), 2.0, 0.4)):
            light = bpy.data.lights.new(name, "AREA")
            light.energy, light.size = energy, size
            obj = bpy.data.objects.new(name, light)
            obj.location = loc
            obj.rotation_euler = _look_rotation(LOOK_TARGET - np.array(loc))
            scene.collection.objects.link(obj)
            self.lights[name] = obj

    def _material(self, m, style):
        mat = super()._material(m, "default")
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        bsdf = nodes["Principled BSDF"]
        if m.name.startswith("hair_"):
            # strand-like variation of the colour, and a switch that makes the style invisible
            wave = nodes.new("ShaderNodeTexWave")
            wave.inputs["Scale"].default_value = 60.0
            wave.inputs["Distortion"].default_value = 6.0
            ramp = nodes.new("ShaderNodeMapRange")
            ramp.inputs["To Min"].default_value = 0.7
            rgb = nodes.new("ShaderNodeRGB")
            mul = nodes.new("ShaderNodeMix")
            mul.data_type, mul.blend_type = "RGBA", "MULTIPLY"
            mul.inputs["Factor"].default_value = 1.0
            links.new(wave.outputs["Fac"], ramp.inputs["Value"])
            links.new(rgb.outputs["Color"], mul.inputs[6])
            links.new(ramp.outputs["Result"], mul.inputs[7])
            links.new(mul.outputs[2], bsdf.inputs["Base Color"])
            clear = nodes.new("ShaderNodeBsdfTransparent")
            mix = nodes.new("ShaderNodeMixShader")
            out = nodes["Material Output"]
            links.new(bsdf.outputs["BSDF"], mix.inputs[1])
            links.new(clear.outputs["BSDF"], mix.inputs[2])
            links.new(mix.outputs["Shader"], out.inputs["Surface"])
            self.nodes[m.name] = {"rgb": rgb, "hide": mix.inputs["Fac"]}
        else:
            self.nodes[m.name] = {"bsdf": bsdf}
            if m.name == "iris":
                bsdf.inputs["Roughness"].default_value = 0.2
        return mat

    def _backdrop(self) -> None:
        bpy = self.bpy
        mesh = bpy.data.meshes.new("backdrop")
        s = 0.6
        mesh.from_pydata([(-s, 0.45, -s + 0.1), (s, 0.45, -s + 0.1), (s, 0.45, s + 0.1), (-s, 0.45, s + 0.1)], [], [(0, 1, 2, 3)])
        mat = bpy.data.materials.new("backdrop")
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        nodes.remove(nodes["Principled BSDF"])
        noise = nodes.new("ShaderNodeTexNoise")
        grad_coord = nodes.new("ShaderNodeTexCoord")
        links.new(grad_coord.outputs["Object"], noise.inputs["Vector"])
        c1, c2 = nodes.new("ShaderNodeRGB"), nodes.new("ShaderNodeRGB")
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        links.new(noise.outputs["Fac"], mix.inputs["Factor"])
        links.new(c1.outputs["Color"], mix.inputs[6])
        links.new(c2.outputs["Color"], mix.inputs[7])
        emit = nodes.new("ShaderNodeEmission")
        links.new(mix.outputs[2], emit.inputs["Color"])
        links.new(emit.outputs["Emission"], nodes["Material Output"].inputs["Surface"])
        mesh.materials.append(mat)
        obj = bpy.data.objects.new("backdrop", mesh)
        bpy.context.scene.collection.objects.link(obj)
        self.backdrop = obj
        self.nodes["backdrop"] = {"c1": c1, "c2": c2, "noise": noise}

    def _mask_materials(self) -> None:
        bpy = self.bpy
        self.rgb_materials = list(self.head.data.materials)
        self.mask_materials = []
        for m in self.rgb_materials:
            base = m.name.removesuffix("_default")
            mat = bpy.data.materials.new(base + "_mask")
            mat.use_nodes = True
            nodes, links = mat.node_tree.nodes, mat.node_tree.links
            nodes.remove(nodes["Principled BSDF"])
            emit = nodes.new("ShaderNodeEmission")
            white = base in FACE_MATERIALS
            emit.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0) if white else (0.0, 0.0, 0.0, 1.0)
            shader = emit.outputs["Emission"]
            if base.startswith("hair_"):
                clear = nodes.new("ShaderNodeBsdfTransparent")
                mix = nodes.new("ShaderNodeMixShader")
                links.new(emit.outputs["Emission"], mix.inputs[1])
                links.new(clear.outputs["BSDF"], mix.inputs[2])
                shader = mix.outputs["Shader"]
                self.nodes[base]["mask_hide"] = mix.inputs["Fac"]
            links.new(shader, nodes["Material Output"].inputs["Surface"])
            self.mask_materials.append(mat)
        black = bpy.data.worlds.new("black")
        black.use_nodes = True
        black.node_tree.nodes["Background"].inputs["Color"].default_value = (0, 0, 0, 1)
        black.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.0
        self.black_world = black

    # ------------------------------------------------------------------------------- per frame

    def set_look(self, look: dict[str, Any]) -> None:
        n = self.nodes
        for name in ("skin", "skin_face"):
            n[name]["bsdf"].inputs["Base Color"].default_value = (*look["skin"], 1.0)
        n["iris"]["bsdf"].inputs["Base Color"].default_value = (*look["iris"], 1.0)
        style = HAIR_STYLES[int(look["hair_style"])]
        for name, d in n.items():
            if name.startswith("hair_"):
                d["rgb"].outputs["Color"].default_value = (*look["hair_color"], 1.0)
                hidden = 0.0 if name == f"hair_{style}" else 1.0
                d["hide"].default_value = hidden
                d["mask_hide"].default_value = hidden
        key = self.lights["key"]
        loc = LOOK_TARGET + 1.0 * np.asarray(look["light_dir"], float)
        key.location = tuple(loc)
        key.rotation_euler = _look_rotation(LOOK_TARGET - loc)
        key.data.color = tuple(look["light_color"])
        c1, c2, scale = background_colors(look["background"])
        n["backdrop"]["c1"].outputs["Color"].default_value = (*c1, 1.0)
        n["backdrop"]["c2"].outputs["Color"].default_value = (*c2, 1.0)
        n["backdrop"]["noise"].inputs["Scale"].default_value = scale

    def render_mask(self, path: Path, *, weights, yaw, pitch, roll, resolution: int) -> np.ndarray:
        scene = self.bpy.context.scene
        world, filt = scene.world, scene.cycles.filter_width
        mats = self.head.data.materials
        for i, m in enumerate(self.mask_materials):
            mats[i] = m
        self.backdrop.hide_render = True
        scene.world = self.black_world
        scene.cycles.filter_width = 0.01
        try:
            self.render(path, weights=weights, yaw=yaw, pitch=pitch, roll=roll, resolution=resolution, samples=1,
                        seed=0, denoise=False)
        finally:
            for i, m in enumerate(self.rgb_materials):
                mats[i] = m
            self.backdrop.hide_render = False
            scene.world = world
            scene.cycles.filter_width = filt
        from PIL import Image

        return np.asarray(Image.open(path).convert("L")) > 127


_SCENE: FaceScene | None = None


def _scene(threads: int) -> FaceScene:
    global _SCENE
    if _SCENE is None:
        from .heads import CAMERA

        _SCENE = FaceScene(threads=threads, camera=CAMERA)
    return _SCENE


def render_face_job(job: dict[str, Any]) -> dict[str, Any]:
    """Render ``job['frames']`` of the head ``job['shape']`` into ``job['out']``.

    A frame: ``{"name", "expression" [52], "pose" [3] rad, "look": {skin, iris, hair_color,
    hair_style, light_dir, light_color, background}, "seed"}``.
    """
    from .heads import build_face_model, project_landmarks

    t0 = time.perf_counter()
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    todo = [f for f in job["frames"] if not (out / f"{f['name']}.png").is_file()]
    if not todo:
        return {"job": job["name"], "frames": 0, "seconds": 0.0}
    model = build_face_model(np.asarray(job["shape"], float))
    scene = _scene(job.get("threads", 1))
    scene.load(model, resolution=job["resolution"], key=(job["name"], tuple(job["shape"])))
    res = job["resolution"]
    for f in todo:
        name = f["name"]
        yaw, pitch, roll = (float(a) for a in np.rad2deg(f["pose"]))
        scene.set_look(f["look"])
        tmp = out / f".{name}.{os.getpid()}.tmp.png"
        mask = scene.render_mask(out / f".{name}_mask.{os.getpid()}.tmp.png", weights=f["expression"], yaw=yaw,
                                 pitch=pitch, roll=roll, resolution=res)
        os.replace(out / f".{name}_mask.{os.getpid()}.tmp.png", out / f"{name}_mask.png")
        lm = project_landmarks(model, f["expression"], f["pose"], res)
        tmp_lm = out / f".{name}_lm.{os.getpid()}.tmp.npy"
        with open(tmp_lm, "wb") as fh:
            np.save(fh, lm)
        os.replace(tmp_lm, out / f"{name}_lm.npy")
        scene.render(tmp, weights=f["expression"], yaw=yaw, pitch=pitch, roll=roll, resolution=res,
                     samples=job["samples"], seed=int(f["seed"]), denoise=job.get("denoise", True))
        os.replace(tmp, out / f"{name}.png")  # last: marks the frame done
        del mask
    return {"job": job["name"], "frames": len(todo), "seconds": time.perf_counter() - t0}
