"""Effective rank of a 3D Gaussian and the erank-GS regularisers (METHODS.md §2.1, §2.2).

For scales s = (s1, s2, s3) the normalised variance spectrum is q_i = s_i² / Σ_j s_j², its
Shannon entropy H = −Σ q_i log q_i, and erank = exp(H) ∈ [1, 3]: 1 for a needle, 2 for a flat
disk with two equal axes, 3 for a sphere. The loss adds a barrier
λ_erank·mean(max(0, −log(erank − 1 + ε))) that is zero once erank ≥ 2 and explodes as erank → 1,
and a thin term λ_thin·mean(s_min) that flattens Gaussians toward disks.
"""
from __future__ import annotations

import torch
from torch import Tensor

#: ε inside the barrier's log (the official code's 1e-7): keeps −log finite at erank = 1
BARRIER_EPS = 1e-7
#: the paper's needle thresholds (Table 5 counts erank < 1.04; the red overlays use < 1.02)
NEEDLE_THRESHOLDS = (1.04, 1.02)


def effective_rank(scales: Tensor) -> Tensor:  # scales [N, 3] (linear, > 0) -> [N]
    """erank(G) = exp(H(q)), q_i = s_i² / Σ s_j² (temperature 1, as in the official code)."""
    var = scales.square()
    q = var / var.sum(-1, keepdim=True).clamp_min(1e-30)
    # q log q → 0 as q → 0: clamp inside the log only, so a zero axis adds nothing (and no NaN)
    h = -(q * q.clamp_min(1e-30).log()).sum(-1)
    return h.exp()


def erank_barrier(erank: Tensor) -> Tensor:  # [N] -> [N]
    """max(0, −log(erank − 1 + ε)): 0 for erank ≥ 2, growing without bound toward erank 1."""
    return torch.clamp(-torch.log(erank - 1.0 + BARRIER_EPS), min=0.0)


def erank_loss(scales: Tensor, lambda_erank: float, lambda_thin: float) -> tuple[Tensor, dict[str, float]]:
    """λ_erank·mean(barrier(erank)) + λ_thin·mean(s_min) over all Gaussians; scales [N, 3]."""
    er = effective_rank(scales)
    barrier = erank_barrier(er).mean()
    thin = scales.min(-1).values.mean()
    loss = lambda_erank * barrier + lambda_thin * thin
    return loss, {"erank_barrier": float(barrier.detach()), "thin": float(thin.detach())}


def needle_fraction(erank: Tensor, threshold: float) -> float:
    """Share of Gaussians with erank below ``threshold`` (the paper's needle count, as a fraction)."""
    return float((erank < threshold).float().mean()) if erank.numel() else 0.0
