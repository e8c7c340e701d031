"""Pinhole cameras of the body renders: a ring around the body, a JSON file, projection in torch.

``cameras.json`` (one per identity folder)::

    {"resolution": 64, "fov_deg": 40.0,
     "cameras": [{"name": "c0", "c2w": [[...4...], ...4 rows]}, ...]}

``c2w`` is Blender's / NeRF-synthetic's camera-to-world matrix (OpenGL camera: x right, y up,
looking down −z). :func:`load_cameras` checks every field and names the one that is wrong.
Projection and ray generation are plain torch (PyTorch3D is not available on this platform),
differentiable and device-agnostic.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tasks.common.config import DataError

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraFileError(DataError):
    """A camera file is missing, unreadable or has a malformed field (named in the message)."""


@dataclass
class Cameras:
    """``n`` square pinhole cameras sharing intrinsics: world→camera (OpenCV) ``w2c`` [n, 4, 4]."""

    names: list[str]
    c2w_gl: Tensor  # [n, 4, 4] Blender convention (what the file holds)
    resolution: int
    fov_deg: float

    @property
    def focal(self) -> float:
        return 0.5 * self.resolution / math.tan(0.5 * math.radians(self.fov_deg))

    @property
    def w2c(self) -> Tensor:
        """World → OpenCV camera (x right, y down, z forward)."""
        c2w_cv = self.c2w_gl @ torch.as_tensor(GL_TO_CV, dtype=self.c2w_gl.dtype, device=self.c2w_gl.device)
        return torch.linalg.inv(c2w_cv)

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, idx: list[int]) -> "Cameras":
        return Cameras([self.names[i] for i in idx], self.c2w_gl[idx], self.resolution, self.fov_deg)

    def to(self, device) -> "Cameras":
        return Cameras(self.names, self.c2w_gl.to(device), self.resolution, self.fov_deg)


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Blender c2w of a camera at ``eye`` looking at ``target`` (OpenGL: −z forward, y up)."""
    f = target - eye
    f = f / np.linalg.norm(f)
    r = np.cross(f, np.asarray(up))
    r = r / np.linalg.norm(r)
    u = np.cross(r, f)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = r, u, -f, eye
    return m


def ring(n: int, radius: float, height: float, target_z: float, phase: float = 0.0) -> list[np.ndarray]:
    """``n`` cameras evenly around the vertical axis, the first in front of the body (−Y)."""
    out = []
    for i in range(n):
        a = phase + 2 * math.pi * i / n - math.pi / 2
        eye = np.array([radius * math.cos(a), radius * math.sin(a), height])
        out.append(look_at(eye, np.array([0.0, 0.0, target_z])))
    return out


def write_cameras(path: Path | str, names: list[str], c2ws: list[np.ndarray], resolution: int, fov_deg: float) -> None:
    from tasks.common.artifacts import write_json

    write_json(path, {"resolution": resolution, "fov_deg": fov_deg,
                      "cameras": [{"name": n, "c2w": np.asarray(m).tolist()} for n, m in zip(names, c2ws)]})


def load_cameras(path: Path | str) -> Cameras:
    """Read and check a camera file; a :class:`CameraFileError` names the bad field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CameraFileError(f"{path}: camera file not found") from None
    except (OSError, ValueError) as e:
        raise CameraFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CameraFileError(f"{path}: must be a JSON object with resolution, fov_deg and cameras")
    res = raw.get("resolution")
    if not isinstance(res, int) or isinstance(res, bool) or not 1 <= res <= 16384:
        raise CameraFileError(f"{path}: resolution: must be an integer number of pixels in 1..16384, got {res!r}")
    fov = raw.get("fov_deg")
    if not isinstance(fov, (int, float)) or isinstance(fov, bool) or not math.isfinite(fov) or not 0 < fov < 180:
        raise CameraFileError(f"{path}: fov_deg: must be a number of degrees in (0, 180), got {fov!r}")
    cams = raw.get("cameras")
    if not isinstance(cams, list) or not cams:
        raise CameraFileError(f"{path}: cameras: must be a non-empty list")
    names, mats = [], []
    for i, c in enumerate(cams):
        where = f"{path}: cameras[{i}]"
        if not isinstance(c, dict):
            raise CameraFileError(f"{where}: must be an object with name and c2w")
        name = c.get("name")
        if not isinstance(name, str) or not name:
            raise CameraFileError(f"{where}.name: must be a non-empty string, got {name!r}")
        try:
            m = np.asarray(c.get("c2w"), dtype=np.float64)
        except (TypeError, ValueError):
            raise CameraFileError(f"{where}.c2w: must be a 4×4 matrix of numbers") from None
        if m.shape != (4, 4):
            raise CameraFileError(f"{where}.c2w: must be a 4×4 matrix, got shape {m.shape}")
        if not np.isfinite(m).all():
            raise CameraFileError(f"{where}.c2w: has non-finite entries")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise CameraFileError(f"{where}.c2w: last row must be [0, 0, 0, 1]")
        R = m[:3, :3]
        if not np.allclose(R.T @ R, np.eye(3), atol=1e-4) or np.linalg.det(R) < 0:
            raise CameraFileError(f"{where}.c2w: rotation part is not a proper rotation")
        if name in names:
            raise CameraFileError(f"{where}.name: duplicate camera name {name!r}")
        names.append(name)
        mats.append(m)
    return Cameras(names, torch.as_tensor(np.stack(mats), dtype=torch.float32), res, float(fov))


def project(points: Tensor, cams: Cameras) -> tuple[Tensor, Tensor]:
    """World points [V, N, 3] (one set per camera) → pixel coords [V, N, 2] (u right, v down,
    pixel centres at +0.5) and camera depth z [V, N]."""
    w2c = cams.w2c.to(points)
    pc = torch.einsum("vij,vnj->vni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    z = pc[..., 2]
    f, c = cams.focal, 0.5 * cams.resolution
    uv = torch.stack([f * pc[..., 0] / z.clamp_min(1e-6) + c, f * pc[..., 1] / z.clamp_min(1e-6) + c], -1)
    return uv, z


def pixel_rays(cams: Cameras, idx: int, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Origins and unit directions [N, 3] of camera ``idx``'s rays through pixel indices [N, 2] (row, col)."""
    c2w_cv = cams.c2w_gl[idx] @ torch.as_tensor(GL_TO_CV, dtype=cams.c2w_gl.dtype, device=cams.c2w_gl.device)
    f, c = cams.focal, 0.5 * cams.resolution
    v, u = pixels[:, 0].to(c2w_cv) + 0.5, pixels[:, 1].to(c2w_cv) + 0.5
    d_cam = torch.stack([(u - c) / f, (v - c) / f, torch.ones_like(u)], -1)
    d = d_cam @ c2w_cv[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    return c2w_cv[:3, 3].expand_as(d), d
