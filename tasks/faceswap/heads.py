"""Face-swap heads: anny identities with a face-shape basis, open eyes and hair with volume.

Extends :mod:`tasks.animeceleb.human_head` (same anny head, same shared frame, same camera) for
face swapping, where the face must be readable at 64–128 px:

* **identity = shape** (:data:`~tasks.faceswap.dataset.SHAPE_NAMES`): anny's six phenotype
  parameters plus the coefficients of :data:`FACE_BASIS`, eight smooth displacement fields
  (face width and length, jaw, chin, nose length and width, brow ridge, cheeks) defined once
  on anny's average head. anny's head topology has no local modifiers, and six phenotype
  sliders alone make faces too alike for hundreds of identities; the basis is ours.
* **open eyes**: larger eyeballs seated in the sockets, with an iris and pupil cap facing the
  camera, so the iris shows between the lids; the frame's expression keeps ``eyeWide*`` ≥ 0.2
  (see :mod:`tasks.faceswap.sampling`).
* **hair with volume**: shells lifted 6–20 mm off the scalp along the normals, tapering to the
  hairline, with a low-frequency lumpiness (``volume``), and a bun; every style is built into
  every head and a frame shows one (the others are transparent), so one Blender scene serves
  all frames of an identity. All parts follow the skin under the expression morphs.
* **face region**: the skin triangles from forehead to chin and ear to ear (material
  ``skin_face``) — what the mask pass rasterises, with the eyeballs.

:func:`face_vertices` is the differentiable torch version of the skin geometry (what the
dataset docstring tells other methods to compute), and :func:`landmark_vertices` picks the
fixed correspondence points.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tasks.animeceleb.anime_head import Z_EYE
from tasks.animeceleb.camera import CameraSpec, posed_vertices
from tasks.animeceleb.human_head import EYE_FRONT_Y, anny_head, anny_vertices
from tasks.animeceleb.meshkit import MeshBuilder, grid_faces, vertex_normals
from tasks.common.morphs import HUMAN_MORPH_NAMES, Material, MorphModel

from .dataset import ANNY_PHENOTYPES, FACE_BASIS_NAMES

EYE_MID = np.array([0.0, EYE_FRONT_Y, Z_EYE])
#: closer than animeceleb's camera (0.75 m): the face, not the whole head, fills the frame
CAMERA = CameraSpec(distance=0.5, height=Z_EYE - 0.03)
#: hair styles that have geometry (``bald`` shows none), with (thickness m, hairline m above the eyes)
HAIR_GEOMETRY = {"short": (0.006, 0.046), "volume": (0.02, 0.04), "bun": (0.009, 0.044)}
N_LANDMARKS = 40


@lru_cache(maxsize=1)
def canonical_neutral() -> tuple[np.ndarray, np.ndarray]:
    """anny's average head (every phenotype 0.5), neutral, in the shared frame: (verts, faces)."""
    verts, joints = anny_vertices({k: 0.5 for k in ANNY_PHENOTYPES}, np.zeros((1, len(HUMAN_MORPH_NAMES))))
    mid = (joints["eye.L"] + joints["eye.R"]) / 2
    return verts[0] + (EYE_MID - mid), anny_head().faces.numpy().astype(np.int32)


def _gauss(x, z, cx, cz, sx, sz):
    return np.exp(-(((x - cx) / sx) ** 2) - ((z - cz) / sz) ** 2)


def _smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a), 0, 1)
    return t * t * (3 - 2 * t)


@lru_cache(maxsize=1)
def face_basis() -> np.ndarray:
    """B [8, V, 3]: the displacement (metres) of each face-shape coefficient at value 1."""
    verts, _ = canonical_neutral()
    rel = verts - EYE_MID
    x, y, z = rel[:, 0], rel[:, 1], rel[:, 2]
    front = 1 - _smoothstep(0.0, 0.05, y)  # the face half of the head (face looks along -Y)
    face_z = _smoothstep(-0.16, -0.12, z) * (1 - _smoothstep(0.04, 0.08, z))
    ax = np.abs(x)
    sx = np.sign(x)
    B = np.zeros((len(FACE_BASIS_NAMES), len(verts), 3))
    B[0, :, 0] = 0.014 * x / 0.07 * front * face_z  # face_width
    B[1, :, 2] = -0.016 * np.clip(-z / 0.12, 0, 1) * front  # face_length (chin drops)
    B[2, :, 0] = 0.016 * x / 0.07 * _smoothstep(-0.02, -0.09, z) * front  # jaw_width
    chin = _gauss(x, z, 0.0, -0.11, 0.03, 0.025) * front
    B[3, :, 1], B[3, :, 2] = -0.012 * chin, -0.005 * chin  # chin
    nose = _gauss(x, z, 0.0, -0.035, 0.016, 0.03) * (1 - _smoothstep(-0.04, -0.01, y))
    B[4, :, 1] = -0.010 * nose  # nose_length (tip forward)
    B[5, :, 0] = 0.006 * sx * _gauss(ax, z, 0.015, -0.045, 0.012, 0.02) * front  # nose_width
    brow = _gauss(x, z, 0.0, 0.022, 0.045, 0.013) * front
    B[6, :, 1] = -0.008 * brow  # brow ridge
    cheek = _gauss(ax, z, 0.045, -0.04, 0.022, 0.028) * front
    B[7, :, 0], B[7, :, 1] = 0.008 * sx * cheek, -0.006 * cheek  # cheek_fullness
    # the eyeballs move rigidly with their lids (a deformed eyeball pokes through the lids)
    for sign in (1, -1):
        c = EYE_MID + np.array([sign * EYE_HALF_SPACING, 0.0, 0.0])
        d = np.linalg.norm(verts - c, axis=1)
        ball, lids = d < EYEBALL_MAX + 0.001, (d > 0.018) & (d < 0.024)
        B[:, ball] = B[:, lids].mean(1, keepdims=True)
    return B


EYE_HALF_SPACING = 0.0295  # anny's average head: eye joints at x = ±29.5 mm


def split_shape(shape: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    shape = np.asarray(shape, float)
    n = len(ANNY_PHENOTYPES)
    return {k: float(shape[i]) for i, k in enumerate(ANNY_PHENOTYPES)}, shape[n:]


def face_region(rest: np.ndarray) -> np.ndarray:
    """Bool [V]: skin vertices of the face — forehead to chin, ear to ear, front of the head."""
    rel = rest - EYE_MID
    x, y, z = rel[:, 0], rel[:, 1], rel[:, 2]
    front = y < 0.03 - 0.4 * np.clip(np.abs(x) - 0.05, 0, None)
    below_chin = (z < -0.085) & (y > -0.02 + 0.5 * (-0.085 - z))
    return front & (z > -0.135) & (z < 0.055) & (np.abs(x) < 0.066) & ~below_chin


@lru_cache(maxsize=1)
def landmark_vertices() -> np.ndarray:
    """K fixed vertex ids spread over the face region (farthest-point sampling on the average head)."""
    verts, _ = canonical_neutral()
    cand = np.flatnonzero(face_region(verts))
    pts = verts[cand]
    # start at the vertex closest to the nose tip (most negative y)
    chosen = [int(np.argmin(pts[:, 1]))]
    d = np.linalg.norm(pts - pts[chosen[0]], axis=1)
    for _ in range(N_LANDMARKS - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(pts - pts[i], axis=1))
    return cand[np.array(chosen)]


def build_face_model(shape: np.ndarray) -> MorphModel:
    """The head of identity ``shape`` [P] as a morph model (52 ARKit morphs), every hair style in it."""
    pheno, coeffs = split_shape(shape)
    k = len(HUMAN_MORPH_NAMES)
    verts, joints = anny_vertices(pheno, np.vstack([np.zeros(k), np.eye(k)]))
    shift = EYE_MID - (joints["eye.L"] + joints["eye.R"]) / 2
    rest = verts[0] + shift + np.einsum("j,jvc->vc", coeffs, face_basis())
    offsets = verts[1:] - verts[0]
    faces = anny_head().faces.numpy().astype(np.int32)

    mb = MeshBuilder(HUMAN_MORPH_NAMES)
    eyes = [joints[f"eye.{side}"] + shift for side in ("L", "R")]
    part = _eye_parts(rest, faces, eyes)  # 0 skin, 1 sclera, 2 iris, 3 pupil
    in_face = face_region(rest)[faces].all(1) & (part == 0)
    morphs = {n: rest + offsets[i] for i, n in enumerate(HUMAN_MORPH_NAMES)}
    # one vertex set, several materials: the other groups' faces are appended to the same part
    skin = (part == 0) & ~in_face
    first = mb.add(rest, faces[skin], Material("skin", (0.8, 0.6, 0.5), 0.5), regions=["skin"], morphs=morphs)[0]
    groups = [(in_face, Material("skin_face", (0.8, 0.6, 0.5), 0.5)),
              (part == 1, Material("sclera", (0.95, 0.94, 0.92), 0.25)),
              (part == 2, Material("iris", (0.3, 0.2, 0.1), 0.2)),
              (part == 3, Material("pupil", (0.01, 0.01, 0.01), 0.2))]
    for sel, mat in groups:
        mb.faces.append(faces[sel] + first)
        mb.face_mat.append(np.full(int(sel.sum()), mb.material(mat), np.int32))
    normals = vertex_normals(rest, faces)
    for style, (thick, line) in HAIR_GEOMETRY.items():
        _hair(mb, rest, faces, offsets, normals, style, thick, line)
    if "bun" in HAIR_GEOMETRY:
        _bun(mb, rest, offsets)
    pivot = joints["head"] + shift
    return mb.build("human", meta={"shape": np.asarray(shape, float).tolist(), "pivot": pivot.tolist(),
                                   "landmarks": landmark_vertices().tolist()})


def _eye_parts(rest: np.ndarray, faces: np.ndarray, eyes: list[np.ndarray]) -> np.ndarray:
    """Int [F]: 0 skin, 1 sclera, 2 iris, 3 pupil. anny's head carries each eyeball as a skin
    sphere (r ≈ 15.8 mm about the eye joint, found by a sphere fit): painted skin-coloured, it
    is why the heads read as eyes shut. Its faces get eye materials by angle from the gaze (−Y)."""
    part = np.zeros(len(faces), np.int64)
    for c in eyes:
        rel = rest - c
        dist = np.linalg.norm(rel, axis=1)
        ball = (dist < EYEBALL_MAX)[faces].all(1)
        # the iris looks through the lid opening: its axis points at the lid margin's centroid
        # (skin just outside the sphere, in front), not straight down −Y — phenotypes shift the lids
        margin = (dist > EYEBALL_MAX) & (dist < 0.0195) & (rel[:, 1] < -0.008)
        axis = rel[margin].mean(0) if margin.any() else np.array([0.0, -1.0, 0.0])
        axis = axis / np.linalg.norm(axis)
        d = rel[faces].mean(1)
        cos = d @ axis / (np.linalg.norm(d, axis=1) + 1e-12)  # 1 at the pole facing the opening
        # only the front cap is eye: on some phenotypes the lids leave the sphere's sides bare,
        # and a white band there reads as a wound, not an eye; the sides stay skin
        part[ball & (cos > np.cos(np.deg2rad(SCLERA_DEG)))] = 1
        part[ball & (cos > np.cos(np.deg2rad(IRIS_DEG)))] = 2
        part[ball & (cos > np.cos(np.deg2rad(PUPIL_DEG)))] = 3
    return part


EYEBALL_MAX = 0.0172  # metres from the eye joint: the eyeball sphere; the lids start at ~19 mm
SCLERA_DEG, IRIS_DEG, PUPIL_DEG = 58.0, 38.0, 16.0


def _hair(mb, rest, faces, offsets, normals, style, thick, line) -> None:
    rel = rest - EYE_MID
    hairline = np.where(rel[:, 1] < -0.02, line, np.interp(rel[:, 1], [-0.02, 0.06, 0.12], [line, -0.02, -0.07]))
    ears = (np.abs(rel[:, 0]) > 0.06) & (rel[:, 2] < 0.025) & (rel[:, 1] < 0.05)
    above = rel[:, 2] - hairline
    scalp = (above > 0) & ~ears
    sel = scalp[faces].all(1)
    used = np.unique(faces[sel])
    remap = np.full(len(rest), -1)
    remap[used] = np.arange(len(used))
    # thickness tapers in over 2.5 cm above the hairline; 'volume' gets a low-frequency lumpiness
    t = thick * _smoothstep(0.0, 0.025, above[used])
    if style == "volume":
        p = rel[used]
        lump = 1 + 0.25 * np.sin(p[:, 0] * 60 + 1.3) * np.sin(p[:, 1] * 45) + 0.15 * np.sin(p[:, 2] * 70)
        t = t * lump + 0.004 * _smoothstep(0.0, 0.01, above[used])
    t = np.maximum(t, 0.0015)
    shell = rest[used] + t[:, None] * normals[used]
    morphs = {n: shell + offsets[i, used] for i, n in enumerate(HUMAN_MORPH_NAMES)}
    mb.add(shell, remap[faces[sel]], Material(f"hair_{style}", (0.2, 0.12, 0.06), 0.45), regions=[f"hair_{style}"],
           morphs=morphs)


def _bun(mb, rest, offsets) -> None:
    rel = rest - EYE_MID
    c = EYE_MID + np.array([0.0, 0.15, 0.055])
    nu, nv = 16, 10
    u = np.linspace(0, 2 * np.pi, nu, endpoint=False)[None]
    v = np.linspace(-np.pi / 2 + 0.1, np.pi / 2 - 0.1, nv)[:, None]
    u, v = np.broadcast_arrays(u, v)
    pts = c + np.stack([0.034 * np.cos(v) * np.cos(u), 0.028 * np.cos(v) * np.sin(u), 0.03 * np.sin(v)], -1).reshape(-1, 3)
    faces = grid_faces(nv, nu, wrap=True)
    # the bun rides with the skull's top-back vertex nearest to it
    anchor = int(np.argmin(np.linalg.norm(rel - (c - EYE_MID), axis=1)))
    morphs = {n: pts + offsets[i, anchor] for i, n in enumerate(HUMAN_MORPH_NAMES)}
    mb.add(pts, faces, Material("hair_bun", (0.2, 0.12, 0.06), 0.45), regions=["hair_bun"], morphs=morphs)


def project_landmarks(model: MorphModel, expression: np.ndarray, pose_rad: np.ndarray, resolution: int) -> np.ndarray:
    """Pixel (column, row) of the landmark vertices for one frame."""
    verts = model.evaluate(np.asarray(expression, np.float32))[landmark_vertices()]
    yaw, pitch, roll = np.rad2deg(np.asarray(pose_rad, float))
    posed = posed_vertices(verts, model.meta["pivot"], yaw, pitch, roll)
    return CAMERA.project(posed, resolution).astype(np.float32)


def face_vertices(shape, expression, pose):
    """Skin vertices [N, 4538, 3] (world, metres) of (shape [N, P], expression [N, 52], pose [N, 3] rad).

    Torch, differentiable in all three inputs: the computation the dataset docstring spells out.
    """
    import torch

    m = anny_head()
    dt = torch.float64
    shape, expression, pose = (torch.as_tensor(a).to(dt) for a in (shape, expression, pose))
    n = len(ANNY_PHENOTYPES)
    pheno = {k: shape[:, i] for i, k in enumerate(ANNY_PHENOTYPES)}
    out = m(phenotype_kwargs=pheno, facial_actions={k: expression[:, j] for j, k in enumerate(HUMAN_MORPH_NAMES)})
    neutral = m(phenotype_kwargs=pheno, facial_actions={k: torch.zeros_like(expression[:, 0]) for k in HUMAN_MORPH_NAMES})
    bp = neutral["bone_poses"][:, :, :3, 3]
    lab = list(m.bone_labels)
    mid = (bp[:, lab.index("eye.L")] + bp[:, lab.index("eye.R")]) / 2
    shift = torch.as_tensor(EYE_MID, dtype=dt) - mid  # [N, 3]
    basis = torch.as_tensor(face_basis(), dtype=dt)
    v = out["vertices"].to(dt) + shift[:, None] + torch.einsum("nj,jvc->nvc", shape[:, n:], basis)
    pivot = bp[:, lab.index("head")] + shift
    yaw, pitch, roll = pose[:, 0], -pose[:, 1], pose[:, 2]
    c, s = torch.cos, torch.sin
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rz = torch.stack([c(yaw), -s(yaw), zero, s(yaw), c(yaw), zero, zero, zero, one], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, c(pitch), -s(pitch), zero, s(pitch), c(pitch)], -1).view(-1, 3, 3)
    ry = torch.stack([c(roll), zero, s(roll), zero, one, zero, -s(roll), zero, c(roll)], -1).view(-1, 3, 3)
    r = rz @ rx @ ry
    return torch.einsum("nvc,ndc->nvd", v - pivot[:, None], r) + pivot[:, None]
