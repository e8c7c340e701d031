"""Source-attribute leakage of every method a ``faceswap`` run scored (RobustSwap's claim, issue 18).

Reads a finished run's data root — ``faces/`` (test set + pairs), ``tools/`` (the flow's attribute
regressor), ``eval/<method>/swaps.npy`` — and, per method, the leakage coefficient λ of
:mod:`tasks.faceswap.robustswap.leakage` for pose, expression, lighting, hair and skin: 0 = the
swap's regressed attribute sits at the target's label, 1 = at the source's (95 % bootstrap
interval over test pairs), and the share of pairs read closer to the source than to the target.
Reference rows: the ground-truth swap (the regressor's floor, ≈ 0), the target frame copied
(0 by construction up to the regressor's error), the source frame copied (≈ 1: the ceiling).

Prints a markdown table and writes ``bench/results/faceswap_robustswap_leakage.json``.

Run:  .venv/bin/python bench/faceswap_robustswap_leakage.py [--root data/faceswap]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks.faceswap.dataset import load_faces, load_pairs  # noqa: E402
from tasks.faceswap.evaluate import resize  # noqa: E402
from tasks.faceswap.robustswap.leakage import LEAK_GROUPS, source_leakage  # noqa: E402
from tasks.faceswap.tools import load_tools  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT / "data" / "faceswap", help="the run's faceswap folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faceswap_robustswap_leakage.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    test, pairs = load_faces(args.root / "faces", "test"), load_pairs(args.root / "faces")
    tools = load_tools(args.root / "tools")
    r = tools.resolution
    fields = ("pose", "expression", "light_dir", "light_color", "hair_color", "skin")
    src = {f: getattr(test, f)[pairs.source] for f in fields}
    tgt = {f: getattr(test, f)[pairs.target] for f in fields}
    rows: dict[str, torch.Tensor] = {"ground truth": resize(pairs.gt, r), "target copy": resize(test.images[pairs.target], r),
                                     "source copy": resize(test.images[pairs.source], r)}
    for d in sorted((args.root / "eval").iterdir()):
        if d.name.startswith("_") or not (d / "swaps.npy").is_file():
            continue
        rows[d.name] = resize(np.load(d / "swaps.npy"), r)
    results = {name: source_leakage(tools, imgs, src, tgt) for name, imgs in rows.items()}
    head = "| method | " + " | ".join(f"{g} λ" for g in LEAK_GROUPS) + " | " + " | ".join(f"{g} →src" for g in LEAK_GROUPS) + " |"
    print(head)
    print("|" + "---|" * (1 + 2 * len(LEAK_GROUPS)))
    # a group the regressor reads nothing of (no expression blendshape read on held-out renders) is n/a
    unread = {"expression"} if tools.expression_dims is not None and len(tools.expression_dims) == 0 else set()
    for name, res in results.items():
        lam = " | ".join("n/a" if g in unread else f"{res[g]['leak']:.2f} [{res[g]['leak_lo']:.2f}, {res[g]['leak_hi']:.2f}]"
                         for g in LEAK_GROUPS)
        closer = " | ".join("n/a" if g in unread else f"{res[g]['closer_to_source']:.2f}" for g in LEAK_GROUPS)
        print(f"| {name} | {lam} | {closer} |")
    prior = {}
    for d in sorted((args.root / "train").glob("robustswap*")):
        if (d / "robustswap.json").is_file():
            meta = json.loads((d / "robustswap.json").read_text())
            prior[d.name] = {"swap_wall_seconds": meta["swap_wall_seconds"], **meta["prior"]}
    if prior:
        first = next(iter(prior.values()))
        print("\nRobustSwap prior (shared by its ablations):")
        print("  FID-like curve (regressor features, G_ema vs real):",
              ", ".join(f"{p['step']}: {p['fid_like']:.2f}" for p in first["fid_curve"]), "| real-vs-real floor:",
              first.get("fid_real_floor"))
        inv = first["inversion_test"]
        print(f"  W+ inversion on held-out identities: PSNR {inv['psnr_db']:.2f} ± {inv['psnr_ci95']:.2f} dB, MSE {inv['mse']:.4f}, "
              f"L1 {inv['l1']:.4f} (mean face: {inv['mean_face_psnr_db']:.2f} dB)")
        print("  regressor on held-out identities:", {k: round(v, 4) for k, v in first["regressor_test"].items()})
        print("  swapper wall seconds:", {k: round(v["swap_wall_seconds"]) for k, v in prior.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for res in results.values():
        for g in unread:
            res[g] = {k: None for k in res[g]}
    args.out.write_text(json.dumps({"root": str(args.root), "pairs": len(pairs), "leakage": results, "robustswap": prior}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
