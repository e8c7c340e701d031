"""The faceswap report: every method on the same test pairs, with 95 % bootstrap intervals.

The claim tested (METHODS.md §3): training purely by self-reconstruction (SAMAE) beats
target-oriented training (identity + attribute losses, no ground truth) — here measured
against the true swap, which real benchmarks do not have — and RobustSwap's (§6): its latent choice
and 3D guidance stop the source's attributes leaking into the swap (``CLAIMS``). ``paired.md``
gives each claim's method − each other method per column, pair by pair, with its interval: a
column "held" only where that interval excludes 0 in the claim's favour. Reference rows: the ground truth scored as if it were a swap (what a
perfect method gets from the same regressors and encoders) and the unswapped target (no
identity transfer at all). The ``* leak`` columns (RobustSwap's concern, METHODS.md §6) are the
share of pairs whose attribute, as the regressor reads it from the swap, lies closer to the
*source's* label than to the target's (``robustswap/leakage.py``; the ground truth's row is the
regressor's floor).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.artifacts import read_json, write_json
from tasks.common.tables import markdown_table

from .evaluate import bootstrap_ci, paired_diff_ci

#: (key, column title, +1 higher is better / −1 lower is better)
COLUMNS = [("psnr", "PSNR ↑", 1), ("ssim", "SSIM ↑", 1), ("id_cos", "ID cos ↑", 1), ("id_top1", "ID top-1 ↑", 1),
           ("dlib_dist", "dlib dist ↓", -1), ("dlib_top1", "dlib top-1 ↑", 1), ("expr_err", "expr err ↓", -1),
           ("pose_err", "pose err ° ↓", -1), ("skin_err", "skin err ↓", -1), ("light_err", "light err ° ↓", -1),
           ("flicker", "flicker ↓", -1), ("leak_pose", "pose leak ↓", -1), ("leak_expression", "expr leak ↓", -1),
           ("leak_lighting", "light leak ↓", -1), ("leak_hair", "hair leak ↓", -1), ("leak_skin", "skin leak ↓", -1)]
DIGITS = {"psnr": 2, "pose_err": 2, "light_err": 1, "ssim": 3, "id_cos": 3, "id_top1": 2, "dlib_dist": 3, "dlib_top1": 2,
          "expr_err": 4, "skin_err": 4, "flicker": 4, **{f"leak_{g}": 2 for g in ("pose", "expression", "lighting", "hair", "skin")}}


def _cell(m: float, lo: float, hi: float, key: str) -> str:
    if math.isnan(m):
        return "n/a"
    d = DIGITS.get(key, 3)
    return f"{m:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _expression_note(check: dict[str, Any], min_r2: float | None) -> str:
    if "expression_dims" not in check:
        return ""
    n, total = len(check["expression_dims"]), len(check["expression_r2_per_dim"])
    if n == 0:
        best = max((r for r in check["expression_r2_per_dim"] if r == r), default=float("nan"))
        return (f"; the expression columns are n/a: it reads none of the {total} ARKit blendshapes on held-out "
                f"renders with R² ≥ {min_r2} (best {best:.2f}; on training renders it memorises them)")
    return f"; the expression columns score the {n} of {total} ARKit blendshapes it reads (R² ≥ {min_r2})"


def _load(d: Path, name: str = "per_pair.npz") -> dict[str, np.ndarray]:
    with np.load(d / name) as z:
        return {k: z[k] for k in z.files}


def build_report(cfg: Any, faces_dir: Path, tools_dir: Path, refs_dir: Path, eval_dirs: dict[str, Path], out: Path) -> None:
    n = cfg.evaluation.bootstrap
    per = {m: _load(d) for m, d in eval_dirs.items()}
    refs = {"ground truth (reference)": _load(refs_dir, "ground_truth.npz"),
            "target, unswapped (reference)": _load(refs_dir, "target_copy.npz")}
    rows, csv_rows, headline = [], [], {}
    for name, scores in {**per, **refs}.items():
        row: dict[str, Any] = {"method": name}
        rec: dict[str, Any] = {"method": name}
        for key, title, _ in COLUMNS:
            m, lo, hi = bootstrap_ci(scores[key], n, seed=0)
            row[title] = _cell(m, lo, hi, key)
            rec.update({key: m, f"{key}_lo": lo, f"{key}_hi": hi})
        if name in per:
            tr = read_json(Path(eval_dirs[name]).parent.parent / "train" / name / "train.json") \
                if (Path(eval_dirs[name]).parent.parent / "train" / name / "train.json").is_file() else {}
            rec["train_seconds"] = tr.get("train_seconds", 0.0)
            headline[name] = {k: rec[k] for k, _, _ in COLUMNS if not math.isnan(rec[k])}
        rows.append(row)
        csv_rows.append(rec)
    table = markdown_table(rows)
    check = read_json(tools_dir / "check.json")
    meta = read_json(faces_dir / "meta.json")
    notes = (f"\n\n{len(next(iter(per.values()))['psnr'])} test pairs ({meta['sequence_pairs']} in sequences) over "
             f"{meta['test_identities']} held-out identities; models at {cfg.budget.resolution}² "
             f"(rendered {meta['resolution']}²), {cfg.budget.steps} steps × batch {cfg.budget.batch} per learned method. "
             f"Mean [95 % bootstrap interval over pairs]. Identity encoder: held-out verification accuracy "
             f"{check['verification_accuracy']:.3f} (10-fold); attribute regressor R² on held-out renders: "
             + ", ".join(f"{k} {v:.2f}" for k, v in check["attribute_r2_test"].items())
             + _expression_note(check, cfg.tools.min_expression_r2) + ".")
    import pandas as pd

    pd.DataFrame(csv_rows).to_csv(out / "results.csv", index=False)
    sections, md, claims = [], [], {}
    for claim in CLAIMS:
        paired = paired_table(per, n, claim)
        if paired["rows"] == 0:
            continue
        head = f"{claim.title} ({claim.name} − each method it is compared with; \"better\"/\"worse\" where the 95 % " \
               f"interval excludes 0):\n\n"
        md.append(head + paired["md"])
        sections.append(head + paired["md"] + "\n\n" + claim_line(claim, paired["main"]))
        claims[f"paired_{claim.name}_vs_{claim.baseline}"] = paired["main"]
    (out / "paired.md").write_text("\n\n".join(md) + "\n")
    (out / "table.md").write_text(table + notes + "\n\n" + "\n\n".join(sections) + "\n")
    write_json(out / "headline.json", {"methods": headline, **claims,
                                       "identity_verification": check["verification_accuracy"]})
    write_json(out / "metrics.json", {"rows": csv_rows, "tools": check, "data": meta | {"landmark_vertices": None}})
    strips(cfg, faces_dir, eval_dirs, out)


@dataclass(frozen=True)
class Claim:
    """One paper's claim read off paired differences: every method of the family ``name`` (its
    ablations share the prefix) minus every method outside it — or, given ``against``, ``name``
    alone minus each of those; the verdict line is ``name`` − ``baseline``."""

    name: str
    baseline: str
    statement: str
    title: str
    against: tuple[str, ...] | None = None


#: SAMAE (METHODS.md §3) against every other method; RobustSwap (§6: source attributes do not leak)
#: against the target-oriented baseline, the geometric swap and its own ablations
CLAIMS = (
    Claim("samae", "simswap", "SAMAE's self-reconstruction beats the target-oriented SimSwap-like swapper",
          "Paired differences over the same test pairs, SAMAE"),
    Claim("robustswap", "simswap", "RobustSwap's latent choice and 3D guidance stop source attributes leaking",
          "Paired differences over the same test pairs, RobustSwap",
          against=("simswap", "warp_blend", "robustswap_no_implicit3d", "robustswap_no_explicit3d")),
)


def claim_line(claim: Claim, main: dict[str, Any]) -> str:
    """One line: on which columns ``claim.name`` beat ``claim.baseline``."""
    head = f"**Claim** ({claim.statement}), {claim.name} − {claim.baseline}: "
    if not main:
        return head + f"not tested ({claim.name} or {claim.baseline} not in this run)."
    titles = {k: t for k, t, _ in COLUMNS}
    by = {v: [titles[k] for k, r in main.items() if r["verdict"] == v] for v in ("better", "worse", "≈")}
    return head + (f"better on {', '.join(by['better']) or 'no column'}; worse on {', '.join(by['worse']) or 'no column'}; "
                   f"no clear difference on {', '.join(by['≈']) or 'no column'}.")


def paired_table(per: dict[str, dict[str, np.ndarray]], n: int, claim: Claim) -> dict[str, Any]:
    """The claim's family minus each method it is compared with, pair by pair, with intervals and
    verdicts; ``main``: the ``claim.name`` − ``claim.baseline`` cells."""
    rows, main = [], {}
    ours = [m for m in per if m.startswith(claim.name)] if claim.against is None else [claim.name] * (claim.name in per)
    others = [m for m in per if not m.startswith(claim.name)] if claim.against is None else \
        [m for m in claim.against if m in per]
    for a in ours:
        for b in others:
            row = {"comparison": f"{a} − {b}"}
            for key, title, better in COLUMNS:
                m, lo, hi = paired_diff_ci(per[a][key], per[b][key], n)
                if math.isnan(m):
                    row[title] = "n/a"
                    continue
                verdict = "better" if (lo > 0 if better > 0 else hi < 0) else ("worse" if (hi < 0 if better > 0 else lo > 0) else "≈")
                row[title] = f"{m:+.{DIGITS[key]}f} [{lo:+.{DIGITS[key]}f}, {hi:+.{DIGITS[key]}f}] {verdict}"
                if a == claim.name and b == claim.baseline:
                    main[key] = {"diff": m, "lo": lo, "hi": hi, "verdict": verdict}
            rows.append(row)
    return {"md": markdown_table(rows) if rows else "_(no pair in this run)_", "main": main, "rows": len(rows)}


def strips(cfg: Any, faces_dir: Path, eval_dirs: dict[str, Path], out: Path) -> None:
    """``strips/<method>.png`` (source | target | method | ground truth, one row per pair) and
    ``strip_all.png`` (source | target | every method | ground truth)."""
    from PIL import Image

    from .dataset import load_faces, load_pairs
    from .evaluate import resize

    test, pairs = load_faces(faces_dir, "test"), load_pairs(faces_dir)
    r = cfg.budget.resolution
    k = min(cfg.evaluation.strip_pairs, len(pairs))
    still = np.flatnonzero(pairs.sequence < 0)
    sel = still[:k] if len(still) >= k else np.arange(k)
    to_u8 = lambda x: (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    src, tgt, gt = (to_u8(resize(a, r)) for a in (test.images[pairs.source[sel]], test.images[pairs.target[sel]], pairs.gt[sel]))
    swaps = {m: np.load(d / "swaps.npy")[sel] for m, d in eval_dirs.items()}
    (out / "strips").mkdir(exist_ok=True)
    for m, s in swaps.items():
        Image.fromarray(np.concatenate([np.concatenate(c, 1) for c in zip(src, tgt, s, gt)], 0)).save(out / "strips" / f"{m}.png")
    cols = [src, tgt, *swaps.values(), gt]
    grid = np.concatenate([np.concatenate([c[i] for c in cols], 1) for i in range(len(sel))], 0)
    Image.fromarray(grid).save(out / "strip_all.png")
    write_json(out / "strip_columns.json", ["source", "target", *swaps, "ground truth"])
