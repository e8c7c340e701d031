"""Renderers of the Gaussian model: gsplat's CUDA rasterizer on GPU, a torch reference on CPU.

Both return the same images from one camera: RGB composited over a background, the
alpha-blended expected depth (camera z), the alpha-blended Gaussian normal — each Gaussian's
shortest axis, turned to face the camera, as erank-GS and its baselines define a Gaussian's
normal — and the accumulated opacity. They also hand back what densification needs: the
projected means (their gradient is 3DGS's view-space positional gradient) and, for the
absolute-gradient variant (METHODS.md §2.3), the per-pixel gradients summed in absolute value.

The CPU path ("torch") projects with gsplat's own pure-torch pieces
(``gsplat.cuda._torch_impl._quat_scale_to_covar_preci`` and ``_fully_fused_projection``: the same
EWA projection, 0.3-pixel dilation and 3σ radii as the CUDA kernels) and alpha-blends in torch:
Gaussians sorted front to back, α = min(0.99, o·exp(−½ dᵀ Σ'⁻¹ d)), contributions below 1/255
dropped as gsplat drops them, T_i = Π_{j<i}(1 − α_j). The image is cut into tiles and each tile
blends only the Gaussians whose 3σ box touches it, so cost follows coverage, not N × pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from tasks.common.registry import Registry

from .gaussians import GaussianModel

RENDERERS: Registry[Callable[..., "RenderOut"]] = Registry("renderer")
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99


@dataclass
class Camera:
    """A pinhole camera in OpenCV convention (x right, y down, z forward)."""

    viewmat: Tensor  # [4, 4] world → camera
    K: Tensor  # [3, 3]
    width: int
    height: int

    @property
    def center(self) -> Tensor:  # [3] camera position in world space
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


@dataclass
class RenderOut:
    rgb: Tensor  # [H, W, 3]
    depth: Tensor  # [H, W] expected camera z (0 where nothing was hit)
    normal: Tensor  # [H, W, 3] alpha-blended world normals (not renormalised)
    alpha: Tensor  # [H, W]
    means2d: Tensor  # [N, 2] projected means; .grad after backward = view-space positional gradient
    visible: Tensor  # [N] bool: inside the image with a positive radius
    absgrad: Callable[[], Tensor] = field(default=lambda: None)  # → [N, 2] Σ_pixels |∂L/∂μ2d| after backward
    info: dict[str, Any] = field(default_factory=dict)


def gaussian_normals(quats: Tensor, scales: Tensor, means: Tensor, cam_center: Tensor) -> Tensor:
    """Each Gaussian's shortest axis (its normal), flipped to face the camera; [N, 3]."""
    from gsplat.cuda._torch_impl import _quat_to_rotmat

    R = _quat_to_rotmat(quats)  # [N, 3, 3], columns are the local axes
    idx = scales.argmin(-1)
    n = R.gather(2, idx[:, None, None].expand(-1, 3, 1)).squeeze(-1)
    facing = ((cam_center[None] - means) * n).sum(-1, keepdim=True)
    return torch.where(facing < 0, -n, n)


def _features(model: GaussianModel, cam: Camera) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    quats, scales = model.unit_quats, model.scales
    normals = gaussian_normals(quats, scales, model.means, cam.center.to(model.means))
    return quats, scales, model.colors, normals


@RENDERERS.register("torch")
def render_torch(model: GaussianModel, cam: Camera, background: Tensor, *, tile: int = 16,
                 track_absgrad: bool = False) -> RenderOut:
    """CPU reference renderer: gsplat's torch projection + a tiled torch alpha-blend."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    dev = model.means.device
    H, W = cam.height, cam.width
    quats, scales, colors, normals = _features(model, cam)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        model.means, covars, cam.viewmat[None].to(dev), cam.K[None].to(dev), W, H)
    means2d, radii, depths, conics = means2d[0], radii[0], depths[0], conics[0]
    if means2d.requires_grad:
        means2d.retain_grad()
    visible = (radii > 0).all(-1)
    ids = visible.nonzero().squeeze(-1)
    ids = ids[depths[ids].argsort()]  # front to back
    feats = torch.cat([colors, normals, depths[:, None]], 1)  # [N, 7]
    opac = model.opacities
    ys, xs = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
                            torch.arange(W, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    out = torch.zeros(H, W, 8, device=dev)
    deltas: list[tuple[Tensor, Tensor]] = []
    m2d_s, rad_s = means2d[ids].detach(), radii[ids].float()
    tiles: dict[tuple[int, int], Tensor] = {}  # (y0, x0) → blended [P, 8] of the tiles anything touches
    for y0 in range(0, H, tile):
        for x0 in range(0, W, tile):
            y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
            hit = ((m2d_s[:, 0] + rad_s[:, 0] > x0) & (m2d_s[:, 0] - rad_s[:, 0] < x1)
                   & (m2d_s[:, 1] + rad_s[:, 1] > y0) & (m2d_s[:, 1] - rad_s[:, 1] < y1))
            tid = ids[hit]
            if tid.numel() == 0:
                continue
            pix = torch.stack([xs[y0:y1, x0:x1], ys[y0:y1, x0:x1]], -1).reshape(-1, 2)  # [P, 2]
            d = pix[:, None, :] - means2d[tid][None]  # [P, M, 2]
            if track_absgrad and d.requires_grad:
                d.retain_grad()
                deltas.append((tid, d))
            a, b, c = conics[tid, 0], conics[tid, 1], conics[tid, 2]
            sigma = 0.5 * (a * d[..., 0] ** 2 + c * d[..., 1] ** 2) + b * d[..., 0] * d[..., 1]
            alpha = (opac[tid] * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
            alpha = alpha * ((sigma >= 0) & (alpha >= ALPHA_MIN))
            T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            w = alpha * T  # [P, M]
            blended = torch.cat([w @ feats[tid], w.sum(1, keepdim=True)], 1)  # [P, 8]
            tiles[y0, x0] = blended
    if tiles:
        out = torch.cat([torch.cat([tiles[y0, x0].reshape(min(tile, H - y0), min(tile, W - x0), 8) if (y0, x0) in tiles
                                    else out[y0:y0 + tile, x0:x0 + tile] for x0 in range(0, W, tile)], 1)
                         for y0 in range(0, H, tile)], 0)
    acc = out[..., 7]
    rgb = out[..., :3] + (1 - acc)[..., None] * background.to(dev)

    def absgrad() -> Tensor:
        g = torch.zeros(len(model), 2, device=dev)
        for tid, d in deltas:
            if d.grad is not None:
                g.index_add_(0, tid, d.grad.abs().sum(0))
        return g

    depth = out[..., 6] / acc.clamp_min(1e-6)
    return RenderOut(rgb=rgb, depth=torch.where(acc > 1e-6, depth, torch.zeros_like(depth)), normal=out[..., 3:6],
                     alpha=acc, means2d=means2d, visible=visible, absgrad=absgrad)


@RENDERERS.register("gsplat_cuda")
def render_cuda(model: GaussianModel, cam: Camera, background: Tensor, *, tile: int = 16,
                track_absgrad: bool = False) -> RenderOut:
    """GPU path: gsplat's CUDA rasterizer; normals ride along as three extra colour channels."""
    from gsplat import rasterization

    dev = model.means.device
    quats, scales, colors, normals = _features(model, cam)
    img, alpha, info = rasterization(
        model.means, quats, scales, model.opacities, torch.cat([colors, normals], 1),
        cam.viewmat[None].to(dev), cam.K[None].to(dev), cam.width, cam.height,
        render_mode="RGB+ED", packed=False, absgrad=track_absgrad, tile_size=tile)
    img, acc = img[0], alpha[0, ..., 0]
    means2d = info["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    rgb = img[..., :3] + (1 - acc)[..., None] * background.to(dev)
    depth = torch.where(acc > 1e-6, img[..., 6], torch.zeros_like(acc))

    def absgrad() -> Tensor:
        g = getattr(means2d, "absgrad", None)
        return g[0] if g is not None else torch.zeros(len(model), 2, device=dev)

    return RenderOut(rgb=rgb, depth=depth, normal=img[..., 3:6], alpha=acc, means2d=_Squeezed(means2d),
                     visible=(info["radii"][0] > 0).reshape(len(model), -1).all(-1), absgrad=absgrad)


class _Squeezed:
    """means2d of a one-camera batch seen as [N, 2] (its .grad too), as the torch path returns it."""

    def __init__(self, t: Tensor):
        self.t = t

    @property
    def grad(self) -> Tensor | None:
        return None if self.t.grad is None else self.t.grad[0]


def render(name: str, model: GaussianModel, cam: Camera, background: Tensor, **kw: Any) -> RenderOut:
    return RENDERERS.get(name)(model, cam, background, **kw)
