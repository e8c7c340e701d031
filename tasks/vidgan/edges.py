"""Encoder B of the soft-edge video codec (METHODS.md §9): down-sampling, a soft edge detector
and its quantisation to a few levels.

Per frame: luma (BT.601) → area down-sampling by ``d`` → Sobel gradient magnitude → ``L`` levels.
The map is "soft": instead of a binary edge/no-edge decision, a pixel's level says how strong the
edge through it is. Thresholds are per video: the magnitude quantiles that leave ``edge_fraction``
of the pixels above the first level and half of each level's share above the next, so the map's
statistics (and its rate) do not depend on a clip's contrast. Only the levels are sent; the
thresholds travel in the header for the record, the decoder does not need them.
"""
from __future__ import annotations

import numpy as np


def luma(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T,H,W,3]`` RGB → float32 luma in [0, 1], ``[T,H,W]``."""
    f = frames.astype(np.float32) / 255.0
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def downsample(y: np.ndarray, d: int) -> np.ndarray:
    """Area (box) down-sampling of ``[T,H,W]`` by ``d`` each side (H, W cropped to multiples of d)."""
    if d == 1:
        return y
    t, h, w = y.shape
    y = y[:, : h - h % d, : w - w % d]
    return y.reshape(t, h // d, d, w // d, d).mean(axis=(2, 4))


def edge_strength(y: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of each frame ``[T,h,w]`` (replicated border).

    The 3×3 kernels get a length-1 time axis: ``ndimage.sobel`` on the stack would also smooth
    along time and leak one frame's edges into its neighbours' maps."""
    from scipy import ndimage

    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)[None]
    gx = ndimage.correlate(y, kx, mode="nearest")
    gy = ndimage.correlate(y, kx.transpose(0, 2, 1), mode="nearest")
    return np.hypot(gx, gy).astype(np.float32)


def level_thresholds(strength: np.ndarray, levels: int, edge_fraction: float) -> np.ndarray:
    """The ``levels-1`` increasing thresholds: quantiles 1-f, 1-f/2, 1-f/4, ... of the magnitudes."""
    qs = [1.0 - edge_fraction * 0.5**k for k in range(levels - 1)]
    th = np.quantile(strength, qs).astype(np.float32)
    # A flat clip has equal quantiles; strictly increasing thresholds keep every level meaningful.
    return np.maximum.accumulate(np.maximum(th, 1e-4) + np.arange(levels - 1, dtype=np.float32) * 1e-6)


def soft_edge_map(frames: np.ndarray, downsample_by: int, levels: int, edge_fraction: float,
                  thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [T,H,W,3]`` → (``uint8 [T,H/d,W/d]`` levels 0..L-1, the thresholds used)."""
    s = edge_strength(downsample(luma(frames), downsample_by))
    th = level_thresholds(s, levels, edge_fraction) if thresholds is None else np.asarray(thresholds, np.float32)
    return np.searchsorted(th, s, side="right").astype(np.uint8), th
