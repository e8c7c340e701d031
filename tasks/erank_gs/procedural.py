"""Procedural scenes with known geometry for erank-GS: meshes and camera rigs, in numpy.

Each scene is a list of parts (triangle mesh + material) mixing smooth surfaces and thin
structures — a vase (a surface of revolution), a chair with thin legs, a plant with a thin stem
and flat leaves, a checker-textured box — built here so the ground-truth mesh is exactly what
Blender renders. World is Z-up, objects sit inside a sphere of radius ≈ 1 around the origin.
Cameras look at the origin from points on a sphere (Fibonacci spiral, elevation-limited); train
and held-out test views use two different spirals, so test views are truly new viewpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCENES = ("vase", "chair", "plant", "box", "still_life")


@dataclass
class Part:
    name: str
    verts: np.ndarray  # [V, 3] float
    faces: np.ndarray  # [F, 3] int
    color: tuple[float, float, float]
    checker: bool = False  # a procedural checker texture (the textured box)


def _box(lo, hi) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[lo[0] if i & 1 == 0 else hi[0], lo[1] if i & 2 == 0 else hi[1], lo[2] if i & 4 == 0 else hi[2]]
                  for i in range(8)])
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    f = [(a, b, c) for a, b, c, d in quads] + [(a, c, d) for a, b, c, d in quads]
    return v, np.array(f)


def _revolve(profile: np.ndarray, segments: int, cap_bottom: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about Z of ``profile`` [(r, z), ...] (bottom to top)."""
    th = np.linspace(0, 2 * math.pi, segments, endpoint=False)
    v = np.array([[r * math.cos(t), r * math.sin(t), z] for r, z in profile for t in th])
    f = []
    for i in range(len(profile) - 1):
        for j in range(segments):
            a, b = i * segments + j, i * segments + (j + 1) % segments
            c, d = a + segments, b + segments
            f += [(a, b, d), (a, d, c)]
    if cap_bottom:
        centre = len(v)
        v = np.vstack([v, [[0, 0, profile[0][1]]]])
        f += [(centre, (j + 1) % segments, j) for j in range(segments)]
    return v, np.array(f)


def _cylinder(p0, p1, radius: float, segments: int = 8) -> tuple[np.ndarray, np.ndarray]:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = np.linalg.norm(axis)
    v, f = _revolve(np.array([[radius, 0.0], [radius, length]]), segments, cap_bottom=False)
    z = axis / length
    x = np.cross(z, [1.0, 0, 0] if abs(z[0]) < 0.9 else [0, 1.0, 0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return p0 + v @ np.stack([x, y, z]), f


def _leaf(base, direction, length: float, width: float, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A flat, slightly curled ellipse-shaped leaf (a two-sided thin sheet)."""
    base, d = np.asarray(base, float), np.asarray(direction, float)
    d /= np.linalg.norm(d)
    side = np.cross(d, [0, 0, 1.0])
    side = side / (np.linalg.norm(side) + 1e-9) if np.linalg.norm(side) > 1e-6 else np.array([1.0, 0, 0])
    up = np.cross(side, d)
    v = []
    for i in range(n + 1):
        t = i / n
        w = width * math.sin(math.pi * t) * 0.5
        droop = -0.25 * length * t * t
        centre = base + d * length * t + up * droop
        v += [centre - side * w, centre + side * w]
    f = []
    for i in range(n):
        a, b, c, e = 2 * i, 2 * i + 1, 2 * i + 2, 2 * i + 3
        f += [(a, b, e), (a, e, c)]
    return np.array(v), np.array(f)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    vs, fs, off = [], [], 0
    for v, f in parts:
        vs.append(v)
        fs.append(f + off)
        off += len(v)
    return np.vstack(vs), np.vstack(fs)


def vase(offset=(0, 0, 0), s: float = 1.0) -> list[Part]:
    z = np.linspace(-0.7, 0.7, 28)
    r = 0.28 + 0.16 * np.sin((z + 0.7) / 1.4 * math.pi * 1.3) - 0.1 * ((z + 0.7) / 1.4) ** 2
    v, f = _revolve(np.stack([r, z], 1), 40)
    return [Part("vase", v * s + offset, f, (0.15, 0.35, 0.75))]


def chair(offset=(0, 0, 0), s: float = 1.0) -> list[Part]:
    legs = [_box((x - 0.03, y - 0.03, -0.75), (x + 0.03, y + 0.03, -0.05))
            for x in (-0.35, 0.35) for y in (-0.35, 0.35)]
    back_bars = [_box((x - 0.025, 0.32, 0.03), (x + 0.025, 0.38, 0.6)) for x in (-0.3, -0.1, 0.1, 0.3)]
    seat = _box((-0.4, -0.4, -0.05), (0.4, 0.4, 0.03))
    top = _box((-0.4, 0.31, 0.6), (0.4, 0.39, 0.72))
    v, f = _merge([seat, top] + legs + back_bars)
    return [Part("chair", v * s + offset, f, (0.55, 0.32, 0.15))]


def plant(offset=(0, 0, 0), s: float = 1.0) -> list[Part]:
    pot_v, pot_f = _revolve(np.array([[0.2, -0.75], [0.26, -0.35], [0.27, -0.33]]), 24)
    stems, leaves = [], []
    rng = np.random.default_rng(3)
    for k in range(5):
        ang = 2 * math.pi * k / 5 + 0.3
        tip = np.array([0.25 * math.cos(ang), 0.25 * math.sin(ang), 0.1 + 0.1 * k])
        stems.append(_cylinder((0, 0, -0.4), tip, 0.012, 6))
        d = np.array([math.cos(ang), math.sin(ang), 0.35 + 0.2 * rng.random()])
        leaves.append(_leaf(tip, d, 0.45, 0.22))
    sv, sf = _merge(stems)
    lv, lf = _merge(leaves)
    return [Part("pot", pot_v * s + offset, pot_f, (0.7, 0.35, 0.25)),
            Part("stems", sv * s + offset, sf, (0.2, 0.45, 0.1)),
            Part("leaves", lv * s + offset, lf, (0.2, 0.65, 0.2))]


def box(offset=(0, 0, 0), s: float = 1.0) -> list[Part]:
    v, f = _box((-0.45, -0.45, -0.45), (0.45, 0.45, 0.45))
    return [Part("box", v * s + offset, f, (0.9, 0.75, 0.2), checker=True)]


def scene_parts(name: str) -> list[Part]:
    if name == "still_life":
        out = []
        for fn, off in ((vase, (-0.45, -0.45, 0.0)), (chair, (0.45, 0.45, 0.0)), (plant, (-0.45, 0.45, 0.0)),
                        (box, (0.45, -0.45, -0.2))):
            out += fn(np.array(off), 0.5)
        return out
    makers = {"vase": vase, "chair": chair, "plant": plant, "box": box}
    if name not in makers:
        raise ValueError(f"scene: unknown procedural scene {name!r}; known: {', '.join(SCENES)}")
    return makers[name]()


def scene_mesh(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The ground-truth triangle mesh of a scene: every part merged."""
    return _merge([(p.verts, p.faces) for p in scene_parts(name)])


def look_at_c2w(eye: np.ndarray, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world in the NeRF/Blender convention (camera looks down −Z, +Y up)."""
    eye = np.asarray(eye, float)
    back = eye - np.asarray(target, float)
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    upv = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, upv, back, eye
    return m


def sphere_views(n: int, radius: float, *, offset: float = 0.0, min_elev_deg: float = -15.0,
                 max_elev_deg: float = 75.0) -> list[np.ndarray]:
    """``n`` camera-to-world matrices on a Fibonacci spiral between two elevations."""
    golden = math.pi * (3 - math.sqrt(5))
    lo, hi = math.sin(math.radians(min_elev_deg)), math.sin(math.radians(max_elev_deg))
    out = []
    for i in range(n):
        zf = lo + (hi - lo) * (i + 0.5) / n
        ring = math.sqrt(max(0.0, 1 - zf * zf))
        th = golden * i + offset
        out.append(look_at_c2w(radius * np.array([ring * math.cos(th), ring * math.sin(th), zf])))
    return out


def turntable_views(n: int, radius: float, elev_deg: float = 20.0) -> list[np.ndarray]:
    e = math.radians(elev_deg)
    return [look_at_c2w(radius * np.array([math.cos(e) * math.cos(t), math.cos(e) * math.sin(t), math.sin(e)]))
            for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]
