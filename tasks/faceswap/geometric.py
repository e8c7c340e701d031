"""The classic geometric swap: warp the source face onto the target's landmarks and blend.

Pre-learning face swapping (Bitouk et al. 2008, the "faceswap" scripts): a Delaunay
triangulation of the target's landmarks, a piecewise-affine warp of the source face triangle
by triangle (OpenCV ``warpAffine``), then Poisson blending (OpenCV ``seamlessClone``) inside the
target's face mask ∩ the warped landmarks' hull, so the source's skin takes the target's
boundary colours. Landmarks are the same mesh vertices on every face (:mod:`.heads`), so the
correspondence is exact — an upper bound on what detected landmarks would give. Nothing is
trained.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.common.config import ConfigSection

from .dataset import FaceBatch, FaceSet
from .methods import MethodRun


class WarpBlendOptions(ConfigSection):
    pass


def _triangles(points: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay

    return Delaunay(points).simplices


def warp_face(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, size: int) -> np.ndarray:
    """Piecewise-affine warp of ``src`` (uint8 [H, W, 3]) taking src_pts onto dst_pts."""
    import cv2

    out = np.zeros((size, size, 3), np.float32)
    cover = np.zeros((size, size), np.float32)
    for tri in _triangles(dst_pts):
        s, d = src_pts[tri].astype(np.float32), dst_pts[tri].astype(np.float32)
        m = cv2.getAffineTransform(s, d)
        warped = cv2.warpAffine(src.astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
        tm = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(tm, np.round(d).astype(np.int32), 1)
        sel = (tm > 0) & (cover == 0)
        out[sel] = warped[sel]
        cover[sel] = 1
    return out


def warp_and_blend(src: np.ndarray, src_pts: np.ndarray, dst: np.ndarray, dst_pts: np.ndarray,
                   dst_mask: np.ndarray) -> np.ndarray:
    import cv2

    size = dst.shape[0]
    warped = warp_face(src, src_pts, dst_pts, size)
    hull = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(dst_pts).astype(np.int32)), 255)
    mask = ((hull > 0) & dst_mask).astype(np.uint8) * 255
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))  # seamlessClone needs a margin inside the image
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = 0, 0, 0, 0
    if mask.sum() == 0:
        return dst.copy()
    ys, xs = np.nonzero(mask)
    # seamlessClone centres the mask's bounding box on ``center``: keep it where it is
    center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    return cv2.seamlessClone(np.clip(warped, 0, 255).astype(np.uint8), dst, mask, center, cv2.NORMAL_CLONE)


class WarpBlend:
    Options = WarpBlendOptions
    learned = False

    def __init__(self, name: str, options: WarpBlendOptions):
        self.name, self.opts = name, options

    def train(self, run: MethodRun, faces: FaceSet, out_dir: Path) -> None:  # nothing to learn
        return None

    def swap(self, out_dir: Path, source: FaceBatch, target: FaceBatch, device: str) -> torch.Tensor:
        to_np = lambda t: (t.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)  # noqa: E731
        src, dst = to_np(source.images), to_np(target.images)
        masks = target.masks[:, 0].cpu().numpy() > 0.5
        out = [warp_and_blend(src[i], source.landmarks[i].cpu().numpy(), dst[i], target.landmarks[i].cpu().numpy(), masks[i])
               for i in range(len(src))]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255).to(target.images.device)
