"""Scoring renders of unseen identities: PSNR/SSIM on the body mask, mask IoU, bootstrap intervals.

The image metrics come from a kept library, ``torchmetrics`` (PSNR on the masked pixels with
data range 1; SSIM's per-pixel map, 11×11 Gaussian window σ = 1.5, averaged over the mask).
"The body mask" is the ground-truth alpha > 0.5 dilated by 2 pixels, so a silhouette that is
too thin or too fat costs colour error too; the region is the same for every method. Mask IoU
compares the rendered opacity > 0.5 with the true alpha > 0.5. Intervals are percentile
bootstraps over the test images (identities × views), paired across methods for differences.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import pixel_rays
from .render import body_box, render_rays


def eval_region(mask: Tensor, dilate: int = 2) -> Tensor:
    m = (mask > 0.5).float()[None, None]
    return F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)[0, 0] > 0.5


def image_metrics(pred: Tensor, gt: Tensor, pred_acc: Tensor, gt_mask: Tensor) -> dict[str, float]:
    """PSNR and SSIM on the (dilated) body mask and mask IoU of [H, W, 3] / [H, W] tensors in [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    pred, gt = pred.float().clamp(0, 1).cpu(), gt.float().cpu()
    region = eval_region(gt_mask.cpu())
    psnr = float(peak_signal_noise_ratio(pred[region], gt[region], data_range=1.0))
    _, ssim_map = structural_similarity_index_measure(pred.permute(2, 0, 1)[None], gt.permute(2, 0, 1)[None],
                                                      data_range=1.0, return_full_image=True)
    ssim = float(ssim_map[0].mean(0)[region].mean())
    a, b = pred_acc.cpu() > 0.5, gt_mask.cpu() > 0.5
    iou = float((a & b).sum()) / max(1, int((a | b).sum()))
    return {"psnr": psnr, "ssim": ssim, "iou": iou}


@torch.no_grad()
def render_image(field, ctx, cams, cam_index: int, verts: Tensor, samples: int, pad: float, device,
                 chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """The full image [R, R, 3] and opacity [R, R] of camera ``cam_index`` (bin-centre samples)."""
    R = cams.resolution
    rows, cols = torch.meshgrid(torch.arange(R), torch.arange(R), indexing="ij")
    pix = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1)
    o, d = pixel_rays(cams, cam_index, pix)
    lo, hi = body_box(verts.to(device), pad)
    bg = torch.ones(3, device=device)
    ctx = field.encode(ctx.to(device))
    rgb, acc = [], []
    for s in range(0, len(pix), chunk):
        out = render_rays(lambda x: field(x, ctx), o[s:s + chunk].to(device), d[s:s + chunk].to(device), lo, hi,
                          samples, jitter=False, background=bg)
        rgb.append(out["rgb"].float().cpu())
        acc.append(out["acc"].float().cpu())
    return torch.cat(rgb).reshape(R, R, 3), torch.cat(acc).reshape(R, R)


def bootstrap_ci(values: np.ndarray, n: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval of the mean of ``values``."""
    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(1)
    a = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
