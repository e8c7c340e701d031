"""Procedural anime heads: an identity sampled from a seed → a mesh with 17 expression morphs.

The head is a deformed ellipsoid (large cranium, narrowing jaw, pointed chin). Eyes, brows,
mouth, nose and blush are painted-on parts — flat shapes laid onto the face surface a fraction
of a millimetre above it, as anime models do — and hair is real geometry: a cap, bangs, side
locks and a style-dependent back (short, bob, long, ponytail, twin tails, spiky), each strand a
swept flat tube. Every morph is a target position for the painted parts it moves, so the mesh
is a linear morph model (:class:`~tasks.common.morphs.MorphModel`) whose shape keys
Blender evaluates exactly as :meth:`MorphModel.evaluate` does.

Coordinates: metres, Z up, the face looks along -Y, the eye midpoint at (0, ·, ``Z_EYE``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tasks.common.morphs import ANIME_MORPH_NAMES, Material, MorphModel

from .meshkit import MeshBuilder, ellipse, fan, grid_faces, ribbon, tube

Z_EYE = 0.13  # shared with the human heads: both domains put the eyes at the same height
HAIR_STYLES = ("short", "bob", "long", "ponytail", "twintails", "spiky")
ACCESSORIES = ("none", "ribbon", "cat_ears", "hairclip", "headband")

HAIR_PALETTE = [(0.05, 0.04, 0.05), (0.25, 0.13, 0.06), (0.85, 0.65, 0.25), (0.95, 0.55, 0.7),
                (0.2, 0.35, 0.85), (0.8, 0.82, 0.88), (0.7, 0.12, 0.1), (0.2, 0.6, 0.35),
                (0.45, 0.25, 0.7), (0.95, 0.92, 0.75)]
IRIS_PALETTE = [(0.1, 0.35, 0.9), (0.1, 0.6, 0.3), (0.8, 0.1, 0.15), (0.55, 0.2, 0.8), (0.85, 0.55, 0.1),
                (0.4, 0.22, 0.1), (0.9, 0.35, 0.6), (0.1, 0.65, 0.7)]
SKIN_PALETTE = [(1.0, 0.9, 0.83), (0.98, 0.84, 0.74), (0.95, 0.78, 0.66), (0.85, 0.64, 0.5), (1.0, 0.93, 0.9)]
ACCENT_PALETTE = [(0.9, 0.15, 0.2), (0.15, 0.3, 0.85), (1.0, 0.85, 0.2), (0.95, 0.95, 0.95), (0.3, 0.8, 0.5)]


#: uniform sampling ranges of the face's shape parameters (metres, radians, fractions)
SHAPE_RANGES: dict[str, tuple[float, float]] = {
    "head_width": (0.074, 0.086), "head_depth": (0.082, 0.092), "cranium": (0.088, 0.1),
    "lower_face": (0.095, 0.115), "jaw_narrow": (0.35, 0.55), "chin_power": (1.3, 2.2),
    "eye_drop": (0.008, 0.02), "eye_spacing": (0.03, 0.035), "eye_width": (0.026, 0.032),
    "eye_tall": (0.032, 0.042), "eye_tilt": (-0.12, 0.18), "iris_size": (0.48, 0.62),
    "brow_gap": (0.006, 0.012), "brow_len": (0.02, 0.028), "brow_thick": (0.0022, 0.0038),
    "mouth_drop": (0.5, 0.62), "mouth_width": (0.009, 0.014),
}


@dataclass(frozen=True)
class AnimeIdentity:
    """Everything that makes one character; sampled from a seed, stored as JSON in the plan."""

    seed: int
    head_width: float  # ellipsoid half-axes (m)
    head_depth: float
    cranium: float  # half height above the centre
    lower_face: float  # half height below the centre (longer = longer face)
    jaw_narrow: float  # how much the lower face narrows toward the chin
    chin_power: float  # >1: pointier chin
    eye_drop: float  # eyes sit this far below the head's centre
    eye_spacing: float  # half distance between eye centres
    eye_width: float
    eye_tall: float
    eye_tilt: float  # rad; outer corners up when positive
    iris_size: float  # fraction of the eye
    brow_gap: float
    brow_len: float
    brow_thick: float
    mouth_drop: float  # fraction of the lower face
    mouth_width: float
    hair_style: str
    bangs: int
    bang_length: float  # elevation (rad) the bangs reach down to
    ahoge: bool
    accessory: str
    blush: bool
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    accent: tuple[float, float, float]

    @classmethod
    def sample(cls, seed: int) -> "AnimeIdentity":
        r = np.random.default_rng(seed)
        pick = lambda seq: seq[int(r.integers(len(seq)))]  # noqa: E731
        jitter = lambda c, s=0.06: tuple(float(np.clip(x + r.normal(0, s), 0, 1)) for x in c)  # noqa: E731
        shape = {k: float(r.uniform(lo, hi)) for k, (lo, hi) in SHAPE_RANGES.items()}
        return cls(
            seed=seed, **shape,
            hair_style=pick(HAIR_STYLES), bangs=int(r.integers(5, 10)), bang_length=float(r.uniform(0.02, 0.22)),
            ahoge=bool(r.random() < 0.3), accessory=pick(ACCESSORIES), blush=bool(r.random() < 0.5),
            skin=jitter(pick(SKIN_PALETTE), 0.02), hair=jitter(pick(HAIR_PALETTE)),
            iris=jitter(pick(IRIS_PALETTE)), accent=pick(ACCENT_PALETTE),
        )

    @classmethod
    def canonical(cls) -> "AnimeIdentity":
        """The average character (every shape range's midpoint): the anime domain's template."""
        shape = {k: (lo + hi) / 2 for k, (lo, hi) in SHAPE_RANGES.items()}
        return cls(seed=0, **shape, hair_style="short", bangs=7, bang_length=0.12, ahoge=False, accessory="none",
                   blush=False, skin=SKIN_PALETTE[0], hair=HAIR_PALETTE[1], iris=IRIS_PALETTE[0], accent=ACCENT_PALETTE[0])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnimeIdentity":
        d = dict(d)
        for k in ("skin", "hair", "iris", "accent"):
            d[k] = tuple(d[k])
        return cls(**d)


class _Face:
    """The face surface: an ellipsoid whose lower half narrows to a chin, with its inverse map."""

    def __init__(self, ident: AnimeIdentity):
        self.a, self.b, self.c_up, self.c_low = ident.head_width, ident.head_depth, ident.cranium, ident.lower_face
        self.k, self.p = ident.jaw_narrow, ident.chin_power
        self.zc = Z_EYE + ident.eye_drop

    def _scales(self, v):
        low = np.clip(-np.sin(v), 0, None) ** self.p
        return 1 - self.k * low, 1 - 0.35 * self.k * low  # width, depth

    def point(self, u, v, scale: float = 1.0):
        """u: azimuth (0 = front, +: toward the character's left); v: elevation."""
        u, v = np.broadcast_arrays(np.asarray(u, float), np.asarray(v, float))
        sw, sd = self._scales(v)
        cz = np.where(v >= 0, self.c_up, self.c_low)
        x = scale * self.a * sw * np.cos(v) * np.sin(u)
        y = -scale * self.b * sd * np.cos(v) * np.cos(u)
        z = self.zc + scale * cz * np.sin(v)
        return np.stack([x, y, z], -1)

    def project(self, xz: np.ndarray, lift: float) -> np.ndarray:
        """Lay 2-D points (x, z) on the front of the face, ``lift`` metres toward the viewer."""
        x, z = xz[..., 0], xz[..., 1]
        rel = (z - self.zc) / np.where(z >= self.zc, self.c_up, self.c_low)
        v = np.arcsin(np.clip(rel, -0.999, 0.999))
        sw, sd = self._scales(v)
        su = np.clip(x / (self.a * sw * np.cos(v)), -0.999, 0.999)
        y = -self.b * sd * np.cos(v) * np.sqrt(1 - su**2)
        return np.stack([x, y - lift, z], -1)


# Paint layers, in metres above the skin: later layers cover earlier ones.
LIFT = {"blush": 0.0003, "nose": 0.0003, "sclera": 0.0006, "mouth": 0.0006, "iris": 0.001,
        "pupil": 0.0013, "highlight": 0.0016, "lash": 0.0019, "brow": 0.0008}


def build_anime_head(ident: AnimeIdentity) -> MorphModel:
    face = _Face(ident)
    mb = MeshBuilder(ANIME_MORPH_NAMES)
    m = _materials(ident)

    _head_and_neck(mb, face, m, ident)
    for side, name in ((+1, "left"), (-1, "right")):
        _eye(mb, face, m, ident, side, name)
        _brow(mb, face, m, ident, side)
        _ear(mb, face, m, ident, side)
    _mouth(mb, face, m, ident)
    _nose_and_blush(mb, face, m, ident)
    _hair(mb, face, m, ident)
    _accessory(mb, face, m, ident)
    return mb.build("anime", meta={"identity": ident.to_dict(), "pivot": [0.0, 0.0, face.zc - 0.8 * face.c_low]})


def _materials(ident: AnimeIdentity) -> dict[str, Material]:
    dark = lambda c, f: tuple(float(x * f) for x in c)  # noqa: E731
    return {
        "skin": Material("skin", ident.skin, 0.6, outline=True),
        "sclera": Material("sclera", (0.97, 0.97, 1.0), 0.4, emission=0.6),
        "iris": Material("iris", ident.iris, 0.3, emission=0.5),
        "pupil": Material("pupil", dark(ident.iris, 0.25), 0.3, emission=0.3),
        "highlight": Material("highlight", (1.0, 1.0, 1.0), 0.2, emission=1.5),
        "lash": Material("lash", (0.08, 0.05, 0.06), 0.5),
        "brow": Material("brow", dark(ident.hair, 0.6), 0.6),
        "mouth": Material("mouth", (0.45, 0.1, 0.12), 0.5, emission=0.2),
        "nose": Material("nose", dark(ident.skin, 0.82), 0.6),
        "blush": Material("blush", (1.0, 0.62, 0.66), 0.6, emission=0.2),
        "hair": Material("hair", ident.hair, 0.35, outline=True),
        "accent": Material("accent", ident.accent, 0.4, outline=True),
    }


def _head_and_neck(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity) -> None:
    nu, nv = 48, 28
    u = np.linspace(-np.pi, np.pi, nu, endpoint=False)
    v = np.linspace(-np.pi / 2 + 0.02, np.pi / 2 - 0.02, nv)
    pts = face.point(u[None, :], v[:, None]).reshape(-1, 3)
    bottom, top = face.point(0.0, -np.pi / 2)[None], face.point(0.0, np.pi / 2)[None]
    verts = np.vstack([pts, bottom, top])
    faces = [grid_faces(nv, nu, wrap=True)]
    b, t = len(pts), len(pts) + 1
    faces.append(np.array([(b, (i + 1) % nu, i) for i in range(nu)], np.int32))
    last = (nv - 1) * nu
    faces.append(np.array([(t, last + i, last + (i + 1) % nu) for i in range(nu)], np.int32))
    mb.add(verts, np.vstack(faces), m["skin"], regions=["skin"])
    # Neck: a tube from inside the jaw down out of frame.
    z0 = face.zc - 0.55 * face.c_low
    path = np.array([[0, 0.012, z0], [0, 0.014, z0 - 0.06], [0, 0.016, z0 - 0.14]])
    w = np.full(3, 0.062 * ident.head_width / 0.08)
    mb.add(*tube(path, w, w * 0.95, np.array([0, -1.0, 0]), segments=16), m["skin"], regions=["neck"])


def _eye(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity, side: int, name: str) -> None:
    """One eye in its own (s, t) frame: s from inner (-1) to outer (+1) corner, t up."""
    cx, cz = side * ident.eye_spacing, Z_EYE
    hw, hh = ident.eye_width / 2, ident.eye_tall / 2
    cos_t, sin_t = np.cos(ident.eye_tilt), np.sin(ident.eye_tilt)

    def to_face(st: np.ndarray, layer: str) -> np.ndarray:
        s, t = st[..., 0] * hw, st[..., 1] * hh
        x = cx + side * (s * cos_t - t * sin_t * 0.5)
        z = cz + t + s * sin_t
        return face.project(np.stack([x, z], -1), LIFT[layer])

    # Shapes (rest), in (s, t).
    n = 28
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    sclera = np.stack([np.sign(np.cos(ang)) * np.abs(np.cos(ang)) ** 0.8, np.sign(np.sin(ang)) * np.abs(np.sin(ang)) ** 0.9], 1)
    sclera[:, 1] = np.minimum(sclera[:, 1], 0.88)
    ir_c = np.array([0.02, -0.06])
    iris = ir_c + ellipse(24, ident.iris_size, ident.iris_size * 1.55)
    pupil = ir_c + np.array([0, 0.08]) + ellipse(16, ident.iris_size * 0.45, ident.iris_size * 0.75)
    hl1 = np.array([-0.28 * side, 0.35]) + ellipse(10, 0.2, 0.24)  # light from the image's upper left
    hl2 = np.array([0.22 * side, -0.42]) + ellipse(8, 0.09, 0.09)
    s_lash = np.linspace(-1.05, 1.18, 22)
    lash_c = np.stack([s_lash, 0.86 + 0.12 * (1 - np.clip(np.abs(s_lash), 0, 1) ** 2) * 0.6 + 0.25 * np.clip(s_lash - 0.8, 0, None)], 1)
    lash_w = 0.1 + 0.08 * (s_lash + 1.05) / 2.23
    s_low = np.linspace(0.15, 0.95, 10)
    low_c = np.stack([s_low, -0.95 + 0.25 * s_low**2], 1)
    low_w = np.full(10, 0.035)

    # Targets, as functions of (s, t) for the filled parts and of the stroke centre for lashes.
    def closed_line(s):  # relaxed closed eye: a gentle downward arc
        return -0.35 - 0.15 * (1 - np.clip(s, -1, 1) ** 2)

    def smile_line(s):  # happy eye: an upward arc
        return -0.2 + 0.4 * (1 - np.clip(s, -1, 1) ** 2)

    def squash(st, line):
        return np.stack([st[:, 0], line(st[:, 0]) + 0.04 * st[:, 1]], 1)

    def widen(st):
        return np.stack([st[:, 0] * 1.08, st[:, 1] * 1.25 + 0.06], 1)

    def shrink(st):
        return ir_c + (st - ir_c) * 0.6

    def add_fill(st, layer, mat, extra=None):
        center = st.mean(0)
        verts2d, faces = fan(st, center)
        targets = {
            f"eye_close_{name}": to_face(squash(verts2d, closed_line), layer),
            f"eye_smile_{name}": to_face(squash(verts2d, smile_line), layer),
            f"eye_wide_{name}": to_face(widen(verts2d), layer),
        }
        if extra == "iris":
            targets["iris_small"] = to_face(shrink(verts2d), layer)
        mb.add(to_face(verts2d, layer), faces, mat, regions=[f"eye_{name}"], morphs=targets)

    add_fill(sclera, "sclera", m["sclera"])
    add_fill(iris, "iris", m["iris"], extra="iris")
    add_fill(pupil, "pupil", m["pupil"], extra="iris")
    add_fill(hl1, "highlight", m["highlight"], extra="iris")
    add_fill(hl2, "highlight", m["highlight"], extra="iris")

    def add_stroke(center, width, lower: bool):
        def strip(c, w):
            v2, f = ribbon(c, w, np.array([0.0, 1.0]))
            return v2, f

        v2, f = strip(center, width)
        close_c = np.stack([center[:, 0], closed_line(center[:, 0]) - (0.03 if lower else 0.0)], 1)
        smile_c = np.stack([center[:, 0], smile_line(center[:, 0]) - (0.03 if lower else 0.0)], 1)
        targets = {
            f"eye_close_{name}": to_face(strip(close_c, width * (0.4 if lower else 0.55))[0], "lash"),
            f"eye_smile_{name}": to_face(strip(smile_c, width * (0.4 if lower else 0.55))[0], "lash"),
            f"eye_wide_{name}": to_face(strip(widen(center), width)[0], "lash"),
        }
        mb.add(to_face(v2, "lash"), f, m["lash"], regions=[f"eye_{name}"], morphs=targets)

    add_stroke(lash_c, lash_w, lower=False)
    add_stroke(low_c, low_w, lower=True)


def _brow(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity, side: int) -> None:
    s = np.linspace(-1, 1, 12)  # inner → outer
    top = Z_EYE + ident.eye_tall / 2 + ident.brow_gap
    x = side * (ident.eye_spacing + 0.45 * ident.brow_len * s + 0.001)
    z = top + 0.004 * (1 - s**2) - 0.002 * s
    hw = ident.brow_thick / 2 * (1.1 - 0.45 * (s + 1) / 2)

    def stroke(dz):
        c = np.stack([x, z + dz], 1)
        v2, f = ribbon(c, hw, np.array([0.0, 1.0]))
        return face.project(v2, LIFT["brow"]), f

    rest, faces = stroke(0.0)
    targets = {
        "brow_raise": stroke(0.008)[0],
        "brow_angry": stroke(-0.006 * (1 - s) / 2 + 0.003 * (1 + s) / 2)[0],
        "brow_sad": stroke(0.007 * (1 - s) / 2 - 0.002 * (1 + s) / 2)[0],
    }
    mb.add(rest, faces, m["brow"], regions=["brows"], morphs=targets)


def _mouth(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity) -> None:
    zm = face.zc - ident.mouth_drop * face.c_low
    n = 24
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    w0 = ident.mouth_width

    def contour(width, top, bottom):
        c, s = np.cos(ang), np.sin(ang)
        h = np.where(s >= 0, top, bottom)
        return np.stack([width / 2 * c, h * s], 1)

    rest = contour(w0, 0.0006, 0.0007)
    shapes = {
        "mouth_a": contour(w0 * 1.15, 0.0035, 0.012),
        "mouth_i": contour(w0 * 1.7, 0.0016, 0.0035),
        "mouth_u": contour(w0 * 0.6, 0.0032, 0.0042),
        "mouth_e": contour(w0 * 1.4, 0.0025, 0.0065),
        "mouth_o": contour(w0 * 0.95, 0.0045, 0.0085),
    }
    sx = rest[:, 0] / (w0 / 2)
    shapes["mouth_smile"] = rest + np.stack([np.zeros(n), 0.0045 * sx**2 - 0.0015], 1)
    shapes["mouth_frown"] = rest + np.stack([np.zeros(n), -0.0045 * sx**2 + 0.0015], 1)

    def place(c2):
        v2, f = fan(c2, c2.mean(0))
        return face.project(v2 + np.array([0.0, zm]), LIFT["mouth"]), f

    verts, faces = place(rest)
    mb.add(verts, faces, m["mouth"], regions=["mouth"], morphs={k: place(v)[0] for k, v in shapes.items()})


def _nose_and_blush(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity) -> None:
    zn = Z_EYE - 0.45 * (Z_EYE - (face.zc - ident.mouth_drop * face.c_low)) - 0.004
    tri = np.array([[0.0, zn + 0.004], [0.0022, zn - 0.0005], [-0.0008, zn - 0.0012]])
    v, f = fan(tri, tri.mean(0))
    mb.add(face.project(v, LIFT["nose"]), f, m["nose"], regions=["nose"])
    if ident.blush:
        for side in (1, -1):
            c = np.array([side * (ident.eye_spacing + 0.004), Z_EYE - ident.eye_tall / 2 - 0.008])
            ring = c + ellipse(16, 0.008, 0.0035)
            v, f = fan(ring, c)
            mb.add(face.project(v, LIFT["blush"]), f, m["blush"], regions=["blush"])


def _ear(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity, side: int) -> None:
    c = face.point(side * np.pi / 2 * 0.97, -0.12) + np.array([side * 0.003, 0.01, 0])
    nu, nv = 12, 8
    u = np.linspace(0, 2 * np.pi, nu, endpoint=False)[None]
    v = np.linspace(-np.pi / 2 + 0.1, np.pi / 2 - 0.1, nv)[:, None]
    u, v = np.broadcast_arrays(u, v)
    pts = np.stack([0.005 * np.cos(v) * np.cos(u) * side, 0.011 * np.cos(v) * np.sin(u), 0.019 * np.sin(v)], -1).reshape(-1, 3)
    mb.add(c + pts, grid_faces(nv, nu, wrap=True), m["skin"], regions=["ears"], inside=c)


# ----------------------------------------------------------------------------------- hair


def _hair(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity) -> None:
    r = np.random.default_rng(ident.seed + 7)
    hair = m["hair"]
    center = np.array([0.0, 0.0, face.zc])

    def outward(p):
        d = p - center
        return d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-12)

    # Cap: the scalp, from a hairline on the forehead down to the nape.
    nu, nv = 48, 14
    u = np.linspace(-np.pi, np.pi, nu, endpoint=False)
    front = np.cos(u) > 0
    v_lo = np.where(front, 0.45 - 0.35 * (1 - np.cos(u)) ** 1.5, -0.55 + 0.25 * np.cos(u) ** 2)
    v_lo = np.minimum(v_lo, 0.45)
    vv = v_lo[None, :] + (np.pi / 2 - 0.05 - v_lo[None, :]) * np.linspace(0, 1, nv)[:, None]
    cap = face.point(u[None, :], vv, scale=1.06).reshape(-1, 3)
    top = face.point(0.0, np.pi / 2, scale=1.06)[None]
    faces = [grid_faces(nv, nu, wrap=True)]
    t = len(cap)
    last = (nv - 1) * nu
    faces.append(np.array([(t, last + i, last + (i + 1) % nu) for i in range(nu)], np.int32))
    mb.add(np.vstack([cap, top]), np.vstack(faces), hair, regions=["hair"], inside=center)

    def strand(u0, v0, u1, v1, width, scale0=1.09, scale1=1.12, n=10, thick=0.004, droop=0.0):
        s = np.linspace(0, 1, n)
        uu, vv = u0 + (u1 - u0) * s, v0 + (v1 - v0) * s
        path = face.point(uu, vv, scale=scale0 + (scale1 - scale0) * s)
        path[:, 2] -= droop * np.sin(np.pi * s)
        w = width * (1 - s) ** 0.8 + 0.0008
        mb.add(*tube(path, w, np.full(n, thick) * (1 - 0.6 * s), outward), hair, regions=["hair"])

    # Bangs: strands from the crown over the forehead.
    nb = ident.bangs
    for i, u0 in enumerate(np.linspace(-1.15, 1.15, nb)):
        u1 = u0 * r.uniform(0.7, 1.1) + r.normal(0, 0.05)
        v1 = ident.bang_length + r.uniform(-0.06, 0.06) + (0.12 if abs(u0) > 0.9 else 0.0)
        if ident.hair_style == "spiky":
            v1 -= 0.05
        strand(u0 * 0.6, 1.15, u1, v1, r.uniform(0.022, 0.032), scale1=1.1 + 0.02 * (i % 2))
    # Side locks, in front of the ears.
    for side in (1, -1):
        length = -0.95 if ident.hair_style in ("long", "bob") else -0.75
        strand(side * 1.3, 0.6, side * 1.25, length, 0.02, scale0=1.08, scale1=1.14, n=12)
    # Back hair.
    style = ident.hair_style
    if style in ("bob", "long"):
        n_back = 16
        drop = 1.0 if style == "bob" else 1.45
        for u0 in np.linspace(1.3, 2 * np.pi - 1.3, n_back):
            strand(u0, 0.5, u0 + r.normal(0, 0.05), -drop, r.uniform(0.035, 0.045), scale0=1.07,
                   scale1=1.2 + (0.25 if style == "long" else 0.08), n=12, thick=0.006)
        if style == "long":
            for side in (1, -1):  # long hair falls in front of the shoulders too
                path = np.array([face.point(side * 1.45, -0.3, 1.12), face.point(side * 1.5, -1.1, 1.2)])
                path = np.vstack([path[0], (path[0] + path[1]) / 2 + [side * 0.01, 0, 0], path[1], path[1] + [side * 0.01, 0, -0.08]])
                mb.add(*tube(path, np.array([0.03, 0.032, 0.028, 0.004]), np.full(4, 0.008), outward), hair, regions=["hair"])
    else:
        for u0 in np.linspace(1.5, 2 * np.pi - 1.5, 10):
            strand(u0, 0.4, u0 + r.normal(0, 0.08), -0.62, r.uniform(0.03, 0.04), scale0=1.07, scale1=1.1, thick=0.005)
    if style == "ponytail":
        root = face.point(np.pi, 0.35, 1.05)
        path = root + np.array([[0, 0, 0], [0, 0.045, -0.02], [0, 0.07, -0.09], [0, 0.075, -0.17], [0, 0.07, -0.23]])
        rad = np.array([0.032, 0.036, 0.03, 0.02, 0.004])
        mb.add(*tube(path, rad, rad, np.array([0, 1.0, 0]), segments=12), hair, regions=["hair"])
    if style == "twintails":
        for side in (1, -1):
            root = face.point(side * 2.0, 0.5, 1.05)
            path = root + np.array([[0, 0, 0], [side * 0.035, 0.01, -0.02], [side * 0.06, 0.015, -0.09], [side * 0.065, 0.01, -0.18], [side * 0.055, 0.0, -0.24]])
            rad = np.array([0.026, 0.03, 0.026, 0.016, 0.003])
            mb.add(*tube(path, rad, rad, np.array([0, -1.0, 0]), segments=12), hair, regions=["hair"])
    if style == "spiky":
        for _ in range(9):
            u0, v0 = r.uniform(-np.pi, np.pi), r.uniform(0.3, 1.2)
            base = face.point(u0, v0, 1.05)
            tip = base + outward(base) * r.uniform(0.03, 0.05) + np.array([0, 0.01, -0.01])
            path = np.linspace(base, tip, 5)
            mb.add(*tube(path, np.linspace(0.03, 0.001, 5), np.linspace(0.012, 0.001, 5), outward), hair, regions=["hair"])
    if ident.ahoge:
        base = face.point(0.3, 1.45, 1.05)
        path = base + np.array([[0, 0, 0], [0.004, -0.01, 0.02], [0.014, -0.022, 0.032], [0.026, -0.024, 0.03]])
        mb.add(*tube(path, np.array([0.008, 0.007, 0.005, 0.001]), np.full(4, 0.002), np.array([0, -1.0, 0])), hair, regions=["hair"])


def _accessory(mb: MeshBuilder, face: _Face, m, ident: AnimeIdentity) -> None:
    acc, mat = ident.accessory, m["accent"]
    if acc == "ribbon":
        c = face.point(0.9, 0.95, 1.12)
        for side in (1, -1):
            wing = c + np.array([[0, 0, 0], [side * 0.025, -0.002, 0.012], [side * 0.028, -0.002, -0.012]])
            mb.add(*tube(np.vstack([wing[0], (wing[1] + wing[2]) / 2]), np.array([0.006, 0.026]), np.array([0.004, 0.004]),
                         np.array([0, -1.0, 0])), mat, regions=["accessory"])
        knot = np.vstack([c - [0.004, 0, 0], c + [0.004, 0, 0]])
        mb.add(*tube(knot, np.array([0.008, 0.008]), np.array([0.008, 0.008]), np.array([0, -1.0, 0])), mat, regions=["accessory"])
    elif acc == "cat_ears":
        for side in (1, -1):
            base = face.point(side * 0.75, 1.05, 1.06)
            tip = base + np.array([side * 0.012, 0.005, 0.045])
            path = np.linspace(base, tip, 5)
            mb.add(*tube(path, np.linspace(0.034, 0.001, 5), np.linspace(0.012, 0.001, 5), np.array([0, -1.0, 0]), segments=10),
                   m["hair"], regions=["accessory"])
            inner = np.linspace(base, tip, 5) + np.array([0, -0.0065, 0])
            mb.add(*tube(inner, np.linspace(0.02, 0.001, 5), np.full(5, 0.001), np.array([0, -1.0, 0])),
                   Material("ear_inner", (1.0, 0.7, 0.75), 0.6), regions=["accessory"])
    elif acc == "hairclip":
        a = face.point(0.85, 0.55, 1.13)
        b = face.point(0.65, 0.62, 1.13)
        mb.add(*tube(np.linspace(a, b, 4), np.full(4, 0.005), np.full(4, 0.003), np.array([0, -1.0, 0])), mat, regions=["accessory"])
    elif acc == "headband":
        u = np.linspace(-1.45, 1.45, 20)
        path = face.point(u, 0.95 - 0.2 * (np.abs(u) / 1.45) ** 2, 1.11)
        mb.add(*tube(path, np.full(20, 0.008), np.full(20, 0.004), lambda p: (p - [0, 0, face.zc]) / np.linalg.norm(p - [0, 0, face.zc], axis=1, keepdims=True)),
               mat, regions=["accessory"])
