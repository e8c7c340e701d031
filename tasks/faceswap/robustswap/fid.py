"""A Fréchet distance in the feature space of a network trained here (our FID stand-in).

FID (Heusel et al. 2017) fits a Gaussian to Inception-v3 pool features of real and of generated
images and reports ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2(Σ_r Σ_g)^{1/2}). Inception weights do not exist
offline, so the features are the 256-d trunk features of :class:`.face3d.Face3DNet`, trained on the
renders' shape/expression/pose/identity. The numbers are therefore comparable only within one
run of one network (hence "FID-like"), which is all the StyleGAN's progress tracking needs.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(feat_a: np.ndarray | torch.Tensor, feat_b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    a = np.asarray(feat_a, dtype=np.float64)
    b = np.asarray(feat_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(sa @ sb, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as the reference code does
        off = np.eye(len(sa)) * 1e-6
        covmean = linalg.sqrtm((sa + off) @ (sb + off))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))
