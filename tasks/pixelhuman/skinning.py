"""Linear blend skinning, forward and inverse, with anny's weights — plain torch.

PyTorch3D is not available on this platform, so the nearest-vertex lookup, the blending and
the inversion are written here in torch (device-agnostic, chunked so a 64² image's 130k
samples fit in memory).

A query point ``x`` in a posed frame takes the skinning weights of its ``k`` nearest posed
body-model vertices, blended by inverse distance (Animatable-NeRF/HumanNeRF style: the body
model fit is known for every frame). Its canonical (rest) position is the inverse of the
blended transform applied to it, ``x_c = (Σ_j w_j T_j)⁻¹ x``, and a canonical point is sent
to any other frame with the same weights, ``x' = (Σ_j w_j T'_j) x_c``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def knn_weights(points: Tensor, verts: Tensor, vert_weights: Tensor, k: int = 4,
                chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Skinning weights [N, J] of ``points`` [N, 3] from their ``k`` nearest ``verts`` [V, 3]
    (weights [V, J]), inverse-distance blended; and the distance to the nearest vertex [N]."""
    ws, ds = [], []
    for s in range(0, len(points), chunk):
        p = points[s:s + chunk]
        d = torch.cdist(p, verts)
        if k == 1:  # the nearest vertex alone: min is far cheaper than topk on CPU
            dk, ik = d.min(1, keepdim=True)
        else:
            dk, ik = d.topk(k, dim=1, largest=False)
        inv = 1.0 / (dk + 1e-6)
        inv = inv / inv.sum(1, keepdim=True)
        ws.append((vert_weights[ik] * inv[..., None]).sum(1))
        ds.append(dk[:, 0])
    return torch.cat(ws), torch.cat(ds)


def blend(weights: Tensor, transforms: Tensor) -> Tensor:
    """Per-point blended 4×4 transforms [N, 4, 4] from weights [N, J] and bone transforms [J, 4, 4]."""
    return torch.einsum("nj,jab->nab", weights, transforms)


def forward_lbs(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Canonical points [N, 3] → posed: ``(Σ_j w_j T_j) x``."""
    M = blend(weights, transforms)
    return (M[:, :3, :3] @ points[:, :, None])[..., 0] + M[:, :3, 3]


def inverse_lbs(points: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Posed points [N, 3] → canonical: ``(Σ_j w_j T_j)⁻¹ x`` (a 3×3 solve per point)."""
    M = blend(weights, transforms)
    return torch.linalg.solve(M[:, :3, :3], (points - M[:, :3, 3])[:, :, None])[..., 0]
