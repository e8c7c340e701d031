"""Evaluate one trained variant on the held-out views: image quality, geometry, needles.

Reads the exported PLY (so what is scored is what a viewer would open), renders every test
view with the same renderer the run trained with, and scores it with
:mod:`tasks.erank_gs.metrics`. Geometry metrics are ``nan`` for a scene without true depth,
normals or mesh (a user's scene in the plain NeRF-synthetic layout).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .erank import NEEDLE_THRESHOLDS, effective_rank, needle_fraction
from .gaussians import GaussianModel
from .metrics import (backproject, chamfer, depth_abs_error, geometry_mask, normal_angular_error, psnr, sample_mesh,
                      ssim)
from .render import render
from .scene_io import SceneSplit

#: points sampled on the true mesh for the Chamfer distance
MESH_SAMPLES = 20_000


def erank_stats(model: GaussianModel) -> dict[str, Any]:
    er = effective_rank(model.scales.detach())
    out = {"gaussians": len(model), "erank_mean": float(er.mean()), "erank_median": float(er.median())}
    for t in NEEDLE_THRESHOLDS:
        out[f"needle_lt_{t:.2f}"] = needle_fraction(er, t)
    return out


def evaluate_model(model: GaussianModel, test: SceneSplit, mesh: tuple[np.ndarray, np.ndarray] | None, *,
                   renderer: str, background: torch.Tensor, chamfer_seed: int = 0) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """Metrics over the test split, and the renders (rgb, normal, depth, alpha) per view."""
    ps, ss, nerr, npx, derr, points, renders = [], [], [], [], [], [], []
    with torch.no_grad():
        for i, cam in enumerate(test.cameras):
            out = render(renderer, model, cam, background)
            gt = test.images[i].to(out.rgb)
            ps.append(psnr(out.rgb, gt))
            ss.append(float(ssim(out.rgb.clamp(0, 1), gt)))
            renders.append({"rgb": out.rgb.cpu(), "normal": out.normal.cpu(), "depth": out.depth.cpu(),
                            "alpha": out.alpha.cpu()})
            if test.depths is not None:
                mask = geometry_mask(test.depths[i], out.alpha.cpu())
                derr.append(depth_abs_error(out.depth.cpu(), test.depths[i], mask))
                if test.normals is not None:
                    e, n = normal_angular_error(out.normal.cpu(), test.normals[i], mask)
                    if n:
                        nerr.append(e * n)
                        npx.append(n)
            points.append(backproject(out.depth.cpu(), cam, out.alpha.cpu() > 0.5))
    metrics: dict[str, Any] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "test_views": len(test),
                               "normal_err_deg": float(np.sum(nerr) / np.sum(npx)) if npx else float("nan"),
                               "depth_abs_err": float(np.nanmean(derr)) if derr else float("nan")}
    if mesh is not None:
        pred = torch.cat(points).numpy()
        rng = np.random.default_rng(chamfer_seed)
        if len(pred) > MESH_SAMPLES:  # same budget on both sides of the Chamfer distance
            pred = pred[rng.choice(len(pred), MESH_SAMPLES, replace=False)]
        metrics.update(chamfer(pred, sample_mesh(*mesh, MESH_SAMPLES, seed=chamfer_seed)))
    else:
        metrics.update(chamfer_nan())
    metrics.update(erank_stats(model))
    return metrics, renders


def chamfer_nan() -> dict[str, float]:
    return {"chamfer": float("nan"), "accuracy": float("nan"), "completeness": float("nan")}


def load_mesh(path: Path | None) -> tuple[np.ndarray, np.ndarray] | None:
    if path is None:
        return None
    import trimesh

    m = trimesh.load(str(path), process=False, force="mesh")
    return np.asarray(m.vertices, np.float64), np.asarray(m.faces, np.int64)
