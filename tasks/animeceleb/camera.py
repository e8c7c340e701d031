"""The shared camera and head-pose conventions, in numpy (Blender applies the same numbers).

Both domains are framed by one pinhole camera looking along +Y at the eyes' height, and posed
by one head rig: a rotation about the neck joint (the head model's ``pivot``), with the angle
conventions of :data:`~tasks.common.morphs.POSE_CONVENTION`. Projection here lets tests and
later flows find where a vertex lands in the image without Blender.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .anime_head import Z_EYE


@dataclass(frozen=True)
class CameraSpec:
    distance: float = 0.75  # metres in front of the face (camera at y = -distance)
    height: float = Z_EYE - 0.005
    lens_mm: float = 85.0
    sensor_mm: float = 36.0  # sensor width; square renders fit it horizontally

    @property
    def location(self) -> tuple[float, float, float]:
        return (0.0, -self.distance, self.height)

    def as_label(self) -> dict:
        return asdict(self)

    def project(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """World points [..., 3] → pixel (column, row), row 0 at the top of the image."""
        p = np.asarray(points, float) - np.array(self.location)
        f = self.lens_mm / self.sensor_mm * resolution
        col = resolution / 2 + f * p[..., 0] / p[..., 1]
        row = resolution / 2 - f * p[..., 2] / p[..., 1]
        return np.stack([col, row], -1)


def head_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(yaw) · Rx(−pitch) · Ry(roll), angles in degrees (Blender Euler mode 'YXZ')."""
    y, p, r = np.deg2rad([yaw, -pitch, roll])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])
    return rz @ rx @ ry


def pose_euler(yaw: float, pitch: float, roll: float) -> tuple[float, float, float]:
    """Blender ``rotation_euler`` (x, y, z) in radians for mode 'YXZ' that equals :func:`head_rotation`."""
    return (float(np.deg2rad(-pitch)), float(np.deg2rad(roll)), float(np.deg2rad(yaw)))


def posed_vertices(verts: np.ndarray, pivot, yaw: float, pitch: float, roll: float) -> np.ndarray:
    pivot = np.asarray(pivot, float)
    return (np.asarray(verts, float) - pivot) @ head_rotation(yaw, pitch, roll).T + pivot
