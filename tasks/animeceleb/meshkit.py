"""Numpy mesh primitives for building heads: parametric surfaces, swept tubes, flat fans.

No Blender here: a head is assembled as arrays (vertices, triangles, per-face material, and
per-morph target positions) by :class:`MeshBuilder`, which yields a
:class:`~tasks.common.morphs.MorphModel`. Blender only displays the result, so the
geometry is testable and the exported morph model is, by construction, what was rendered.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tasks.common.morphs import Material, MorphModel


def grid_faces(rows: int, cols: int, *, wrap: bool) -> np.ndarray:
    """Triangles of a rows×cols vertex grid (row-major); ``wrap`` closes each row into a ring."""
    faces = []
    ncol = cols if wrap else cols - 1
    for r in range(rows - 1):
        for c in range(ncol):
            c2 = (c + 1) % cols
            a, b, d, e = r * cols + c, r * cols + c2, (r + 1) * cols + c, (r + 1) * cols + c2
            faces += [(a, b, e), (a, e, d)]
    return np.array(faces, np.int32).reshape(-1, 3)


def fan(ring: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A filled polygon: ``center`` then the ``ring`` points, as a triangle fan."""
    verts = np.vstack([center[None], ring])
    n = len(ring)
    faces = np.array([(0, 1 + i, 1 + (i + 1) % n) for i in range(n)], np.int32)
    return verts, faces


def frames_along(path: np.ndarray, up_hint: np.ndarray | Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(side, normal) unit vectors per path point: side ⟂ tangent, normal ≈ the hint."""
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True) + 1e-12
    hint = up_hint(path) if callable(up_hint) else np.broadcast_to(up_hint, path.shape)
    side = np.cross(tang, hint)
    bad = np.linalg.norm(side, axis=1) < 1e-8
    side[bad] = np.cross(tang[bad], np.array([0.0, 0.0, 1.0]))
    side /= np.linalg.norm(side, axis=1, keepdims=True) + 1e-12
    normal = np.cross(side, tang)
    return side, normal


def tube(path: np.ndarray, width: np.ndarray, thickness: np.ndarray, up_hint, *, segments: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A closed tube swept along ``path`` with an elliptic cross-section (width × thickness).

    Flat ellipses make hair strands and ribbons; equal axes make round tails. The ends are
    capped with a fan, so the mesh is closed (it reads as solid from every angle).
    """
    path = np.asarray(path, float)
    side, normal = frames_along(path, up_hint)
    th = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    w = np.asarray(width, float)[:, None, None] / 2
    t = np.asarray(thickness, float)[:, None, None] / 2
    ring = path[:, None, :] + w * np.cos(th)[None, :, None] * side[:, None, :] + t * np.sin(th)[None, :, None] * normal[:, None, :]
    n = len(path)
    verts = np.vstack([ring.reshape(-1, 3), path[:1], path[-1:]])
    faces = [grid_faces(n, segments, wrap=True)]
    s, e = n * segments, n * segments + 1
    faces.append(np.array([(s, (i + 1) % segments, i) for i in range(segments)], np.int32))
    last = (n - 1) * segments
    faces.append(np.array([(e, last + i, last + (i + 1) % segments) for i in range(segments)], np.int32))
    return verts, np.vstack(faces)


def ribbon(center: np.ndarray, half_width: np.ndarray, across: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A flat strip: two rows of points ``center ± half_width·across`` (for painted strokes)."""
    hw = np.asarray(half_width, float)[:, None]
    top, bot = center + hw * across, center - hw * across
    verts = np.vstack([top, bot])
    return verts, grid_faces(2, len(center), wrap=False)


def ellipse(n: int, rx: float, ry: float, *, start: float = 0.0) -> np.ndarray:
    a = start + np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([rx * np.cos(a), ry * np.sin(a)], 1)


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted (unnormalised) triangle normals."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return np.cross(b - a, c - a) / 2


def orient_outward(verts: np.ndarray, faces: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """Flip the winding if the triangles face inward.

    For a closed mesh Σ_f n_f·(c_f − p) = 3·volume for any point p, so its sign says which way
    the whole surface faces; an open shell is judged against a point known to be inside it.
    """
    n = face_normals(verts, faces)
    centers = verts[faces].mean(1)
    ref = verts.mean(0) if inside is None else np.asarray(inside, float)
    if np.einsum("fc,fc->", n, centers - ref) < 0:
        return faces[:, ::-1].copy()
    return faces


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    vn = np.zeros_like(verts, dtype=float)
    fn = face_normals(verts, faces)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    return vn / (np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12)


def outline_shell(model: MorphModel, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """The toon outline ("inverted hull"): the outlined parts pushed out along their vertex
    normals by ``thickness``, with reversed triangles. Drawn black where it faces the camera
    and transparent where it does not, it shows only as a rim around the silhouette."""
    mats = np.array([m.outline for m in model.materials])
    faces = model.faces[mats[model.face_material]]
    used = np.unique(faces)
    if np.abs(model.offsets[:, used]).max(initial=0.0) > 0:
        raise ValueError("outlined parts must not move under morphs (the shell is static)")
    remap = np.full(len(model.template), -1, np.int64)
    remap[used] = np.arange(len(used))
    verts = model.template[used].astype(float)
    faces = remap[faces]
    # Normals per connected part would need topology; the shared positions of separate parts
    # are rare, so one pass over all outlined triangles is enough.
    return verts + thickness * vertex_normals(verts, faces), faces[:, ::-1].astype(np.int32)


class MeshBuilder:
    """Accumulates parts; each part may move under some morphs (given as target positions)."""

    def __init__(self, morph_names: Sequence[str]):
        self.morph_names = list(morph_names)
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.face_mat: list[np.ndarray] = []
        self.materials: list[Material] = []
        self.regions: dict[str, list[np.ndarray]] = {}
        self.targets: dict[str, list[tuple[int, np.ndarray]]] = {m: [] for m in self.morph_names}
        self.n = 0

    def material(self, mat: Material) -> int:
        for i, m in enumerate(self.materials):
            if m.name == mat.name:
                if m != mat:
                    raise ValueError(f"material {mat.name!r} defined twice differently")
                return i
        self.materials.append(mat)
        return len(self.materials) - 1

    def add(self, verts: np.ndarray, faces: np.ndarray, mat: Material, *, regions: Sequence[str] = (),
            morphs: dict[str, np.ndarray] | None = None, inside: np.ndarray | None = None) -> np.ndarray:
        """Add a part; ``morphs[name]`` is the part's vertex positions at weight 1 of ``name``.

        Solid (outlined) parts get outward-facing triangles: a closed part by the sign of its
        enclosed volume, an open shell (``inside`` given) by facing away from that point.
        """
        verts = np.asarray(verts, float)
        faces = np.asarray(faces, np.int32)
        if mat.outline:
            faces = orient_outward(verts, faces, inside)
        idx = np.arange(self.n, self.n + len(verts))
        self.verts.append(verts)
        self.faces.append(np.asarray(faces, np.int32) + self.n)
        self.face_mat.append(np.full(len(faces), self.material(mat), np.int32))
        for r in regions:
            self.regions.setdefault(r, []).append(idx)
        for name, target in (morphs or {}).items():
            if name not in self.targets:
                raise KeyError(f"unknown morph {name!r}")
            target = np.asarray(target, float)
            if target.shape != verts.shape:
                raise ValueError(f"morph {name!r}: target shape {target.shape} != part shape {verts.shape}")
            self.targets[name].append((self.n, target - verts))
        self.n += len(verts)
        return idx

    def build(self, domain: str, meta: dict | None = None) -> MorphModel:
        template = np.vstack(self.verts)
        offsets = np.zeros((len(self.morph_names), len(template), 3))
        for k, name in enumerate(self.morph_names):
            for start, delta in self.targets[name]:
                offsets[k, start : start + len(delta)] += delta
        return MorphModel(
            domain=domain,
            names=self.morph_names,
            template=template,
            faces=np.vstack(self.faces),
            offsets=offsets,
            face_material=np.concatenate(self.face_mat),
            materials=self.materials,
            regions={k: np.concatenate(v) for k, v in self.regions.items()},
            meta=meta or {},
        )
