"""Quality metrics of the ``vidgan`` evaluation (METHODS.md §9's rate–distortion comparison):
PSNR, SSIM and MS-SSIM of decoded frames against the originals, averaged over frames.

SSIM and MS-SSIM come from ``torchmetrics`` (a kept library; no metric maths written here),
on RGB in [0, 1] with an 11-tap Gaussian window for SSIM. MS-SSIM's standard five scales need
frames over 160 px on the short side; at this codec's small test resolutions it uses the
first three scales of Wang et al.'s weights (0.0448, 0.2856, 0.3001, renormalised by
torchmetrics) and a 7-tap window, stated in the report. PSNR is over all RGB samples of a frame,
then averaged over frames (frames identical to the original count as 100 dB).
"""
from __future__ import annotations

import numpy as np

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001)
MS_SSIM_KERNEL = 7


def psnr_frames(ref: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of ``uint8 [T,H,W,3]`` arrays."""
    mse = ((ref.astype(np.float64) - test.astype(np.float64)) ** 2).reshape(len(ref), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


def quality(ref: np.ndarray, test: np.ndarray, batch: int = 32) -> dict[str, float]:
    """Mean PSNR, SSIM and MS-SSIM over frames."""
    import torch
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    if ref.shape != test.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {test.shape}")
    s, m = [], []
    # float32, not float64: torchmetrics' Gaussian convolutions in double ran ~200× slower on CPU
    # (0.9 s vs 4 ms a frame), which made an 8-point baseline sweep take half an hour
    for i in range(0, len(ref), batch):
        a = torch.as_tensor(ref[i : i + batch]).permute(0, 3, 1, 2).float() / 255
        b = torch.as_tensor(test[i : i + batch]).permute(0, 3, 1, 2).float() / 255
        s.append(ssim(b, a, data_range=1.0, reduction="none"))
        m.append(ms_ssim(b, a, data_range=1.0, kernel_size=MS_SSIM_KERNEL, betas=MS_SSIM_BETAS, reduction="none"))
    return {"psnr": float(psnr_frames(ref, test).mean()), "ssim": float(torch.cat(s).mean()),
            "ms_ssim": float(torch.cat(m).mean())}


def interpolate_at(rate: float, curve: list[dict], metric: str) -> float | None:
    """A baseline's ``metric`` at ``rate`` kbps, linear in log-rate between its two nearest sweep
    points; None when ``rate`` is outside the sweep (the codec cannot reach that rate)."""
    pts = sorted((p["kbps"], p[metric]) for p in curve)
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= rate <= r1:
            if r1 == r0:
                return max(q0, q1)
            t = (np.log(rate) - np.log(r0)) / (np.log(r1) - np.log(r0))
            return float(q0 + t * (q1 - q0))
    return None
