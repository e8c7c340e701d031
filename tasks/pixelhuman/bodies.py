"""The body data set: what is rendered (the plan), writing it, and reading it back.

Layout of ``bodies/`` (one folder per identity, identity-disjoint train/test)::

    faces.npy  weights.npy (anny's [V, J] skinning weights, shared)  split.json
    <identity>/identity.json  rest.npy  colors.npy  cameras.json
              frames/<frame>.npz   (vertices [V,3], transforms [J,4,4], pose [P])
              images/<frame>__<camera>.png   (RGBA; alpha is the mask)

Training identities: ``train_poses`` poses (a ``walk_share`` of them walk phases) × every ring
camera (the ring turned by a random phase per identity). Test identities: one input pose seen
by every ring camera — the first five (spread by farthest angle) are the input views, the rest
the novel views —, ``test_novel_poses`` held-out poses seen by ``test_views_per_pose`` cameras,
and for the first test identity a walk cycle seen by an orbiting camera (the turntable).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.common.config import DataError

from .cameras import Cameras, load_cameras, ring, write_cameras

CAM_HEIGHT, TARGET_Z = 1.0, 0.72


def input_order(n: int) -> list[int]:
    """Ring cameras ordered by farthest angle from those already chosen, starting in front."""
    chosen = [0]
    while len(chosen) < n:
        def gap(i: int) -> float:
            return min(min(abs(i - c), n - abs(i - c)) for c in chosen)
        chosen.append(max((i for i in range(n) if i not in chosen), key=lambda i: (gap(i), -i)))
    return chosen


def plan(cfg) -> dict[str, Any]:
    """Every identity's poses (bone angles), cameras and renders, from the config alone."""
    from .body import BodyIdentity, procedural_pose, walk_pose

    d = cfg.data
    ids: dict[str, Any] = {}
    order = input_order(d.cameras)

    def poses_for(rng: np.random.Generator, n: int, prefix: str) -> dict[str, dict]:
        n_walk = int(round(d.walk_share * n))
        out = {}
        for i in range(n):
            if i < n_walk:
                out[f"{prefix}walk{i}"] = walk_pose(float(rng.uniform()))
            else:
                out[f"{prefix}{i}"] = procedural_pose(rng, d.max_angle_deg)
        return out

    for split, count, base in (("train", d.train_identities, 1000), ("test", d.test_identities, 9000)):
        for i in range(count):
            name, seed = f"{split}_{i:03d}", base + i
            rng = np.random.default_rng(seed)
            phase = float(rng.uniform(0, 2 * math.pi)) if split == "train" else 0.0
            cams = {f"c{k}": ring_camera(k, d.cameras, d.camera_radius, phase) for k in range(d.cameras)}
            renders: list[tuple[str, str]] = []
            if split == "train":
                poses = poses_for(rng, d.train_poses, "p")
                renders = [(p, c) for p in poses for c in cams]
                entry: dict[str, Any] = {}
            else:
                poses = {"input": procedural_pose(rng, 0.6 * d.max_angle_deg)}
                novel = poses_for(rng, d.test_novel_poses, "novel")
                poses.update(novel)
                renders = [("input", c) for c in cams]
                novel_pose = []
                for p in novel:
                    pick = sorted(rng.choice(d.cameras, size=d.test_views_per_pose, replace=False).tolist())
                    novel_pose += [(p, f"c{k}") for k in pick]
                renders += novel_pose
                entry = {"input_pose": "input", "inputs": [f"c{k}" for k in order[:5]],
                         "novel_view": [("input", f"c{k}") for k in order[5:]], "novel_pose": novel_pose}
                if i == 0:
                    walk = []
                    for f in range(d.walk_frames):
                        ph = f / d.walk_frames
                        poses[f"walkf{f:03d}"] = walk_pose(ph)
                        m = ring(1, d.camera_radius, CAM_HEIGHT, TARGET_Z, 2 * math.pi * ph)[0]
                        cams[f"orbit{f:03d}"] = m
                        walk.append((f"walkf{f:03d}", f"orbit{f:03d}"))
                    renders += walk
                    entry["walk"] = walk
            ids[name] = {"split": split, "seed": seed, "identity": BodyIdentity.sample(seed), "poses": poses,
                         "cameras": cams, "renders": renders, **entry}
    return ids


def ring_camera(k: int, n: int, radius: float, phase: float) -> np.ndarray:
    """Camera ``k`` of ``n`` on the ring, its height alternating over three levels (0.7, 1.0, 1.3 m)."""
    eye_h = CAM_HEIGHT + 0.3 * ((k % 3) - 1)
    m = ring(n, radius, eye_h, TARGET_Z, phase)[k]
    return m


def image_file(frame: str, cam: str) -> str:
    return f"images/{frame}__{cam}.png"


def write_identity(root: Path, name: str, entry: dict[str, Any], cfg) -> dict[str, Any]:
    """Pose the identity with anny and write its mesh data, frames and cameras; return its render job."""
    from tasks.common.artifacts import write_json

    from .body import pose_body, pose_vector, vertex_colors

    out = root / name
    (out / "frames").mkdir(parents=True, exist_ok=True)
    ident = entry["identity"]
    names = list(entry["poses"])
    posed = pose_body(ident, [entry["poses"][p] for p in names])
    weights = np.load(root / "weights.npy")
    np.save(out / "rest.npy", posed["rest"])
    np.save(out / "colors.npy", vertex_colors(ident, posed["rest"], weights))
    for i, p in enumerate(names):
        np.savez(out / "frames" / f"{p}.npz", vertices=posed["vertices"][i], transforms=posed["transforms"][i],
                 pose=pose_vector(entry["poses"][p]))
    write_cameras(out / "cameras.json", list(entry["cameras"]), list(entry["cameras"].values()), cfg.data.resolution,
                  cfg.data.fov_deg)
    write_json(out / "identity.json", {"name": name, "split": entry["split"], **ident.to_dict()})
    return {"out": str(out), "faces": str(root / "faces.npy"), "colors": str(out / "colors.npy"),
            "rest": str(out / "rest.npy"), "frames": {p: str(out / "frames" / f"{p}.npz") for p in names},
            "renders": [{"frame": f, "camera": c, "c2w": np.asarray(entry["cameras"][c]).tolist(),
                         "file": image_file(f, c)} for f, c in entry["renders"]],
            "resolution": cfg.data.resolution, "fov_deg": cfg.data.fov_deg, "samples": cfg.data.samples}


def split_record(ids: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"train": [n for n, e in ids.items() if e["split"] == "train"],
                           "test": [n for n, e in ids.items() if e["split"] == "test"], "subjects": {}}
    for n, e in ids.items():
        if e["split"] == "test":
            rec["subjects"][n] = {k: e[k] for k in ("input_pose", "inputs", "novel_view", "novel_pose") if k in e}
            if "walk" in e:
                rec["subjects"][n]["walk"] = e["walk"]
    rec["frames"] = {n: list(e["poses"]) for n, e in ids.items()}
    rec["renders"] = {n: e["renders"] for n, e in ids.items()}
    return rec


# ------------------------------------------------------------------------------------ reading


@dataclass
class Subject:
    """One identity in memory: cameras, frames and the images that were rendered of it."""

    name: str
    cams: Cameras
    frames: dict[str, dict[str, torch.Tensor]]  # vertices, transforms, pose
    images: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]  # (frame, cam) → rgb [H,W,3] on white, mask [H,W]
    rest: torch.Tensor

    def cam_index(self, cam: str) -> int:
        return self.cams.names.index(cam)


def load_image(path: Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    try:
        im = Image.open(path).convert("RGBA")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), Image.BILINEAR)
    a = torch.from_numpy(np.asarray(im, np.float32) / 255.0)
    alpha = a[..., 3:]
    rgb = a[..., :3] * alpha + (1 - alpha)  # composite on white
    return rgb, alpha[..., 0]


def load_subject(root: Path | str, name: str, renders: list) -> Subject:
    root = Path(root)
    d = root / name
    if not d.is_dir():
        raise DataError(f"{d}: identity folder missing")
    cams = load_cameras(d / "cameras.json")
    frames = {}
    for f in sorted({r[0] for r in renders}):
        z = np.load(d / "frames" / f"{f}.npz")
        frames[f] = {k: torch.from_numpy(z[k]).float() for k in ("vertices", "transforms", "pose")}
    images = {(f, c): load_image(d / image_file(f, c), cams.resolution) for f, c in renders}
    return Subject(name, cams, frames, images, torch.from_numpy(np.load(d / "rest.npy")).float())


def lookup_vertices(n_verts: int, k: int, seed: int = 0) -> torch.Tensor:
    """The fixed subsample of body vertices used for the skinning-weight lookup (same topology for all)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_verts, generator=g)[:min(k, n_verts)].sort().values
