"""Evaluation of the anime head generator on held-out identities and held-out expressions.

(b) self-reenactment: PSNR / SSIM / L1 of the generated frame against the true render of the same
    identity, morphs and pose, and its fine detail (:func:`detail_ratio`:
    a blur scores well in PSNR and near 0 here); beside it the warped source alone (what the editing
    net adds) and the "source copy" (output = the source image).
(c) expression fidelity: the morph regressor reads the generated frames; its error against the
    asked-for morphs **on the morphs it proved it reads** (``judge.json``: validation renders it
    never trained on), beside the same reading of the true renders (its floor) and of the source
    copy (what a generator that ignores the pose would score); the all-morph error is secondary.

(a), the translation test, is :mod:`tasks.reenact.anime_eval`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import AnimeFrames, pose_of, pose_vector
from .edtn import EDTN
from .generator import AnimeGenerator, psnr, ssim
from .regressor import MorphRegressor, read_morphs

MOUTH = slice(12, 17)


def detail_ratio(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean |Laplacian| of ``pred`` over that of ``target``: 1 = as much fine detail as the true
    render, toward 0 = a blur. PSNR rewards a blur over misplaced detail; this column shows it."""
    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=pred.dtype).expand(pred.shape[1], 1, 3, 3)

    def energy(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, k.to(x.device), groups=x.shape[1]).abs().mean()

    return float(energy(pred) / energy(target).clamp_min(1e-8))


def translate(edtn: EDTN, e: torch.Tensor, mouth_boost: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        p = edtn(e).float()
    if mouth_boost != 1.0:  # on the morph dimension (the released code slices the batch by mistake)
        p = p.clone()
        p[:, MOUTH] = (p[:, MOUTH] * mouth_boost).clamp(0, 1)
    return p


def self_reenactment_pairs(frames: AnimeFrames, n: int, seed: int) -> tuple[list[int], list[int]]:
    """Source = the identity's basis frame of the same style; driving = another of its frames."""
    rng = np.random.default_rng(seed)
    src, drv = [], []
    rows = frames.rows
    groups = [g for _, g in rows.groupby(["identity", "style"])]
    for i in range(n):
        g = groups[i % len(groups)]
        basis = g.index[g.kind == "basis"]
        s = int(basis[0]) if len(basis) else int(g.index[0])
        others = g.index[g.index != s]
        if not len(others):
            continue
        src.append(s)
        drv.append(int(rng.choice(others)))
    return src, drv


@torch.no_grad()
def generate(gen: AnimeGenerator, source: torch.Tensor, pose: torch.Tensor, batch: int = 16,
             stage: int = 1) -> torch.Tensor:
    """The generator's output for each (source, pose): ``stage`` 1 the edited frame (the result),
    0 the warped source alone."""
    out = []
    for i in range(0, len(source), batch):
        out.append(gen(source[i:i + batch], pose[i:i + batch])[stage].float())
    return torch.cat(out).clamp(0, 1)


def generator_rows(split: str, frames: AnimeFrames, gen: AnimeGenerator, reg: MorphRegressor, n: int,
                   seed: int, read: list[int]) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Self-reenactment pairs of ``frames`` (source: the identity's basis frame); ``read``: the
    indices of the morphs the judge reads (its fidelity columns count only those)."""
    src_i, drv_i = self_reenactment_pairs(frames, n, seed)
    src, tgt = frames.float_images(src_i), frames.float_images(drv_i)
    w, a = pose_of(frames.rows.iloc[drv_i])
    w_src, _ = pose_of(frames.rows.iloc[src_i])
    # Most morphs are 0 in both frames; the ones the driving frame changes are where a copy fails.
    changed = (w - w_src).abs() > 0.1
    changed_read = torch.zeros_like(changed)
    changed_read[:, read] = changed[:, read]
    fake = generate(gen, src, pose_vector(w, a))
    warped = generate(gen, src, pose_vector(w, a), stage=0)
    rows = []
    for method, img in (("generator", fake), ("warped_only", warped), ("source_copy", src), ("true_render", tgt)):
        err = (read_morphs(reg, img) - w).abs()
        row = {"split": split, "method": method, "pairs": len(src_i),
               "judge_mae_read": float(err[changed_read].mean()) if changed_read.any() else float("nan"),
               "judge_n_read": int(changed_read.sum()),
               "regressor_mae_changed": float(err[changed].mean()) if changed.any() else float("nan"),
               "regressor_morph_mae": float(err.mean())}
        if method != "true_render":
            row.update(psnr_db=float(psnr(img, tgt).mean()), ssim=float(ssim(img, tgt)),
                       l1=float((img - tgt).abs().mean()), detail=detail_ratio(img, tgt))
        rows.append(row)
    return rows, {"source": src[:8], "target": tgt[:8], "warped": warped[:8], "generated": fake[:8]}
