"""What the face data shows: identities, per-frame looks, expressions, poses, sequences, pairs.

Every draw is a pure function of (seed, identity, frame), so the data set is the same on every
machine and a resumed render reproduces the missing frames exactly. Identity is the face shape
only; every frame of an identity draws its own look (skin tone, iris, hair colour and style, key
light direction and colour, backdrop), expression and pose — so nothing but shape ties a frame
to its identity, and a swap has something to transfer on every axis. A sequence keeps one look
and moves the expression and pose smoothly between two keys (for temporal checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import ANNY_PHENOTYPES, EXPRESSION_NAMES, FACE_BASIS_NAMES, HAIR_STYLES

SKIN = np.array([(0.95, 0.76, 0.64), (0.85, 0.62, 0.48), (0.68, 0.46, 0.32), (0.48, 0.31, 0.2), (0.3, 0.19, 0.12)])
HAIR = np.array([(0.03, 0.025, 0.02), (0.16, 0.09, 0.05), (0.4, 0.25, 0.12), (0.75, 0.58, 0.32), (0.5, 0.16, 0.06),
                 (0.55, 0.55, 0.55)])
IRIS = np.array([(0.22, 0.12, 0.05), (0.15, 0.35, 0.65), (0.25, 0.45, 0.25), (0.4, 0.3, 0.15)])
HAIR_P = (0.1, 0.35, 0.35, 0.2)  # bald, short, volume, bun
N_BACKGROUNDS = 1000
#: expressions a frame draws from (one or two of them, ARKit names; L/R pairs move together)
EXPRESSION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("jawOpen",), ("mouthSmileLeft", "mouthSmileRight"), ("browInnerUp",), ("browDownLeft", "browDownRight"),
    ("mouthFunnel",), ("mouthPucker",), ("cheekPuff",), ("mouthFrownLeft", "mouthFrownRight"),
    ("eyeSquintLeft", "eyeSquintRight"), ("mouthStretchLeft", "mouthStretchRight"), ("jawLeft",), ("jawRight",),
    ("browOuterUpLeft", "browOuterUpRight"), ("noseSneerLeft", "noseSneerRight"), ("mouthLeft",), ("mouthRight",),
)
MAX_YAW, MAX_PITCH, MAX_ROLL = np.deg2rad(25.0), np.deg2rad(12.0), np.deg2rad(8.0)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def sample_shape(seed: int, identity: int) -> np.ndarray:
    """The identity vector [P]: anny phenotype in [0.1, 0.9] (age ≥ 0.4: adults), face basis in [-1, 1]."""
    r = _rng(seed, 1, identity)
    pheno = r.uniform(0.1, 0.9, len(ANNY_PHENOTYPES))
    pheno[ANNY_PHENOTYPES.index("age")] = r.uniform(0.4, 0.95)
    return np.concatenate([pheno, r.uniform(-1, 1, len(FACE_BASIS_NAMES))]).astype(np.float32)


def sample_look(r: np.random.Generator) -> dict[str, Any]:
    t = r.uniform(0, len(SKIN) - 1)
    i = int(min(t, len(SKIN) - 2))
    skin = SKIN[i] + (t - i) * (SKIN[i + 1] - SKIN[i])
    az, el = r.uniform(-1.2, 1.2), r.uniform(-0.1, 0.9)
    warm = r.uniform(-1, 1)
    light = np.array([1.0, 0.9 + 0.05 * warm, 0.8 + 0.2 * warm]) if warm < 0 else np.array([1.0 - 0.25 * warm, 0.9 - 0.05 * warm, 1.0])
    light = light / light.max()
    return {
        "skin": [float(x) for x in skin],
        "iris": [float(x) for x in np.clip(IRIS[r.integers(len(IRIS))] * r.uniform(0.8, 1.2), 0, 1)],
        "hair_color": [float(x) for x in np.clip(HAIR[r.integers(len(HAIR))] * r.uniform(0.8, 1.2), 0, 1)],
        "hair_style": int(r.choice(len(HAIR_STYLES), p=HAIR_P)),
        "light_dir": [float(np.sin(az) * np.cos(el)), float(-np.cos(az) * np.cos(el)), float(np.sin(el))],
        "light_color": [float(x) for x in light],
        "background": int(r.integers(N_BACKGROUNDS)),
    }


def sample_expression(r: np.random.Generator) -> np.ndarray:
    w = np.zeros(len(EXPRESSION_NAMES), np.float32)
    wide = r.uniform(0.2, 0.6)  # open eyes: the upper lids up, irises visible
    for n in ("eyeWideLeft", "eyeWideRight"):
        w[EXPRESSION_NAMES.index(n)] = wide
    for g in r.choice(len(EXPRESSION_GROUPS), size=int(r.integers(0, 3)), replace=False):
        v = r.uniform(0.2, 0.9)
        for n in EXPRESSION_GROUPS[g]:
            w[EXPRESSION_NAMES.index(n)] = v
    return w


def sample_pose(r: np.random.Generator) -> np.ndarray:
    return np.array([r.uniform(-MAX_YAW, MAX_YAW), r.uniform(-MAX_PITCH, MAX_PITCH), r.uniform(-MAX_ROLL, MAX_ROLL)],
                    np.float32)


@dataclass(frozen=True)
class FrameSpec:
    name: str
    identity: int
    expression: np.ndarray
    pose: np.ndarray
    look: dict[str, Any]
    seed: int  # Cycles seed
    sequence: int = -1
    frame: int = 0

    def job_frame(self) -> dict[str, Any]:
        return {"name": self.name, "expression": self.expression.tolist(), "pose": self.pose.tolist(),
                "look": self.look, "seed": self.seed}


def still_frames(seed: int, identity: int, n: int) -> list[FrameSpec]:
    out = []
    for k in range(n):
        r = _rng(seed, 2, identity, k)
        out.append(FrameSpec(f"id{identity:05d}_f{k:02d}", identity, sample_expression(r), sample_pose(r), sample_look(r),
                             seed=int(r.integers(2**31))))
    return out


def sequence_frames(seed: int, identity: int, seq: int, n: int) -> list[FrameSpec]:
    """n frames with one look; expression and pose move along a smooth (cosine-eased) path."""
    r = _rng(seed, 3, identity, seq)
    look = sample_look(r)
    e0, e1 = sample_expression(r), sample_expression(r)
    p0, p1 = sample_pose(r) * 0.6, sample_pose(r) * 0.6
    cyc = int(r.integers(2**31))
    out = []
    for k in range(n):
        t = 0.5 - 0.5 * np.cos(np.pi * k / max(n - 1, 1))
        out.append(FrameSpec(f"id{identity:05d}_s{seq:02d}_f{k:02d}", identity, ((1 - t) * e0 + t * e1).astype(np.float32),
                             ((1 - t) * p0 + t * p1).astype(np.float32), look, seed=cyc, sequence=seq, frame=k))
    return out


def test_pairs(seed: int, identity: np.ndarray, n_pairs: int, rows_by_id: dict[int, list[int]],
               seq_rows: dict[int, list[int]]) -> list[tuple[int, int]]:
    """(source row, target row) pairs over the test split, source identity ≠ target identity.

    The source frame is the source identity's first still; still targets are drawn without
    replacement; every frame of a sequence is a target, with one source per sequence.
    """
    r = _rng(seed, 4)
    ids = np.asarray(sorted(rows_by_id))
    stills = [row for i in ids for row in rows_by_id[int(i)]]
    pairs: list[tuple[int, int]] = []
    for row in r.permutation(stills)[:n_pairs]:
        src_id = int(r.choice(ids[ids != identity[int(row)]]))
        pairs.append((rows_by_id[src_id][0], int(row)))
    for _seq, rows in sorted(seq_rows.items()):
        src_id = int(r.choice(ids[ids != identity[rows[0]]]))
        pairs += [(rows_by_id[src_id][0], int(row)) for row in rows]
    return pairs
