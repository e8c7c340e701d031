"""Human heads from ``anny`` (MakeHuman-based, CC0): phenotype → mesh with 52 ARKit morphs.

An identity is anny's phenotype (gender, age, muscle, weight, height, proportions) plus a skin,
iris and hair colour. anny's facial actions are linear blendshapes (checked: scaling a weight
scales the displacement to 1e-16), so the morph offsets are exactly ``V(e_k) − V(0)`` for the
identity, evaluated once in a batch. anny's head has open eye sockets, so eyeballs (sclera,
iris, pupil) are added behind them; hair is a shell lifted off the scalp. Both follow the skin
under the morphs (the shell copies its scalp vertices' offsets), so the model stays linear.

The head is moved into the shared frame: eye midpoint at (0, -0.08, ``Z_EYE``), facing -Y.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tasks.common.morphs import HUMAN_MORPH_NAMES, Material, MorphModel

from .anime_head import Z_EYE
from .meshkit import MeshBuilder, grid_faces, vertex_normals

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
SKIN = [(0.95, 0.78, 0.68), (0.87, 0.67, 0.53), (0.72, 0.52, 0.38), (0.55, 0.37, 0.25), (0.4, 0.27, 0.18)]
HAIR = [(0.05, 0.04, 0.04), (0.22, 0.13, 0.07), (0.45, 0.3, 0.15), (0.75, 0.6, 0.35), (0.55, 0.2, 0.08), (0.6, 0.6, 0.6)]
IRIS = [(0.25, 0.15, 0.08), (0.2, 0.4, 0.7), (0.3, 0.5, 0.3), (0.45, 0.35, 0.2)]
EYE_FRONT_Y = -0.08


@dataclass(frozen=True)
class HumanIdentity:
    seed: int
    phenotype: dict[str, float]
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    hair_height: float  # hairline, metres above the eyes
    bald: bool

    @classmethod
    def sample(cls, seed: int) -> "HumanIdentity":
        r = np.random.default_rng(seed)
        lo = {"age": 0.35}
        pheno = {k: float(r.uniform(lo.get(k, 0.1), 0.9 if k != "age" else 1.0)) for k in PHENOTYPES}
        pick = lambda seq: tuple(float(x) for x in seq[int(r.integers(len(seq)))])  # noqa: E731
        return cls(seed=seed, phenotype=pheno, skin=pick(SKIN), hair=pick(HAIR), iris=pick(IRIS),
                   hair_height=float(r.uniform(0.035, 0.05)), bald=bool(r.random() < 0.12))

    @classmethod
    def canonical(cls) -> "HumanIdentity":
        """anny's average phenotype (every parameter 0.5), bald: the human domain's template."""
        return cls(seed=0, phenotype={k: 0.5 for k in PHENOTYPES}, skin=SKIN[1], hair=HAIR[0], iris=IRIS[0],
                   hair_height=0.045, bald=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HumanIdentity":
        d = dict(d)
        for k in ("skin", "hair", "iris"):
            d[k] = tuple(d[k])
        return cls(**d)


@lru_cache(maxsize=1)
def anny_head():
    """anny's head-only model (4,538 vertices) with all 52 facial actions; built once per process."""
    try:  # warp (anny's skinning kernels) prints a banner per process otherwise
        import warp

        warp.config.quiet = True
    except Exception:
        pass
    import anny

    model = anny.Anny(rig="makehuman-head", topology="head", facial_actions="all")
    if list(model.facial_action_labels) != HUMAN_MORPH_NAMES:
        raise RuntimeError("anny's facial action labels changed; update HUMAN_MORPH_NAMES")
    return model


def anny_vertices(phenotype: dict[str, float], weights: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vertices [B, V, 3] for expression weights [B, 52], and the eye/head joint positions."""
    import torch

    m = anny_head()
    w = torch.as_tensor(np.atleast_2d(weights), dtype=torch.float64)
    b = len(w)
    with torch.no_grad():
        out = m(phenotype_kwargs={k: torch.full((b,), float(v), dtype=torch.float64) for k, v in phenotype.items()},
                facial_actions={n: w[:, i] for i, n in enumerate(HUMAN_MORPH_NAMES)})
    joints = {n: out["bone_poses"][0, m.bone_labels.index(n), :3, 3].numpy() for n in ("eye.L", "eye.R", "head")}
    return out["vertices"].numpy(), joints


def build_human_head(ident: HumanIdentity) -> MorphModel:
    k = len(HUMAN_MORPH_NAMES)
    verts, joints = anny_vertices(ident.phenotype, np.vstack([np.zeros(k), np.eye(k)]))
    eyes_mid = (joints["eye.L"] + joints["eye.R"]) / 2
    shift = np.array([0.0, EYE_FRONT_Y, Z_EYE]) - eyes_mid
    rest = verts[0] + shift
    offsets = verts[1:] - verts[0]
    faces = anny_head().faces.numpy().astype(np.int32)

    mb = MeshBuilder(HUMAN_MORPH_NAMES)
    skin = Material("skin", ident.skin, 0.55)
    mb.add(rest, faces, skin, regions=["skin"], morphs={n: rest + offsets[i] for i, n in enumerate(HUMAN_MORPH_NAMES)})
    region_masks(mb, rest, shift)
    for side in ("L", "R"):
        _eyeball(mb, joints[f"eye.{side}"] + shift, ident, "left" if side == "L" else "right")
    if not ident.bald:
        _hair_shell(mb, rest, faces, offsets, ident)
    pivot = joints["head"] + shift
    return mb.build("human", meta={"identity": ident.to_dict(), "pivot": pivot.tolist()})


def region_masks(mb: MeshBuilder, rest: np.ndarray, shift: np.ndarray) -> None:
    """Named vertex sets on the skin (anny's left = +X): eyes, mouth, brows."""
    rel = rest - np.array([0.0, EYE_FRONT_Y, Z_EYE])
    front = rel[:, 1] < 0.02
    for side, sx in (("left", 1), ("right", -1)):
        near = (np.abs(rel[:, 0] - sx * 0.031) < 0.02) & (np.abs(rel[:, 2]) < 0.014) & front
        mb.regions.setdefault(f"eye_{side}", []).append(np.flatnonzero(near))
    mouth = (np.abs(rel[:, 0]) < 0.03) & (rel[:, 2] < -0.055) & (rel[:, 2] > -0.085) & front
    brows = (np.abs(rel[:, 0]) < 0.055) & (rel[:, 2] > 0.012) & (rel[:, 2] < 0.03) & front
    mb.regions.setdefault("mouth", []).append(np.flatnonzero(mouth))
    mb.regions.setdefault("brows", []).append(np.flatnonzero(brows))


def _eyeball(mb: MeshBuilder, front: np.ndarray, ident: HumanIdentity, name: str) -> None:
    r = 0.0118
    center = front + np.array([0.0, 0.003, 0.0])
    nu, nv = 20, 14
    u = np.linspace(0, 2 * np.pi, nu, endpoint=False)[None]
    v = np.linspace(-np.pi / 2 + 0.05, np.pi / 2 - 0.05, nv)[:, None]
    u, v = np.broadcast_arrays(u, v)
    # Latitude measured from the front (-Y) pole, so the iris is a cap of rings.
    pts = center + r * np.stack([np.cos(v) * np.cos(u), -np.sin(v), np.cos(v) * np.sin(u)], -1).reshape(-1, 3)
    faces = grid_faces(nv, nu, wrap=True)
    lat = np.repeat(v[:, 0], nu)[faces].mean(1)
    mats = [Material("sclera", (0.92, 0.9, 0.88), 0.2), Material("iris", ident.iris, 0.3),
            Material("pupil", (0.02, 0.02, 0.02), 0.2)]
    for i, (lo, hi) in enumerate(((-9, 0.95), (0.95, 1.27), (1.27, 9))):
        sel = (lat > lo) & (lat <= hi)
        used = np.unique(faces[sel])
        remap = np.full(len(pts), -1)
        remap[used] = np.arange(len(used))
        mb.add(pts[used], remap[faces[sel]], mats[i], regions=[f"eye_{name}"])


def _hair_shell(mb: MeshBuilder, rest: np.ndarray, faces: np.ndarray, offsets: np.ndarray, ident: HumanIdentity) -> None:
    rel = rest - np.array([0.0, EYE_FRONT_Y, Z_EYE])
    # Scalp: above the hairline in front, down to the nape at the back, not over the ears.
    hairline = np.where(rel[:, 1] < -0.02, ident.hair_height, np.interp(rel[:, 1], [-0.02, 0.06], [ident.hair_height, -0.035]))
    ears = (np.abs(rel[:, 0]) > 0.062) & (rel[:, 2] < 0.02) & (rel[:, 1] < 0.06)
    scalp = (rel[:, 2] > hairline) & ~ears
    sel = scalp[faces].all(1)
    used = np.unique(faces[sel])
    remap = np.full(len(rest), -1)
    remap[used] = np.arange(len(used))
    normals = vertex_normals(rest, faces)[used]
    shell = rest[used] + 0.004 * normals
    morphs = {n: shell + offsets[i, used] for i, n in enumerate(HUMAN_MORPH_NAMES)}
    mb.add(shell, remap[faces[sel]], Material("hair", ident.hair, 0.45), regions=["hair"], morphs=morphs)
