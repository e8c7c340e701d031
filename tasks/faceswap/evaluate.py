"""Score swaps against the rendered ground truth, per test pair (so intervals are over pairs).

Per pair (all at the model resolution; the ground truth area-downsampled like the inputs):

* ``psnr``, ``ssim`` — against the ground-truth swap, inside the face region (the ground
  truth's mask ∪ the target's, dilated 2 px); SSIM by torchmetrics (its per-pixel map averaged
  over the region), PSNR by torchmetrics on the region's pixels.
* ``id_cos`` — cosine of our identity encoder between swap and source; ``id_top1`` — whether the
  swap's nearest test identity (gallery: each test identity's mean embedding) is the source's.
* ``dlib_dist`` / ``dlib_top1`` — the same with dlib's ResNet descriptor (the independent
  check); dlib's detector does not fire reliably on 64–128 px renders, so it is given the known
  face box (the target's mask box) and its own 5-point shape predictor aligns the chip.
* ``expr_err`` (mean |Δ| of the 52 ARKit weights) and ``pose_err`` (mean |Δ| of yaw, pitch,
  roll, degrees) — the attribute regressor on the swap against the *target's* labels.
* ``skin_err`` (mean |Δ| of the skin colour) and ``light_err`` (key-light direction angle,
  degrees) — skin-tone and illumination transfer, the same way.
* ``flicker`` (sequence pairs only) — mean |Δ_t swap − Δ_t ground truth| over consecutive frames
  in the face region: temporal change the ground truth does not have.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import FaceSet, PairSet
from .robustswap.leakage import LEAK_GROUPS, per_pair_leakage
from .samae import dilate
from .tools import EvalTools

METRICS = ("psnr", "ssim", "id_cos", "id_top1", "dlib_dist", "dlib_top1", "expr_err", "pose_err", "skin_err",
           "light_err", "flicker", *(f"leak_{g}" for g in LEAK_GROUPS))


def resize(images_u8: np.ndarray, r: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=(r, r), mode="area") if x.shape[-1] != r else x


def resize_mask(masks: np.ndarray, r: int) -> torch.Tensor:
    m = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    return (F.interpolate(m, size=(r, r), mode="area") > 0.5).float() if m.shape[-1] != r else m


def region_psnr_ssim(pred: torch.Tensor, gt: torch.Tensor, region: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    _, ssim_map = structural_similarity_index_measure(pred, gt, data_range=1.0, return_full_image=True,
                                                      reduction="none")
    psnr, ssim = [], []
    for i in range(len(pred)):
        sel = region[i, 0] > 0.5
        p, g = pred[i][:, sel], gt[i][:, sel]
        psnr.append(float(peak_signal_noise_ratio(p, g, data_range=1.0)))
        ssim.append(float(ssim_map[i][:, sel].mean()))
    return np.array(psnr), np.array(ssim)


@lru_cache(maxsize=1)
def _dlib_models():
    import importlib.util

    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    root = Path(spec.submodule_search_locations[0]) / "models"  # its __init__ needs pkg_resources
    return (dlib.shape_predictor(str(root / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(root / "dlib_face_recognition_resnet_model_v1.dat")))


def dlib_descriptors(images: torch.Tensor, boxes: np.ndarray, upscale: int = 256) -> np.ndarray:
    """128-D dlib descriptors of images [N, 3, R, R] with known face boxes [N, 4] (x0, y0, x1, y1 at R)."""
    import dlib

    sp, rec = _dlib_models()
    r = images.shape[-1]
    big = F.interpolate(images.float(), size=(upscale, upscale), mode="bicubic", align_corners=False).clamp(0, 1)
    arr = (big.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    k = upscale / r
    out = []
    for img, (x0, y0, x1, y1) in zip(arr, boxes):
        rect = dlib.rectangle(int(x0 * k), int(y0 * k), int(x1 * k), int(y1 * k))
        out.append(np.array(rec.compute_face_descriptor(np.ascontiguousarray(img), sp(img, rect))))
    return np.stack(out)


def mask_boxes(masks: torch.Tensor) -> np.ndarray:
    boxes = []
    for m in masks[:, 0].cpu().numpy() > 0.5:
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            boxes.append((0, 0, m.shape[1] - 1, m.shape[0] - 1))
            continue
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return np.array(boxes)


class Judge:
    """Everything the per-pair metrics need that does not depend on the method (built once)."""

    def __init__(self, tools: EvalTools, test: FaceSet, pairs: PairSet, resolution: int, use_dlib: bool = True):
        self.tools, self.test, self.pairs, self.r, self.use_dlib = tools, test, pairs, resolution, use_dlib
        self.gt = resize(pairs.gt, resolution)
        tgt_masks = resize_mask(test.masks[pairs.target], resolution)
        # where a swap's face is: the target's face region or the true swap's (E_id reads it there)
        self.swap_face = torch.maximum(resize_mask(pairs.gt_masks, resolution), tgt_masks)
        self.region = dilate(self.swap_face, 2)
        self.boxes = mask_boxes(tgt_masks)
        stills = test.sequence < 0
        ids = np.unique(test.identity)
        with torch.no_grad():
            emb = self._embed(resize(test.images[stills], resolution), resize_mask(test.masks[stills], resolution))
        self.gallery_ids = ids
        self.gallery = F.normalize(torch.stack([emb[torch.from_numpy(test.identity[stills] == i)].mean(0) for i in ids]), dim=-1)
        self.src_emb = self._embed(resize(test.images[pairs.source], resolution),
                                   resize_mask(test.masks[pairs.source], resolution))
        self.src_id = test.identity[pairs.source]
        if use_dlib:
            still_imgs = resize(test.images[stills], resolution)
            d = dlib_descriptors(still_imgs, mask_boxes(resize_mask(test.masks[stills], resolution)))
            self.dlib_gallery = np.stack([d[test.identity[stills] == i].mean(0) for i in ids])
            self.dlib_src = dlib_descriptors(resize(test.images[pairs.source], resolution),
                                             mask_boxes(resize_mask(test.masks[pairs.source], resolution)))

    @torch.no_grad()
    def _embed(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tools.identity(x[i:i + 128], masks[i:i + 128]) for i in range(0, len(x), 128)])

    @torch.no_grad()
    def score(self, swaps: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-pair metrics of swaps [M, 3, R, R] (NaN where a metric does not apply)."""
        p, t = self.pairs, self.test
        out: dict[str, np.ndarray] = {}
        out["psnr"], out["ssim"] = region_psnr_ssim(swaps, self.gt, self.region)
        e = self._embed(swaps, self.swap_face)
        out["id_cos"] = (e * self.src_emb).sum(-1).numpy()
        out["id_top1"] = (self.gallery_ids[(e @ self.gallery.T).argmax(1).numpy()] == self.src_id).astype(float)
        if self.use_dlib:
            d = dlib_descriptors(swaps, self.boxes)
            out["dlib_dist"] = np.linalg.norm(d - self.dlib_src, axis=1)
            near = np.linalg.norm(d[:, None] - self.dlib_gallery[None], axis=2).argmin(1)
            out["dlib_top1"] = (self.gallery_ids[near] == self.src_id).astype(float)
        else:
            out["dlib_dist"] = out["dlib_top1"] = np.full(len(p), np.nan)
        a = {k: torch.cat([self.tools.attributes(swaps[i:i + 128])[k] for i in range(0, len(swaps), 128)]).numpy()
             for k in ("expression", "pose", "skin", "light_dir")}
        tg = p.target
        dims = self.tools.expression_dims if self.tools.expression_dims is not None else np.arange(t.expression.shape[1])
        out["expr_err"] = (np.abs(a["expression"][:, dims] - t.expression[tg][:, dims]).mean(1) if len(dims)
                           else np.full(len(p), np.nan))  # n/a: the regressor reads no blendshape
        out["pose_err"] = np.rad2deg(np.abs(a["pose"] - t.pose[tg])).mean(1)
        out["skin_err"] = np.abs(a["skin"] - t.skin[tg]).mean(1)
        ld = a["light_dir"] / (np.linalg.norm(a["light_dir"], axis=1, keepdims=True) + 1e-9)
        out["light_err"] = np.rad2deg(np.arccos(np.clip((ld * t.light_dir[tg]).sum(1), -1, 1)))
        out["flicker"] = self.flicker(swaps)
        labels = {f for fields in LEAK_GROUPS.values() for f in fields}
        out.update(per_pair_leakage(self.tools, swaps, {f: getattr(t, f)[p.source] for f in labels},
                                    {f: getattr(t, f)[tg] for f in labels}))
        return out

    def flicker(self, swaps: torch.Tensor) -> np.ndarray:
        """Per pair: |Δswap − Δgt| to the previous frame of its sequence, in the face region (NaN for stills)."""
        p, t = self.pairs, self.test
        res = np.full(len(p), np.nan)
        for k in range(len(p)):
            if p.sequence[k] < 0:
                continue
            prev = [j for j in range(len(p)) if p.sequence[j] == p.sequence[k]
                    and t.frame[p.target[j]] == t.frame[p.target[k]] - 1]
            if not prev:
                continue
            j = prev[0]
            reg = torch.maximum(self.region[k], self.region[j])[0] > 0.5
            d = (swaps[k] - swaps[j]) - (self.gt[k] - self.gt[j])
            res[k] = float(d[:, reg].abs().mean())
        return res


def bootstrap_ci(values: np.ndarray, n: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval over the finite entries."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    r = np.random.default_rng(seed)
    means = v[r.integers(len(v), size=(n, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_diff_ci(a: np.ndarray, b: np.ndarray, n: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a − b over pairs where both are finite, with a 95 % bootstrap interval."""
    ok = np.isfinite(a) & np.isfinite(b)
    return bootstrap_ci(a[ok] - b[ok], n, seed)
