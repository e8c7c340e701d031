"""Evaluation of the reenact models on held-out identities and held-out expressions, in one run.

(a) EDTN vs the linear-mapping baseline (and the zero translation, the floor of doing nothing) in
    human mesh space: vertex, landmark, eye-opening and lip-distance errors (mm), on the test
    human identities' own heads, for their rendered expressions and for fresh random ones.
(b) generator self-reenactment: PSNR / SSIM / L1 of the generated frame against the true render of
    the same identity, morphs and pose; beside it the "source copy" (output = the source image).
(c) expression fidelity: the morph regressor reads the generated frames; its morph MAE against
    the asked-for morphs, beside its MAE on the true renders (its own floor) and on the source copy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .data import AnimeFrames, pose_of, pose_vector
from .edtn import EDTN, HumanGeometry
from .generator import AnimeGenerator, psnr, ssim
from .regressor import MorphRegressor

MOUTH = slice(12, 17)


def translate(edtn: EDTN, e: torch.Tensor, mouth_boost: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        p = edtn(e).float()
    if mouth_boost != 1.0:  # on the morph dimension (the released code slices the batch by mistake)
        p = p.clone()
        p[:, MOUTH] = (p[:, MOUTH] * mouth_boost).clamp(0, 1)
    return p


def edtn_rows(geom: HumanGeometry, sets: dict[str, torch.Tensor], edtn: EDTN, B: torch.Tensor,
              mouth_boost: float) -> list[dict]:
    """One row per (method, expression set), errors averaged over the test identities' heads."""
    from .bridge import linear_inverse

    rows = []
    for set_name, e in sets.items():
        preds = {"edtn": translate(edtn, e, mouth_boost), "linear_B_inverse": linear_inverse(e, B),
                 "zero": torch.zeros(len(e), B.shape[0])}
        for method, p in preds.items():
            ids = range(geom.n_identities)
            errs = [geom.errors_mm(e, p, i) for i in ids]
            loss = float(np.mean([float(geom.edtn_loss(e, p, i)[0]) for i in ids]))
            rows.append({"method": method, "expressions": set_name, "n": len(e),
                         **{k: float(np.mean([x[k] for x in errs])) for k in errs[0]}, "edtn_loss": loss})
    return rows


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
def generate(gen: AnimeGenerator, source: torch.Tensor, pose: torch.Tensor, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(source), batch):
        out.append(gen(source[i:i + batch], pose[i:i + batch])[1].float())
    return torch.cat(out).clamp(0, 1)


@torch.no_grad()
def read_morphs(reg: MorphRegressor, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([reg(images[i:i + 32])[0].float() for i in range(0, len(images), 32)])


def generator_rows(split: str, frames: AnimeFrames, gen: AnimeGenerator, reg: MorphRegressor, n: int,
                   seed: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    src_i, drv_i = self_reenactment_pairs(frames, n, seed)
    src, tgt = frames.float_images(src_i), frames.float_images(drv_i)
    w, a = pose_of(frames.rows.iloc[drv_i])
    w_src, _ = pose_of(frames.rows.iloc[src_i])
    # Most morphs are 0 in both frames; the ones the driving frame changes are where a copy fails.
    changed = (w - w_src).abs() > 0.1
    fake = generate(gen, src, pose_vector(w, a))
    rows = []
    for method, img in (("generator", fake), ("source_copy", src), ("true_render", tgt)):
        err = (read_morphs(reg, img) - w).abs()
        row = {"split": split, "method": method, "pairs": len(src_i), "regressor_morph_mae": float(err.mean()),
               "regressor_mae_changed": float(err[changed].mean()) if changed.any() else float("nan")}
        if method != "true_render":
            row.update(psnr_db=float(psnr(img, tgt).mean()), ssim=float(ssim(img, tgt)),
                       l1=float((img - tgt).abs().mean()))
        rows.append(row)
    return rows, {"source": src[:8], "target": tgt[:8], "generated": fake[:8]}


def cross_domain(human_rows: pd.DataFrame, human_images: torch.Tensor, source: torch.Tensor, gen: AnimeGenerator,
                 edtn: EDTN, B: torch.Tensor, reg: MorphRegressor, mouth_boost: float) -> tuple[dict, dict[str, torch.Tensor]]:
    """A human driving sequence (known ARKit weights and pose) → EDTN / linear baseline → anime frames."""
    from .bridge import linear_inverse

    e, angles = pose_of(human_rows)
    p_edtn, p_lin = translate(edtn, e, mouth_boost), linear_inverse(e, B)
    src = source[None].expand(len(e), -1, -1, -1)
    out_edtn = generate(gen, src, pose_vector(p_edtn, angles))
    out_lin = generate(gen, src, pose_vector(p_lin, angles))
    stats = {
        "frames": len(e),
        # Does the generator show what it was asked to? (the judge reads the morphs back)
        "edtn_regressor_vs_requested_mae": float((read_morphs(reg, out_edtn) - p_edtn).abs().mean()),
        "linear_regressor_vs_requested_mae": float((read_morphs(reg, out_lin) - p_lin).abs().mean()),
    }
    return stats, {"human": human_images, "edtn": out_edtn, "linear": out_lin}
