"""What erank-GS is judged on, against a scene's ground truth.

Image quality: PSNR and SSIM (11×11 Gaussian window, σ = 1.5, the standard constants) on
held-out views. Geometry: the angular error between the rendered normal (alpha-blended
shortest axes) and the true normal pass, and the absolute error of the rendered expected depth,
both on pixels that the true mesh covers and the render covers (alpha > 0.5); the Chamfer
distance between points sampled on the true mesh and points back-projected from the rendered
depth of the held-out views (mean of both directed nearest-neighbour distances).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .render import Camera


def psnr(pred: Tensor, gt: Tensor) -> float:
    mse = float(((pred.clamp(0, 1) - gt) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean SSIM of two [H, W, C] images in [0, 1] (differentiable: also the training loss's D-SSIM)."""
    x, y = pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None]
    c = x.shape[1]
    w = _window().to(x)[None, None].repeat(c, 1, 1, 1)
    mu_x, mu_y = F.conv2d(x, w, groups=c), F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, w, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean()


def geometry_mask(gt_depth: Tensor, alpha: Tensor) -> Tensor:
    return (gt_depth > 0) & (alpha > 0.5)


def normal_angular_error(pred: Tensor, gt: Tensor, mask: Tensor) -> tuple[float, int]:
    """Mean angle (degrees) between [H, W, 3] normal maps on ``mask``; and the pixel count."""
    if int(mask.sum()) == 0:
        return float("nan"), 0
    p = F.normalize(pred[mask], dim=-1)
    g = F.normalize(gt[mask], dim=-1)
    cos = (p * g).sum(-1).clamp(-1, 1)
    return float(torch.rad2deg(torch.acos(cos)).mean()), int(mask.sum())


def depth_abs_error(pred: Tensor, gt: Tensor, mask: Tensor) -> float:
    return float((pred[mask] - gt[mask]).abs().mean()) if int(mask.sum()) else float("nan")


def backproject(depth: Tensor, cam: Camera, mask: Tensor) -> Tensor:
    """World points [M, 3] of the pixels in ``mask`` at camera-z ``depth`` (OpenCV camera)."""
    v, u = mask.nonzero(as_tuple=True)
    z = depth[v, u]
    K = cam.K
    x = (u.float() + 0.5 - K[0, 2]) / K[0, 0] * z
    y = (v.float() + 0.5 - K[1, 2]) / K[1, 1] * z
    pc = torch.stack([x, y, z], -1)
    c2w = torch.linalg.inv(cam.viewmat)
    return pc @ c2w[:3, :3].T + c2w[:3, 3]


def sample_mesh(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniform on a triangle mesh's surface (area-weighted)."""
    rng = np.random.default_rng(seed)
    tri = verts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    pick = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    a, b, c = 1 - s, s * (1 - r2), s * r2
    t = tri[pick]
    return a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]


def chamfer(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Symmetric Chamfer distance (mean of the two mean nearest-neighbour distances), and its halves."""
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return {"chamfer": float("nan"), "accuracy": float("nan"), "completeness": float("nan")}
    acc = float(cKDTree(b).query(a)[0].mean())  # predicted → true: are rendered points on the surface
    comp = float(cKDTree(a).query(b)[0].mean())  # true → predicted: is the surface covered
    return {"chamfer": 0.5 * (acc + comp), "accuracy": acc, "completeness": comp}
