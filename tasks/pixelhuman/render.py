"""Volume rendering of a density/colour field along rays — plain torch (no PyTorch3D here).

Samples: ``S`` stratified depths between where the ray enters and leaves the body's padded
axis-aligned box (jittered when training, bin centres when evaluating); a ray that misses the
box is background. Compositing is NeRF's quadrature: ``α_i = 1 − exp(−σ_i δ_i)``,
``T_i = Π_{k<i} (1 − α_k)``, ``C = Σ_i T_i α_i c_i + (1 − Σ_i T_i α_i) · background``, the last
interval's ``δ`` being the bin width (not 1e10: the box is the whole support).
"""
from __future__ import annotations

import torch
from torch import Tensor


def ray_box(origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances [N] of rays through the box [lo, hi], and whether they hit it."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near + 1e-3), hit


def sample_depths(near: Tensor, far: Tensor, n: int, jitter: bool, generator: torch.Generator | None = None) -> Tensor:
    """Stratified depths [N, n] in [near, far]: bin centres, or uniform within each bin."""
    edges = torch.linspace(0.0, 1.0, n + 1, device=near.device, dtype=near.dtype)
    if jitter:
        u = torch.rand(len(near), n, generator=generator, device="cpu").to(near)
    else:
        u = torch.full((len(near), n), 0.5, device=near.device, dtype=near.dtype)
    frac = edges[:-1] + u * (edges[1:] - edges[:-1])
    return near[:, None] + frac * (far - near)[:, None]


def composite(sigma: Tensor, rgb: Tensor, depths: Tensor, far: Tensor, background: Tensor) -> dict[str, Tensor]:
    """Alpha-composite densities [N, S] and colours [N, S, 3] at ``depths`` [N, S] (ray-parameter
    distances along unit directions) → colour [N, 3], opacity [N], expected depth [N]."""
    bins = torch.cat([depths[:, 1:] - depths[:, :-1], (far - depths[:, -1])[:, None] * 2.0], 1).clamp_min(0.0)
    alpha = 1.0 - torch.exp(-sigma * bins)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], 1), 1)[:, :-1]
    w = trans * alpha
    acc = w.sum(1)
    color = (w[..., None] * rgb).sum(1) + (1.0 - acc)[:, None] * background
    depth = (w * depths).sum(1) / acc.clamp_min(1e-6)
    return {"rgb": color, "acc": acc, "depth": depth, "weights": w}


def body_box(verts: Tensor, pad: float) -> tuple[Tensor, Tensor]:
    """The posed body's axis-aligned box, padded by ``pad`` (the sampling support)."""
    return verts.amin(0) - pad, verts.amax(0) + pad


def render_rays(field, origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor, samples: int, *, jitter: bool,
                background: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Render rays [N, 3] through ``field(points [M, 3]) -> (sigma [M], rgb [M, 3])`` inside the box."""
    near, far, hit = ray_box(origins, dirs, lo, hi)
    out = {"rgb": background.expand(len(origins), 3).clone(), "acc": torch.zeros_like(near)}
    if not bool(hit.any()):
        return out
    o, d, n_, f_ = origins[hit], dirs[hit], near[hit], far[hit]
    t = sample_depths(n_, f_, samples, jitter, generator)
    pts = o[:, None] + d[:, None] * t[..., None]
    sigma, rgb = field(pts.reshape(-1, 3))
    comp = composite(sigma.reshape(t.shape), rgb.reshape(*t.shape, 3), t, f_, background)
    rgb_all = out["rgb"].index_put((hit.nonzero()[:, 0],), comp["rgb"])
    acc_all = out["acc"].index_put((hit.nonzero()[:, 0],), comp["acc"])
    return {"rgb": rgb_all, "acc": acc_all}
