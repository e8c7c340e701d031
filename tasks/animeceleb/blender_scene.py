"""The Blender side: a scene for one head in one style, and frames rendered from labels.

Imported only inside a process that owns ``bpy`` (a :mod:`workers.blender` actor or a test).
The head's :class:`~tasks.common.morphs.MorphModel` becomes one mesh with one relative
shape key per morph, parented to a head rig (an empty at the neck joint) that carries the
pose. Two styles, as in AnimeCeleb: ``default`` (Principled BSDF, three area lights) and
``toon`` (cel shading — the N·L term quantised to two tones, emitted flat — plus a black
inverted-hull outline). Cycles renders on the CPU, or on the GPU when the node has one; with a
fixed seed the same label renders to the same pixels.
"""
from __future__ import annotations

import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tasks.common.morphs import Material, MorphModel

from .camera import CameraSpec, pose_euler
from .meshkit import outline_shell

STYLES = ("default", "toon")
OUTLINE_PX = 1.6  # toon outline width in pixels, at any resolution
LIGHT_DIR = np.array([-0.45, -0.75, 0.5]) / np.linalg.norm([-0.45, -0.75, 0.5])  # from the upper left, front


class BlenderScene:
    """Owns the ``bpy`` state of one process: load a head, then render frames of it."""

    def __init__(self, threads: int = 1, device: str = "cpu", camera: CameraSpec = CameraSpec()):
        import bpy

        self.bpy = bpy
        self.threads = max(1, int(threads))
        self.camera = camera
        self.device = device
        self.model: MorphModel | None = None
        self.loaded: tuple | None = None

    # ----------------------------------------------------------------------- scene building

    def load(self, model: MorphModel, style: str, *, resolution: int, background=(0.93, 0.93, 0.95), key=None) -> None:
        """Reset Blender and build ``model`` in ``style``; a no-op when already loaded."""
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        want = (key if key is not None else id(model), style, resolution, tuple(background))
        if self.loaded == want:
            return
        bpy = self.bpy
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        self._render_settings(scene, style)
        self._world(scene, background)
        self._camera(scene)
        if style == "default":
            self._lights(scene)
        mats = [self._material(m, style) for m in model.materials]
        self.rig = bpy.data.objects.new("head_rig", None)
        self.rig.rotation_mode = "YXZ"
        pivot = model.meta.get("pivot", (0.0, 0.0, 0.0))
        self.rig.location = pivot
        scene.collection.objects.link(self.rig)
        self.head = self._mesh_object("head", model.template, model.faces, mats, model.face_material, pivot)
        self._shape_keys(self.head, model)
        if style == "toon":
            thickness = OUTLINE_PX * self._metres_per_pixel(resolution)
            verts, faces = outline_shell(model, thickness)
            self._mesh_object("outline", verts, faces, [self._outline_material()], np.zeros(len(faces), np.int32), pivot)
        self.model, self.loaded = model, want

    def _render_settings(self, scene, style: str) -> None:
        scene.render.engine = "CYCLES"
        scene.cycles.device = "CPU"
        if self.device != "cpu":
            self._enable_gpu(scene)
        scene.render.threads_mode = "FIXED"
        scene.render.threads = self.threads
        scene.render.resolution_percentage = 100
        scene.render.image_settings.file_format = "PNG"
        scene.render.image_settings.color_mode = "RGB"
        scene.render.image_settings.compression = 15
        scene.view_settings.view_transform = "Standard"
        scene.cycles.use_animated_seed = False
        c = scene.cycles
        if style == "toon":  # flat emission: light paths add nothing but cost
            c.max_bounces, c.diffuse_bounces, c.glossy_bounces, c.transmission_bounces = 0, 0, 0, 0
            c.transparent_max_bounces = 8
        else:
            c.max_bounces, c.diffuse_bounces, c.glossy_bounces, c.transmission_bounces = 3, 2, 1, 0
            c.transparent_max_bounces = 4
        c.caustics_reflective = c.caustics_refractive = False

    def _enable_gpu(self, scene) -> None:
        prefs = self.bpy.context.preferences.addons["cycles"].preferences
        for kind in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
            try:
                prefs.compute_device_type = kind
            except TypeError:
                continue
            prefs.get_devices()
            gpus = [d for d in prefs.devices if d.type == kind]
            if gpus:
                for d in prefs.devices:
                    d.use = d.type == kind
                scene.cycles.device = "GPU"
                return
        # No usable GPU in this process: Cycles stays on the CPU.

    def _world(self, scene, background) -> None:
        world = self.bpy.data.worlds.new("world")
        scene.world = world
        world.use_nodes = True
        nodes, links = world.node_tree.nodes, world.node_tree.links
        # The backdrop shows at full strength to the camera but lights the head only dimly.
        seen = nodes["Background"]
        seen.inputs["Color"].default_value = (*background, 1.0)
        ambient = nodes.new("ShaderNodeBackground")
        ambient.inputs["Color"].default_value = (*background, 1.0)
        ambient.inputs["Strength"].default_value = 0.25
        path = nodes.new("ShaderNodeLightPath")
        mix = nodes.new("ShaderNodeMixShader")
        links.new(path.outputs["Is Camera Ray"], mix.inputs["Fac"])
        links.new(ambient.outputs["Background"], mix.inputs[1])
        links.new(seen.outputs["Background"], mix.inputs[2])
        links.new(mix.outputs["Shader"], nodes["World Output"].inputs["Surface"])

    def _camera(self, scene) -> None:
        bpy = self.bpy
        cam = bpy.data.cameras.new("camera")
        cam.lens = self.camera.lens_mm
        cam.sensor_width = self.camera.sensor_mm
        cam.sensor_fit = "HORIZONTAL"
        cam.clip_start = 0.05
        obj = bpy.data.objects.new("camera", cam)
        obj.location = self.camera.location
        obj.rotation_euler = (math.pi / 2, 0.0, 0.0)  # looks along +Y
        scene.collection.objects.link(obj)
        scene.camera = obj

    def _lights(self, scene) -> None:
        bpy = self.bpy
        for name, loc, energy, size in (("key", (-0.45, -0.75, 0.5), 7.0, 0.5), ("fill", (0.6, -0.6, 0.05), 2.5, 0.8),
                                        ("rim", (0.2, 0.6, 0.45), 2.5, 0.4)):
            light = bpy.data.lights.new(name, "AREA")
            light.energy = energy
            light.size = size
            obj = bpy.data.objects.new(name, light)
            obj.location = loc
            # Aim at the head: the light's -Z axis to the target.
            d = np.array([0.0, 0.0, 0.13]) - np.array(loc)
            obj.rotation_euler = _look_rotation(d)
            scene.collection.objects.link(obj)

    def _material(self, m: Material, style: str):
        bpy = self.bpy
        mat = bpy.data.materials.new(f"{m.name}_{style}")
        mat.use_nodes = True
        nt = mat.node_tree
        nodes, links = nt.nodes, nt.links
        out = nodes["Material Output"]
        bsdf = nodes["Principled BSDF"]
        rgba = (*m.color, 1.0)
        if style == "default":
            bsdf.inputs["Base Color"].default_value = rgba
            bsdf.inputs["Roughness"].default_value = m.roughness
            if m.emission > 0:
                bsdf.inputs["Emission Color"].default_value = rgba
                bsdf.inputs["Emission Strength"].default_value = m.emission
            return mat
        nodes.remove(bsdf)
        emit = nodes.new("ShaderNodeEmission")
        links.new(emit.outputs["Emission"], out.inputs["Surface"])
        if m.emission > 0:  # painted eyes/mouth stay flat
            emit.inputs["Color"].default_value = rgba
            return mat
        geo = nodes.new("ShaderNodeNewGeometry")
        light = nodes.new("ShaderNodeCombineXYZ")
        for i, axis in enumerate("XYZ"):
            light.inputs[axis].default_value = float(LIGHT_DIR[i])
        dot = nodes.new("ShaderNodeVectorMath")
        dot.operation = "DOT_PRODUCT"
        links.new(geo.outputs["Normal"], dot.inputs[0])
        links.new(light.outputs["Vector"], dot.inputs[1])
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.interpolation = "CONSTANT"
        ramp.color_ramp.elements[0].position = 0.0
        ramp.color_ramp.elements[0].color = (0.68, 0.62, 0.72, 1.0)  # cool shadow tone
        ramp.color_ramp.elements[1].position = 0.12
        ramp.color_ramp.elements[1].color = (1.0, 1.0, 1.0, 1.0)
        links.new(dot.outputs["Value"], ramp.inputs["Fac"])
        mix = nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        mix.blend_type = "MULTIPLY"
        mix.inputs["Factor"].default_value = 1.0
        mix.inputs[6].default_value = rgba  # A
        links.new(ramp.outputs["Color"], mix.inputs[7])  # B
        links.new(mix.outputs[2], emit.inputs["Color"])
        return mat

    def _outline_material(self):
        bpy = self.bpy
        mat = bpy.data.materials.new("outline")
        mat.use_nodes = True
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        nodes.remove(nodes["Principled BSDF"])
        geo = nodes.new("ShaderNodeNewGeometry")
        black = nodes.new("ShaderNodeEmission")
        black.inputs["Color"].default_value = (0.04, 0.03, 0.05, 1.0)
        clear = nodes.new("ShaderNodeBsdfTransparent")
        mix = nodes.new("ShaderNodeMixShader")
        links.new(geo.outputs["Backfacing"], mix.inputs["Fac"])
        links.new(black.outputs["Emission"], mix.inputs[1])
        links.new(clear.outputs["BSDF"], mix.inputs[2])
        links.new(mix.outputs["Shader"], nodes["Material Output"].inputs["Surface"])
        return mat

    def _mesh_object(self, name, verts, faces, mats, face_material, pivot):
        bpy = self.bpy
        mesh = bpy.data.meshes.new(name)
        verts = np.asarray(verts, np.float32)
        faces = np.asarray(faces, np.int32)
        mesh.vertices.add(len(verts))
        mesh.vertices.foreach_set("co", verts.ravel())
        mesh.loops.add(faces.size)
        mesh.loops.foreach_set("vertex_index", faces.ravel())
        mesh.polygons.add(len(faces))
        mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
        mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
        mesh.polygons.foreach_set("material_index", np.asarray(face_material, np.int32))
        mesh.polygons.foreach_set("use_smooth", np.ones(len(faces), bool))
        mesh.update()
        mesh.validate()
        for m in mats:
            mesh.materials.append(m)
        obj = bpy.data.objects.new(name, mesh)
        obj.parent = self.rig
        obj.location = tuple(-np.asarray(pivot, float))  # rig at the neck joint, mesh in world coordinates
        self.bpy.context.scene.collection.objects.link(obj)
        return obj

    def _shape_keys(self, obj, model: MorphModel) -> None:
        basis = obj.shape_key_add(name="Basis", from_mix=False)
        basis.interpolation = "KEY_LINEAR"
        for k, name in enumerate(model.names):
            key = obj.shape_key_add(name=name, from_mix=False)
            key.data.foreach_set("co", (model.template + model.offsets[k]).astype(np.float32).ravel())
            key.slider_min, key.slider_max = 0.0, 1.0
            key.value = 0.0

    def _metres_per_pixel(self, resolution: int) -> float:
        c = self.camera
        return c.distance * c.sensor_mm / c.lens_mm / resolution

    # ----------------------------------------------------------------------------- frames

    def pose(self, weights, yaw: float, pitch: float, roll: float) -> None:
        keys = self.head.data.shape_keys.key_blocks
        for name, w in zip(self.model.names, np.asarray(weights, float)):
            keys[name].value = float(w)
        self.rig.rotation_euler = pose_euler(yaw, pitch, roll)

    def render(self, path: Path | str, *, weights, yaw: float, pitch: float, roll: float, resolution: int,
               samples: int, seed: int, denoise: bool = True) -> Path:
        scene = self.bpy.context.scene
        self.pose(weights, yaw, pitch, roll)
        scene.render.resolution_x = scene.render.resolution_y = int(resolution)
        scene.cycles.samples = int(samples)
        scene.cycles.seed = int(seed) % (2**31)
        scene.cycles.use_denoising = bool(denoise)
        scene.render.filepath = str(path)
        with _quiet_stdout():  # Blender prints a "Saved: ..." line per frame
            self.bpy.ops.render.render(write_still=True)
        strip_png_metadata(path)
        return Path(path)

    def evaluated_vertices(self) -> np.ndarray:
        """The head mesh as Blender evaluates it now (shape keys applied), in mesh coordinates."""
        deps = self.bpy.context.evaluated_depsgraph_get()
        ev = self.head.evaluated_get(deps)
        mesh = ev.to_mesh()
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        ev.to_mesh_clear()
        return co.reshape(-1, 3)


#: PNG chunks that carry metadata, not pixels: text (Blender's date, render time, Cycles timings),
#: modification time and EXIF
_METADATA_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf"}


def strip_png_metadata(path: Path | str) -> None:
    """Drop a PNG's metadata chunks in place, keeping its pixel data byte for byte.

    Blender stamps the wall-clock date and render timings into every PNG (Cycles adds its own
    even with every ``use_stamp_*`` off), so two renders of the same label would differ in
    bytes — and so in the shards' DVC hashes. Without them, a re-render is byte-identical.
    """
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    out, pos = [data[:8]], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length  # length, type, data, CRC
        if data[pos + 4:pos + 8] not in _METADATA_CHUNKS:
            out.append(data[pos:end])
        pos = end
    Path(path).write_bytes(b"".join(out))


@contextmanager
def _quiet_stdout():
    """Silence C-level stdout (file descriptor 1) for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _look_rotation(direction: np.ndarray) -> tuple[float, float, float]:
    """Euler XYZ that turns an object's -Z axis toward ``direction``."""
    d = direction / np.linalg.norm(direction)
    pitch = math.acos(-d[2])  # rotation about X from -Z
    yaw = math.atan2(-d[0], d[1])
    return (pitch, 0.0, yaw)
