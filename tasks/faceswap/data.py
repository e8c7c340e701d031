"""Build the face data set: plan the frames, render them on the Blender pool, pack the splits.

``plan`` draws every frame (:mod:`.sampling`): training identities with still frames, test
identities with still frames and sequences, and the test pairs. ``render_jobs`` turns the plan
into one job per head shape — the identity's own frames, and for the ground truth of each pair
the *target's* frame (expression, pose, look, Cycles seed) rendered with the *source's* shape.
``pack`` reads the renders into ``train.npz`` / ``test.npz`` / ``pairs.npz`` (the layout of
:mod:`.dataset`) and draws a contact sheet.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.config import DataError

from .config import FaceData
from .dataset import (EXPRESSION_NAMES, HAIR_STYLES, SHAPE_NAMES, FaceSet, PairSet, save_faces, save_pairs)
from .sampling import FrameSpec, sample_shape, sequence_frames, still_frames, test_pairs


@dataclass
class Plan:
    train: list[FrameSpec]
    test: list[FrameSpec]
    pairs: list[tuple[int, int]]  # (source row, target row) in test
    shapes: dict[int, np.ndarray]


def plan(cfg: FaceData) -> Plan:
    train_ids = list(range(cfg.train_identities))
    test_ids = list(range(cfg.train_identities, cfg.train_identities + cfg.test_identities))
    shapes = {i: sample_shape(cfg.seed, i) for i in train_ids + test_ids}
    train = [f for i in train_ids for f in still_frames(cfg.seed, i, cfg.train_frames)]
    test = [f for i in test_ids for f in still_frames(cfg.seed, i, cfg.test_frames)]
    rows_by_id: dict[int, list[int]] = {}
    for row, f in enumerate(test):
        rows_by_id.setdefault(f.identity, []).append(row)
    seq_rows: dict[int, list[int]] = {}
    for s in range(cfg.sequences):
        ident = test_ids[s % len(test_ids)]
        frames = sequence_frames(cfg.seed, ident, s, cfg.sequence_length)
        frames = [FrameSpec(f.name, f.identity, f.expression, f.pose, f.look, f.seed, sequence=s, frame=f.frame) for f in frames]
        seq_rows[s] = list(range(len(test), len(test) + len(frames)))
        test += frames
    identity = np.array([f.identity for f in test])
    pairs = test_pairs(cfg.seed, identity, cfg.pairs, rows_by_id, seq_rows)
    return Plan(train, test, pairs, shapes)


def render_jobs(p: Plan, cfg: FaceData, out: Path) -> dict[str, dict[str, Any]]:
    """One job per head shape: its frames, and the ground-truth frames it is the source of."""
    common = {"resolution": cfg.resolution, "samples": cfg.samples, "denoise": False}
    jobs: dict[str, dict[str, Any]] = {}
    for split, frames in (("train", p.train), ("test", p.test)):
        for f in frames:
            job = jobs.setdefault(f"{split}_id{f.identity:05d}", {"shape": p.shapes[f.identity].tolist(), "frames": [],
                                                                   "out": str(out / split), **common})
            job["frames"].append(f.job_frame())
    for k, (s, t) in enumerate(p.pairs):
        src = p.test[s].identity
        job = jobs.setdefault(f"gt_id{src:05d}", {"shape": p.shapes[src].tolist(), "frames": [], "out": str(out / "gt"),
                                                  **common})
        job["frames"].append({**p.test[t].job_frame(), "name": f"pair{k:05d}"})
    return jobs


def _read(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from PIL import Image

    png = folder / f"{name}.png"
    if not png.is_file():
        raise DataError(f"{png}: missing render")
    img = np.asarray(Image.open(png).convert("RGB"))
    mask = np.asarray(Image.open(folder / f"{name}_mask.png").convert("L")) > 127
    return img, mask, np.load(folder / f"{name}_lm.npy")


def _faceset(frames: list[FrameSpec], shapes: dict[int, np.ndarray], folder: Path) -> FaceSet:
    imgs, masks, lms = zip(*(_read(folder, f.name) for f in frames))
    look = lambda k, dt=np.float32: np.array([f.look[k] for f in frames], dt)  # noqa: E731
    return FaceSet(images=np.stack(imgs), masks=np.stack(masks), identity=np.array([f.identity for f in frames], np.int64),
                   shape=np.stack([shapes[f.identity] for f in frames]).astype(np.float32),
                   expression=np.stack([f.expression for f in frames]).astype(np.float32),
                   pose=np.stack([f.pose for f in frames]).astype(np.float32), light_dir=look("light_dir"),
                   light_color=look("light_color"), skin=look("skin"), iris=look("iris"), hair_color=look("hair_color"),
                   hair_style=look("hair_style", np.int64), background=look("background", np.int64),
                   landmarks=np.stack(lms).astype(np.float32), sequence=np.array([f.sequence for f in frames], np.int64),
                   frame=np.array([f.frame for f in frames], np.int64))


def pack(p: Plan, cfg: FaceData, renders: Path, out: Path) -> dict[str, Any]:
    """Write train/test/pairs npz + meta.json under ``out``; return summary counts."""
    from .heads import CAMERA, landmark_vertices

    train = _faceset(p.train, p.shapes, renders / "train")
    test = _faceset(p.test, p.shapes, renders / "test")
    save_faces(out / "train.npz", train)
    save_faces(out / "test.npz", test)
    gts = [_read(renders / "gt", f"pair{k:05d}") for k in range(len(p.pairs))]
    src, tgt = np.array(p.pairs, np.int64).T
    pairs = PairSet(source=src, target=tgt, gt=np.stack([g[0] for g in gts]), gt_masks=np.stack([g[1] for g in gts]),
                    gt_landmarks=np.stack([g[2] for g in gts]).astype(np.float32), sequence=test.sequence[tgt])
    save_pairs(out / "pairs.npz", pairs)
    info = {"train_frames": len(train), "train_identities": int(len(train.identities())), "test_frames": len(test),
            "test_identities": int(len(test.identities())), "pairs": len(pairs), "sequence_pairs": int((pairs.sequence >= 0).sum()),
            "resolution": cfg.resolution, "mask_fraction": float(train.masks.mean())}
    from tasks.common.artifacts import write_json

    write_json(out / "meta.json", {**info, "shape_names": list(SHAPE_NAMES), "expression_names": list(EXPRESSION_NAMES),
                                   "pose_names": ["yaw", "pitch", "roll"], "pose_units": "radians",
                                   "hair_styles": list(HAIR_STYLES), "landmark_vertices": landmark_vertices().tolist(),
                                   "camera": CAMERA.as_label()})
    contact_sheet(train, test, pairs, out / "contact_sheet.png")
    return info


def contact_sheet(train: FaceSet, test: FaceSet, pairs: PairSet, path: Path, n: int = 8) -> None:
    """Rows: training frames; the same frames with mask (green) and landmarks (red); test pairs
    (source | target | ground-truth swap)."""
    from PIL import Image

    def overlay(img, mask, lm):
        o = img.copy()
        o[mask] = (0.5 * o[mask] + 0.5 * np.array([0, 255, 0])).astype(np.uint8)
        for c, r in np.round(lm).astype(int):
            if 0 <= r < o.shape[0] and 0 <= c < o.shape[1]:
                o[r, c] = (255, 0, 0)
        return o

    idx = np.linspace(0, len(train) - 1, n).astype(int)
    row1 = np.concatenate([train.images[i] for i in idx], 1)
    row2 = np.concatenate([overlay(train.images[i], train.masks[i], train.landmarks[i]) for i in idx], 1)
    k = min(n // 2 * 2, len(pairs)) // 2 or 1
    trip = [np.concatenate([test.images[pairs.source[j]], test.images[pairs.target[j]], pairs.gt[j]], 1) for j in range(k)]
    h, w = row1.shape[:2]
    rows = [row1, row2]
    if trip:
        t = np.concatenate(trip, 1)
        pad = np.full((t.shape[0], max(0, w - t.shape[1]), 3), 255, np.uint8)
        rows.append(np.concatenate([t, pad], 1)[:, :w])
    Image.fromarray(np.concatenate(rows, 0)).save(path)
