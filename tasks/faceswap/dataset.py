"""The rendered face data of the ``faceswap`` flow, as every method and metric reads it.

On disk (``data/faceswap/faces/``, written by the ``faces`` step)::

    meta.json     names and conventions (SHAPE_NAMES, EXPRESSION_NAMES, landmark vertices,
                  resolution, split sizes)
    train.npz     one FaceSet: the training identities (disjoint from test)
    test.npz      one FaceSet: held-out identities, including short sequences
    pairs.npz     one PairSet: (source, target) pairs over test.npz with their ground-truth swaps

**Identity is face shape.** A face's identity is its ``shape`` vector (see below); everything
else — expression, head pose, skin tone, iris colour, hair (style and colour), lighting
(direction and colour) and background — belongs to the frame and is what a swap must keep
from the target. The ground-truth swap of (source s, target t) is the render of s's shape with
every other label of t: t's expression, pose, skin, iris, hair, lights, background and the same
Cycles seed. So the ground truth of an identity swapped with itself is the target frame itself
(a test checks this, pixel for pixel).

**Labels** (per frame, arrays of length N):

``images``       uint8 [N, H, W, 3], Cycles render (sRGB, "Standard" view transform)
``masks``        bool  [N, H, W], the visible face region, rasterised from the mesh (the skin
                 faces of the face region — forehead to chin, ear to ear — minus whatever hides
                 them: hair, the head's own turn); eyeballs inside the region count as face
``identity``     int   [N], identity id (unique over both splits)
``shape``        float [N, P], P = len(SHAPE_NAMES): the identity (constant per identity)
``expression``   float [N, 52], ARKit blendshape weights in [0, 1], EXPRESSION_NAMES order
                 (anny's ``facial_action_labels`` order: ``browDownLeft`` ... ``tongueOut``)
``pose``         float [N, 3], head (yaw, pitch, roll) in **radians**: the head turns about
                 its neck pivot by R = Rz(yaw) · Rx(−pitch) · Ry(roll) (world: X = image right,
                 −Y = toward the camera, Z = up); yaw > 0 turns the face toward image right,
                 pitch > 0 looks up, roll > 0 tilts the top of the head toward image right
                 (``tasks.common.morphs.POSE_CONVENTION``, which is in degrees)
``light_dir``    float [N, 3], unit vector from the head toward the key light (world frame)
``light_color``  float [N, 3], key light colour (linear RGB, max channel 1)
``skin``         float [N, 3], skin base colour (linear RGB)
``iris``         float [N, 3], iris colour
``hair_color``   float [N, 3], hair colour; ``hair_style`` int [N] (index into HAIR_STYLES)
``background``   int   [N], backdrop id (procedural gradient/noise backdrops, see ``heads``)
``landmarks``    float [N, K, 2], image (column, row) in pixels at H×W of the mesh vertices
                 ``meta["landmark_vertices"]`` (fixed anny head vertex ids, the same K points
                 on every identity: correspondences, not named anatomical points)
``sequence``     int   [N], sequence id (−1 for a still frame); ``frame`` int [N], index in it

**From (shape, expression, pose) to vertices with anny directly** — what
:func:`tasks.faceswap.heads.face_vertices` computes (torch, differentiable in all three):

1. ``m = anny.Anny(rig="makehuman-head", topology="head", facial_actions="all")``
   (float64; 4,538 vertices).
2. ``out = m(phenotype_kwargs={n: shape[:, i] for i, n in enumerate(ANNY_PHENOTYPES)},
   facial_actions={n: expression[:, k] for k, n in enumerate(EXPRESSION_NAMES)})``;
   ``V = out["vertices"]`` [N, 4538, 3]. ``ANNY_PHENOTYPES`` are the first entries of
   ``SHAPE_NAMES``; the remaining ``SHAPE_NAMES`` (``face_*``) are the coefficients of our
   own smooth face-shape deformation basis (:func:`tasks.faceswap.heads.face_basis`), added to
   ``V`` (after step 3's shift) as ``V += Σ_j c_j · B_j`` with ``B_j`` [4538, 3] fixed — anny's phenotype alone gives
   too few distinguishable faces for hundreds of identities.
3. Shared frame: ``V += (0, −0.08, Z_EYE) − mid(eye.L, eye.R)`` where the eye joints are
   ``out["bone_poses"][:, bone_labels.index("eye.L"/"eye.R"), :3, 3]`` of the *neutral*
   expression of the same phenotype; the pivot is the ``head`` joint moved by the same shift.
4. Pose: ``V = (V − pivot) · Rᵀ + pivot`` with R above.
5. Camera (``tasks.faceswap.heads.CAMERA``, a ``tasks.animeceleb.camera.CameraSpec``): pinhole
   at (0, −0.5, Z_EYE − 0.03) looking along +Y, 85 mm lens on a 36 mm sensor;
   ``CAMERA.project(V, H)`` gives pixels (column, row).

Load with :func:`load_faces` and :func:`load_pairs`; a bad or missing file raises
:class:`~tasks.common.config.DataError` naming the file and the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.config import DataError
from tasks.common.morphs import HUMAN_MORPH_NAMES

#: anny phenotype parameters used for identity, in this order (each in [0, 1])
ANNY_PHENOTYPES: tuple[str, ...] = ("gender", "age", "muscle", "weight", "height", "proportions")
#: our face-shape basis coefficients (each in [-1, 1]; see heads.face_basis)
FACE_BASIS_NAMES: tuple[str, ...] = ("face_width", "face_length", "jaw_width", "chin", "nose_length",
                                     "nose_width", "brow_ridge", "cheek_fullness")
#: the identity vector ``shape`` [P]: anny phenotype, then our face basis
SHAPE_NAMES: tuple[str, ...] = ANNY_PHENOTYPES + FACE_BASIS_NAMES
#: the 52 ARKit expression weights, anny's order
EXPRESSION_NAMES: tuple[str, ...] = tuple(HUMAN_MORPH_NAMES)
#: pose angles, radians
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll")
#: hair styles (index = ``hair_style``)
HAIR_STYLES: tuple[str, ...] = ("bald", "short", "volume", "bun")

SPLITS = ("train", "test")


@dataclass
class FaceSet:
    """Frames of one split and all their labels (arrays share the first dimension N)."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    masks: np.ndarray  # bool [N, H, W]
    identity: np.ndarray  # int64 [N]
    shape: np.ndarray  # float32 [N, P]
    expression: np.ndarray  # float32 [N, 52]
    pose: np.ndarray  # float32 [N, 3], radians
    light_dir: np.ndarray  # float32 [N, 3]
    light_color: np.ndarray  # float32 [N, 3]
    skin: np.ndarray  # float32 [N, 3]
    iris: np.ndarray  # float32 [N, 3]
    hair_color: np.ndarray  # float32 [N, 3]
    hair_style: np.ndarray  # int64 [N]
    background: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float32 [N, K, 2], pixels
    sequence: np.ndarray  # int64 [N], -1 = still
    frame: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def subset(self, idx) -> "FaceSet":
        idx = np.asarray(idx)
        return FaceSet(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def identities(self) -> np.ndarray:
        return np.unique(self.identity)

    def batch(self, idx, resolution: int | None = None, device: Any = "cpu") -> "FaceBatch":
        """Torch tensors of frames ``idx`` at ``resolution`` (default: as rendered)."""
        return FaceBatch.from_faces(self, np.asarray(idx), resolution, device)

    def check(self, where: str) -> "FaceSet":
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"{where}: images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if self.images.shape[1] != self.images.shape[2]:
            raise DataError(f"{where}: images must be square, got {self.images.shape[1:3]}")
        if self.masks.shape != self.images.shape[:3]:
            raise DataError(f"{where}: masks {self.masks.shape} do not match images {self.images.shape[:3]}")
        want = {"shape": (len(SHAPE_NAMES),), "expression": (len(EXPRESSION_NAMES),), "pose": (3,),
                "light_dir": (3,), "light_color": (3,), "skin": (3,), "iris": (3,), "hair_color": (3,)}
        for f in fields(self):
            arr = getattr(self, f.name)
            if len(arr) != n:
                raise DataError(f"{where}: {f.name} has {len(arr)} rows, images have {n}")
            if f.name in want and arr.shape[1:] != want[f.name]:
                raise DataError(f"{where}: {f.name} must be [N, {', '.join(map(str, want[f.name]))}], got {arr.shape}")
        if self.landmarks.ndim != 3 or self.landmarks.shape[-1] != 2:
            raise DataError(f"{where}: landmarks must be [N, K, 2], got {self.landmarks.shape}")
        return self


@dataclass
class FaceBatch:
    """Frames as torch tensors, the unit a swap method sees (images in [0, 1])."""

    images: Any  # float [N, 3, R, R]
    masks: Any  # float [N, 1, R, R], 1 = face
    identity: Any  # long [N]
    shape: Any  # float [N, P]
    expression: Any  # float [N, 52]
    pose: Any  # float [N, 3]
    landmarks: Any  # float [N, K, 2], pixels at R
    light_dir: Any  # float [N, 3]
    light_color: Any  # float [N, 3]
    skin: Any  # float [N, 3]
    hair_color: Any  # float [N, 3]

    @classmethod
    def from_faces(cls, faces: FaceSet, idx: np.ndarray, resolution: int | None, device: Any) -> "FaceBatch":
        import torch
        import torch.nn.functional as F

        def t(a, dtype=torch.float32):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        img = t(faces.images[idx]).permute(0, 3, 1, 2) / 255.0
        msk = t(faces.masks[idx]).unsqueeze(1)
        lm = t(faces.landmarks[idx])
        r0 = faces.resolution
        if resolution and resolution != r0:
            img = F.interpolate(img, size=(resolution, resolution), mode="area")
            msk = F.interpolate(msk, size=(resolution, resolution), mode="area")
            lm = lm * (resolution / r0)
        return cls(images=img, masks=msk, identity=t(faces.identity[idx], torch.long), shape=t(faces.shape[idx]),
                   expression=t(faces.expression[idx]), pose=t(faces.pose[idx]), landmarks=lm,
                   light_dir=t(faces.light_dir[idx]), light_color=t(faces.light_color[idx]),
                   skin=t(faces.skin[idx]), hair_color=t(faces.hair_color[idx]))

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class PairSet:
    """Test pairs over ``test.npz``: swap ``source[i]``'s identity onto frame ``target[i]``."""

    source: np.ndarray  # int64 [M], row in the test FaceSet
    target: np.ndarray  # int64 [M], row in the test FaceSet
    gt: np.ndarray  # uint8 [M, H, W, 3], the ground-truth swap render
    gt_masks: np.ndarray  # bool [M, H, W], its face mask
    gt_landmarks: np.ndarray  # float32 [M, K, 2]
    sequence: np.ndarray  # int64 [M]: the target's sequence id (-1 for a still target)

    def __len__(self) -> int:
        return len(self.source)

    def check(self, where: str, faces: FaceSet | None = None) -> "PairSet":
        m = len(self.source)
        for f in fields(self):
            if len(getattr(self, f.name)) != m:
                raise DataError(f"{where}: {f.name} has {len(getattr(self, f.name))} rows, source has {m}")
        if faces is not None:
            if m and (self.source.max() >= len(faces) or self.target.max() >= len(faces) or min(self.source.min(), self.target.min()) < 0):
                raise DataError(f"{where}: source/target index outside the test set (N={len(faces)})")
            if self.gt.shape[1:] != faces.images.shape[1:]:
                raise DataError(f"{where}: gt images {self.gt.shape[1:]} do not match test images {faces.images.shape[1:]}")
        return self


def read_meta(root: Path | str) -> dict[str, Any]:
    p = Path(root) / "meta.json"
    if not p.is_file():
        raise DataError(f"{p}: missing (render the faces first: the faceswap flow's faces step)")
    return json.loads(p.read_text())


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing (render the faces first: the faceswap flow's faces step)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # truncated / not an npz
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def load_faces(root: Path | str, split: str) -> FaceSet:
    """The FaceSet of ``split`` (``train`` or ``test``) under ``root``."""
    if split not in SPLITS:
        raise DataError(f"split: must be one of {SPLITS}, got {split!r}")
    path = Path(root) / f"{split}.npz"
    arrays = _load_npz(path)
    missing = [f.name for f in fields(FaceSet) if f.name not in arrays]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    return FaceSet(**{f.name: arrays[f.name] for f in fields(FaceSet)}).check(str(path))


def save_faces(path: Path | str, faces: FaceSet) -> None:
    faces.check(str(path))
    with open(path, "wb") as fh:
        np.savez(fh, **{f.name: getattr(faces, f.name) for f in fields(faces)})


def load_pairs(root: Path | str) -> PairSet:
    path = Path(root) / "pairs.npz"
    arrays = _load_npz(path)
    missing = [f.name for f in fields(PairSet) if f.name not in arrays]
    if missing:
        raise DataError(f"{path}: missing field(s) {', '.join(missing)}")
    return PairSet(**{f.name: arrays[f.name] for f in fields(PairSet)}).check(str(path))


def save_pairs(path: Path | str, pairs: PairSet) -> None:
    pairs.check(str(path))
    with open(path, "wb") as fh:
        np.savez(fh, **{f.name: getattr(pairs, f.name) for f in fields(pairs)})
