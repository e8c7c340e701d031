"""Full bodies from ``anny`` (MakeHuman-based, CC0): identities, poses and their skinning.

An identity is anny's phenotype (gender, age, muscle, weight, height, proportions) plus a skin
colour and simple clothing: a shirt and trousers of random colours, one of them striped, and
dark shoes, painted per vertex from anny's own skinning weights (a vertex belongs to the shirt
when most of its weight is on spine/arm bones above the wrist, and so on) — ours; anny ships
no clothing.

Poses use anny's default ``local-ref`` parameterisation: one 4×4 delta per bone, a rotation in
world-aligned axes about the bone's head (anny's frame: Z up, the body faces −Y). A procedural
pose draws bounded rotations for the limb, spine and head bones (within ±``max_angle`` per
axis, elbows and knees bending one way only); the walk cycle is a sinusoidal gait of hips,
knees, shoulders and elbows. Every frame saved carries what inverse skinning needs: the posed
vertices, the per-bone skinning transforms ``T_j`` (posed bone pose × rest bone pose⁻¹, so that
``v = Σ_j w_j T_j v_rest``, checked against anny's own output), and the pose vector that
conditions the residual deformation. anny's weights (vertex × bone) are the same for every
identity: stored once.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
SKIN = [(0.95, 0.78, 0.68), (0.87, 0.67, 0.53), (0.72, 0.52, 0.38), (0.55, 0.37, 0.25), (0.4, 0.27, 0.18)]
CLOTH = [(0.8, 0.1, 0.1), (0.1, 0.3, 0.8), (0.1, 0.6, 0.2), (0.9, 0.8, 0.2), (0.2, 0.2, 0.25), (0.9, 0.9, 0.9),
         (0.5, 0.2, 0.6), (0.9, 0.5, 0.1)]

#: the bones a pose moves: name → (allowed range per world axis x, y, z as fractions of max_angle)
POSED_BONES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "spine03": ((-0.4, 0.6), (-0.3, 0.3), (-0.4, 0.4)),
    "neck01": ((-0.3, 0.4), (-0.2, 0.2), (-0.5, 0.5)),
    "upperarm01.L": ((-1.0, 1.0), (-1.5, 0.8), (-0.5, 0.5)),
    "upperarm01.R": ((-1.0, 1.0), (-0.8, 1.5), (-0.5, 0.5)),
    "lowerarm01.L": ((-1.5, 0.0), (0.0, 0.0), (0.0, 0.0)),
    "lowerarm01.R": ((-1.5, 0.0), (0.0, 0.0), (0.0, 0.0)),
    "upperleg01.L": ((-1.0, 0.6), (-0.3, 0.3), (-0.2, 0.2)),
    "upperleg01.R": ((-1.0, 0.6), (-0.3, 0.3), (-0.2, 0.2)),
    "lowerleg01.L": ((0.0, 1.5), (0.0, 0.0), (0.0, 0.0)),
    "lowerleg01.R": ((0.0, 1.5), (0.0, 0.0), (0.0, 0.0)),
}


@dataclass(frozen=True)
class BodyIdentity:
    seed: int
    phenotype: dict[str, float]
    skin: tuple[float, float, float]
    shirt: tuple[float, float, float]
    trousers: tuple[float, float, float]
    stripes: int  # 0 none, 1 striped shirt, 2 striped trousers

    @classmethod
    def sample(cls, seed: int) -> "BodyIdentity":
        r = np.random.default_rng(seed)
        pheno = {k: float(r.uniform(0.1, 0.9)) for k in PHENOTYPES}
        pheno["age"] = float(r.uniform(0.45, 0.9))  # adults: anny's age 0.5 ≈ 25 years
        pick = lambda seq: tuple(float(x) for x in seq[int(r.integers(len(seq)))])  # noqa: E731
        shirt = pick(CLOTH)
        trousers = pick([c for c in CLOTH if tuple(c) != shirt])
        return cls(seed=seed, phenotype=pheno, skin=pick(SKIN), shirt=shirt, trousers=trousers,
                   stripes=int(r.integers(3)))

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def anny_body():
    """anny's full body (rig ``anny``, 13,718 vertices); built once per process (~20 s)."""
    try:
        import warp

        warp.config.quiet = True
    except Exception:
        pass
    import anny

    return anny.Anny()


def bone_labels() -> list[str]:
    """anny's bone names, in the order of the weights' columns and the transforms."""
    return list(anny_body().bone_labels)


def bone_index(name: str) -> int:
    labels = list(anny_body().bone_labels)
    if name not in labels:
        raise KeyError(f"anny has no bone {name!r} (some: {labels[:12]})")
    return labels.index(name)


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def procedural_pose(rng: np.random.Generator, max_angle_deg: float) -> dict[str, tuple[float, float, float]]:
    """Euler angles (radians, world x/y/z) per posed bone, uniform within each bone's limits."""
    m = math.radians(max_angle_deg)
    return {b: tuple(float(rng.uniform(lo, hi)) * m for lo, hi in lim) for b, lim in POSED_BONES.items()}


def walk_pose(phase: float) -> dict[str, tuple[float, float, float]]:
    """The walk cycle at ``phase`` ∈ [0, 1): legs swing ±25°, knees bend on the swing, arms counter-swing."""
    s = 2 * math.pi * phase
    d = math.radians
    hip, knee, arm, elbow = d(25), d(35), d(20), d(20)
    pose = {b: (0.0, 0.0, 0.0) for b in POSED_BONES}
    pose["upperleg01.L"] = (-hip * math.sin(s), 0.0, 0.0)
    pose["upperleg01.R"] = (hip * math.sin(s), 0.0, 0.0)
    pose["lowerleg01.L"] = (knee * max(0.0, math.sin(s + 0.6)), 0.0, 0.0)
    pose["lowerleg01.R"] = (knee * max(0.0, -math.sin(s + 0.6)), 0.0, 0.0)
    pose["upperarm01.L"] = (arm * math.sin(s), 0.0, 0.0)
    pose["upperarm01.R"] = (-arm * math.sin(s), 0.0, 0.0)
    pose["lowerarm01.L"] = (-elbow * (0.6 + 0.4 * math.sin(s)), 0.0, 0.0)
    pose["lowerarm01.R"] = (-elbow * (0.6 - 0.4 * math.sin(s)), 0.0, 0.0)
    return pose


def pose_vector(pose: dict[str, tuple[float, float, float]]) -> np.ndarray:
    """The pose code of the residual deformation: sin and cos of every posed bone's angles."""
    a = np.array([pose[b] for b in POSED_BONES], dtype=np.float64).reshape(-1)
    return np.concatenate([np.sin(a), np.cos(a) - 1.0]).astype(np.float32)


def pose_parameters(pose: dict[str, tuple[float, float, float]]):
    """anny's ``pose_parameters`` [1, J, 4, 4] (identity deltas except the posed bones)."""
    import torch

    m = anny_body()
    params = torch.eye(4, dtype=torch.float64).repeat(1, len(m.bone_labels), 1, 1)
    for b, ang in pose.items():
        params[0, bone_index(b), :3, :3] = torch.as_tensor(_rot(*ang))
    return params


def dense_weights() -> np.ndarray:
    """anny's skinning weights (``vertex_bone_indices/weights``) as a dense [V, J] float32 matrix."""
    import torch

    m = anny_body()
    idx, wt = m.vertex_bone_indices, m.vertex_bone_weights  # [V, k] sparse: what anny's own LBS uses
    w = torch.zeros(idx.shape[0], len(m.bone_labels), dtype=torch.float64)
    w.scatter_add_(1, idx.long(), wt.double())
    return w.numpy().astype(np.float32)


def triangles() -> np.ndarray:
    """anny's faces as triangles [F, 3] int32 (its quads split in two)."""
    f = anny_body().faces.numpy()
    if f.shape[1] == 3:
        return f.astype(np.int32)
    return np.concatenate([f[:, [0, 1, 2]], f[:, [0, 2, 3]]]).astype(np.int32)


def pose_body(ident: BodyIdentity, poses: list[dict[str, tuple[float, float, float]]]) -> dict[str, np.ndarray]:
    """Pose an identity: rest vertices [V, 3], posed vertices [P, V, 3] and skinning transforms
    [P, J, 4, 4] (float32), with the body moved so its rest feet stand on z = 0 at the origin."""
    import torch

    m = anny_body()
    params = torch.cat([pose_parameters(p) for p in poses])
    pheno = {k: torch.full((len(poses),), v, dtype=torch.float64) for k, v in ident.phenotype.items()}
    with torch.no_grad():
        out = m(pose_parameters=params, phenotype_kwargs=pheno)
    rest = out["rest_vertices"][0].numpy()
    T = (out["bone_poses"] @ torch.linalg.inv(out["rest_bone_poses"])).numpy()
    verts = out["vertices"].numpy()
    shift = np.array([-rest[:, 0].mean(), -rest[:, 1].mean(), -rest[:, 2].min()])
    S = np.eye(4)
    S[:3, 3] = shift
    T = S @ T @ np.linalg.inv(S)  # the same skinning, expressed in the shifted frame
    return {"rest": (rest + shift).astype(np.float32), "vertices": (verts + shift).astype(np.float32),
            "transforms": T.astype(np.float32)}


def vertex_colors(ident: BodyIdentity, rest: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-vertex RGB [V, 3]: skin, a shirt on the torso and upper arms, trousers, dark shoes."""
    labels = list(anny_body().bone_labels)

    def share(prefixes: tuple[str, ...]) -> np.ndarray:
        cols = [i for i, n in enumerate(labels) if n.startswith(prefixes)]
        return weights[:, cols].sum(1)

    torso = share(("spine", "clavicle", "shoulder", "breast", "pectoral", "upperarm"))
    legs = share(("pelvis", "upperleg", "lowerleg", "root"))
    feet = share(("foot", "toe"))
    col = np.tile(np.asarray(ident.skin, np.float32), (len(rest), 1))
    z = rest[:, 2]
    height = z.max()
    shirt = (torso > 0.5) & (z < 0.82 * height)
    trousers = (legs > 0.5) & ~shirt
    shoes = feet > 0.5
    stripe = (np.floor(z / 0.05) % 2 == 0)
    sc = np.where(((ident.stripes == 1) & stripe)[:, None], 0.5 * np.asarray(ident.shirt), np.asarray(ident.shirt))
    tc = np.where(((ident.stripes == 2) & stripe)[:, None], 0.5 * np.asarray(ident.trousers), np.asarray(ident.trousers))
    col[shirt] = sc[shirt]
    col[trousers] = tc[trousers]
    col[shoes] = (0.08, 0.07, 0.06)
    return col.astype(np.float32)
