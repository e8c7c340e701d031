"""The erank_gs report: variants side by side (mean ± std over seeds), per-seed rows, erank
histograms, and the paired differences that say whether the paper's direction held.

The claim tested (METHODS.md §2, abstract 2): effective-rank regularisation removes needle-like
Gaussians (erank ≈ 1) and improves normals and geometry (Chamfer) without hurting image
quality. Each regularised variant is compared with the baseline (the first variant) seed by
seed — same scene, same initial Gaussians, same view order — so the differences are paired.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.artifacts import write_json
from tasks.common.plotting import png_figure
from tasks.common.tables import markdown_table

from .erank import NEEDLE_THRESHOLDS

#: (key, column title, better) — better: +1 higher is better, −1 lower is better, 0 neither
COLUMNS = [
    ("psnr", "PSNR ↑", 1), ("ssim", "SSIM ↑", 1), ("normal_err_deg", "normal err ° ↓", -1),
    ("depth_abs_err", "depth err ↓", -1), ("chamfer", "Chamfer ↓", -1),
    ("needle_lt_1.04", "needles <1.04 %", -1), ("needle_lt_1.02", "needles <1.02 %", -1),
    ("erank_mean", "mean erank", 0), ("gaussians", "Gaussians", 0), ("train_seconds", "train s", 0),
]
PERCENT = {"needle_lt_1.04", "needle_lt_1.02"}


def _fmt(key: str, vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "n/a"
    scale = 100.0 if key in PERCENT else 1.0
    a = np.asarray(vals, float) * scale
    digits = 0 if key in ("gaussians", "train_seconds") else (2 if key in PERCENT or key.endswith("deg") else 4)
    if len(a) == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def build_report(results: list[dict[str, Any]], variants: list[str], seeds: list[int], out: Path,
                 eranks: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, Any]:
    """Write table.md, metrics.json, headline.json, results.csv and erank_histograms.png into ``out``."""
    by = {(r["variant"], r["seed"]): r for r in results}
    rows = []
    for v in variants:
        row = {"variant": v, "seeds": len(seeds)}
        for key, title, _ in COLUMNS:
            row[title] = _fmt(key, [by[v, s].get(key) for s in seeds])
        rows.append(row)
    base = variants[0]
    paired = []
    for v in variants[1:]:
        row = {"vs baseline": f"{v} − {base}"}
        for key, title, better in COLUMNS[:7]:
            d = [by[v, s][key] - by[base, s][key] for s in seeds
                 if not (math.isnan(by[v, s][key]) or math.isnan(by[base, s][key]))]
            if not d:
                row[title] = "n/a"
                continue
            scale = 100.0 if key in PERCENT else 1.0
            wins = sum((x * better) > 0 for x in d)
            row[title] = f"{np.mean(d) * scale:+.4g} ({wins}/{len(d)} better)"
        paired.append(row)
    per_seed = [{"variant": r["variant"], "seed": r["seed"],
                 **{t: (round(r[k] * (100 if k in PERCENT else 1), 4) if isinstance(r.get(k), float) else r.get(k))
                    for k, t, _ in COLUMNS}} for r in sorted(results, key=lambda r: (variants.index(r["variant"]), r["seed"]))]
    verdict = direction(results, variants, seeds)
    table = "\n\n".join([
        f"Scene `{meta['scene']}` ({meta['resolution']} px, {meta['train_views']} train / {meta['test_views']} "
        f"held-out views), {meta['steps']} steps, renderer `{meta['renderer']}`, seeds {seeds}; mean ± std over seeds.",
        markdown_table(rows),
        "Paired differences (same seed, same initial Gaussians and view order):",
        markdown_table(paired) if paired else "_(one variant only)_",
        "Per seed:",
        markdown_table(per_seed),
        f"**Paper's direction** (fewer needles, lower normal error and Chamfer, PSNR within 0.5 dB): {verdict['summary']}",
    ]) + "\n"
    (out / "table.md").write_text(table)
    write_json(out / "metrics.json", {"results": results, "meta": meta, "direction": verdict})
    headline = {v: {k: float(np.nanmean([by[v, s][k] for s in seeds])) for k, _, _ in COLUMNS} for v in variants}
    write_json(out / "headline.json", headline)
    keys = ["variant", "seed"] + [k for k, _, _ in COLUMNS]
    lines = [",".join(keys)] + [",".join(str(r.get(k)) for k in keys) for r in per_seed_raw(results, variants)]
    (out / "results.csv").write_text("\n".join(lines) + "\n")
    histograms(eranks, out / "erank_histograms.png")
    return verdict


def per_seed_raw(results: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    return sorted(results, key=lambda r: (variants.index(r["variant"]), r["seed"]))


def direction(results: list[dict[str, Any]], variants: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per regularised variant: did each claim hold on the seed means (and on how many seeds)?"""
    by = {(r["variant"], r["seed"]): r for r in results}
    base, out = variants[0], {}
    for v in variants[1:]:
        mean = lambda var, k: float(np.nanmean([by[var, s][k] for s in seeds]))  # noqa: E731
        checks = {
            "fewer_needles_1.04": mean(v, "needle_lt_1.04") < mean(base, "needle_lt_1.04"),
            "lower_normal_err": mean(v, "normal_err_deg") < mean(base, "normal_err_deg"),
            "lower_chamfer": mean(v, "chamfer") < mean(base, "chamfer"),
            "psnr_within_0.5dB": mean(v, "psnr") > mean(base, "psnr") - 0.5,
        }
        out[v] = checks
    if not out:
        return {"summary": "only one variant: nothing to compare", "checks": {}}
    parts = [f"{v}: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in c.items()) for v, c in out.items()]
    return {"summary": "; ".join(parts), "checks": out}


def histograms(eranks: dict[str, np.ndarray], path: Path) -> None:
    with png_figure(path, size=(7, 4), title="Effective rank of the trained Gaussians (all seeds)") as (fig, ax):
        bins = np.linspace(1.0, 3.0, 61)
        for name, er in eranks.items():
            ax.hist(er, bins=bins, alpha=0.5, label=f"{name} (n={len(er)})", density=True)
        for t in NEEDLE_THRESHOLDS:
            ax.axvline(t, color="k", lw=0.8, ls="--")
        ax.set_xlabel("erank (1 = needle, 2 = disk, 3 = sphere); dashed: needle thresholds 1.02, 1.04")
        ax.set_ylabel("density")
        ax.legend()


def contact_sheet(gt: list, renders: list[dict], path: Path, n: int = 4) -> None:
    """Held-out views: ground truth | render | rendered normals, ``n`` rows."""
    import torch

    rows = []
    for g, r in list(zip(gt, renders))[:n]:
        nrm = torch.nn.functional.normalize(r["normal"], dim=-1) * 0.5 + 0.5
        nrm = nrm * r["alpha"][..., None] + (1 - r["alpha"][..., None])
        rows.append(torch.cat([g, r["rgb"].clamp(0, 1), nrm.clamp(0, 1)], 1))
    img = (torch.cat(rows, 0).numpy() * 255).round().astype(np.uint8)
    from PIL import Image

    Image.fromarray(img).save(path)
