"""The pixelhuman report: table by input-view count with intervals, paired differences, strips, MP4."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.artifacts import read_json, write_json
from tasks.common.tables import markdown_table

from .bodies import load_image
from .config import METHOD_LABELS
from .evaluate import bootstrap_ci

METRICS = (("psnr", "PSNR ↑", ".2f"), ("ssim", "SSIM ↑", ".3f"), ("iou", "mask IoU ↑", ".3f"))
SPLITS = (("novel_view", "novel view"), ("novel_pose", "novel pose"))


def _fmt(m: float, lo: float, hi: float, f: str) -> str:
    return f"{m:{f}} [{lo:{f}}, {hi:{f}}]"


def summarise(rows: list[dict], methods: list[str], counts: list[int], n_boot: int, seed: int) -> tuple[list, list, list]:
    """(table rows, paired-difference rows, csv rows)."""
    table, diffs, csv = [], [], []
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["views"], r["split"]), []).append(r)
    for split, label in SPLITS:
        for n in counts:
            for m in methods:
                rs = by.get((m, n, split), [])
                row = {"split": label, "views": n, "method": m, "images": len(rs)}
                rec = {"split": split, "views": n, "method": m}
                for k, name, f in METRICS:
                    mean, lo, hi = bootstrap_ci(np.array([r[k] for r in rs]), n_boot, seed)
                    row[name] = _fmt(mean, lo, hi, f)
                    rec.update({k: mean, f"{k}_lo": lo, f"{k}_hi": hi})
                table.append(row)
                csv.append(rec)
            ours = {(r["identity"], r["frame"], r["camera"]): r for r in by.get((methods[0], n, split), [])}
            for m in methods[1:]:
                pairs = [(ours[key], r) for r in by.get((m, n, split), [])
                         if (key := (r["identity"], r["frame"], r["camera"])) in ours]
                d = {"split": label, "views": n, "comparison": f"{methods[0]} − {m}"}
                for k, name, f in METRICS:
                    diff = np.array([a[k] - b[k] for a, b in pairs])
                    mean, lo, hi = bootstrap_ci(diff, n_boot, seed)
                    d[name] = _fmt(mean, lo, hi, "+" + f) + (" ✓" if lo > 0 else (" ✗" if hi < 0 else ""))
                    d[f"_{k}"] = (mean, lo, hi)
                diffs.append(d)
    return table, diffs, csv


def strips(bodies: Path, split: dict, renders: dict[str, dict], methods: list[str], views: int, path: Path) -> None:
    """Inputs | each method | ground truth, for a novel view and the novel poses of two test identities."""
    from tasks.common.plotting import png_figure

    rows = []
    for name in split["test"][:2]:
        info = split["subjects"][name]
        ins = []
        for c in info["inputs"][:views]:
            rgb, _ = load_image(bodies / name / f"images/{info['input_pose']}__{c}.png", _res(bodies, name))
            ins.append((rgb.numpy() * 255).astype(np.uint8))
        targets = [tuple(info["novel_view"][0])] + [tuple(t) for t in info["novel_pose"][::max(1, len(info["novel_pose"]) // 2)][:2]]
        for frame, cam in targets:
            gt, _ = load_image(bodies / name / f"images/{frame}__{cam}.png", _res(bodies, name))
            cells = [np.concatenate(ins, 1)]
            for m in methods:
                cells.append(renders[m].get(f"{name}|{views}|{frame}|{cam}", np.zeros_like(ins[0])))
            cells.append((gt.numpy() * 255).astype(np.uint8))
            rows.append((f"{name} {frame}/{cam}", cells))
    n_cols = len(rows[0][1])
    titles = [f"inputs ({views})"] + [m for m in methods] + ["ground truth"]
    with png_figure(path, ncols=n_cols, size=(2.0 * n_cols + views, 2.0 * len(rows)), dpi=100,
                    title=f"unseen identities, {views} input view(s): inputs | methods | ground truth") as (fig, axes):
        fig.clear()
        grid = fig.subplots(len(rows), n_cols, squeeze=False,
                            gridspec_kw={"width_ratios": [views] + [1] * (n_cols - 1)})
        for i, (label, cells) in enumerate(rows):
            for j, cell in enumerate(cells):
                ax = grid[i][j]
                ax.imshow(cell)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(titles[j], fontsize=8)
                if j == 0:
                    ax.set_ylabel(label, fontsize=7)


def _res(bodies: Path, name: str) -> int:
    return int(read_json(bodies / name / "cameras.json")["resolution"])


def turntable(bodies: Path, split: dict, renders: dict[str, dict], methods: list[str], views: int, path: Path) -> int:
    """Ground truth | each method, a test identity walking under an orbiting camera (2× upscaled)."""
    from tasks.common.video import write_mp4

    name = next(n for n in split["test"] if "walk" in split["subjects"][n])
    frames = []
    for frame, cam in split["subjects"][name]["walk"]:
        gt, _ = load_image(bodies / name / f"images/{frame}__{cam}.png", _res(bodies, name))
        cells = [(gt.numpy() * 255).astype(np.uint8)] + [renders[m][f"{name}|{views}|{frame}|{cam}"] for m in methods]
        row = np.concatenate(cells, 1)
        frames.append(np.repeat(np.repeat(row, 2, 0), 2, 1))
    write_mp4(frames, path, fps=8)
    return len(frames)


def build_report(cfg, bodies: Path, eval_dirs: dict[str, Path], train_dirs: dict[str, Path], out: Path) -> None:
    methods = [m for m in cfg.methods if m in eval_dirs]
    rows = [r for m in methods for r in read_json(eval_dirs[m] / "rows.json")]
    counts = list(cfg.eval.view_counts)
    table, diffs, csv = summarise(rows, methods, counts, cfg.eval.bootstrap, cfg.eval.seed)
    split = read_json(bodies / "split.json")
    renders = {m: dict(np.load(eval_dirs[m] / "renders.npz")) for m in methods}
    walk_views = read_json(eval_dirs[methods[0]] / "eval.json")["walk_views"]
    strips(bodies, split, renders, methods, max(c for c in counts if c <= 3) if min(counts) <= 3 else counts[0],
           out / "strips.png")
    n_frames = turntable(bodies, split, renders, methods, walk_views, out / "turntable.mp4")
    speed = []
    for m in methods:
        e = read_json(eval_dirs[m] / "eval.json")
        t = read_json(train_dirs[m] / "train.json") if m in train_dirs else None
        speed.append({"method": m, "train s": round(t["train_seconds"], 1) if t else None,
                      "train rays/s": round(t["steps"] * t["rays_per_step"] / t["train_seconds"], 1) if t and t["train_seconds"] else None,
                      "eval s (incl. per-subject fits)": round(e["seconds"], 1),
                      "render rays/s": round(e["render_rays_per_second"], 1)})
    n_train, n_test = len(split["train"]), len(split["test"])
    head = (f"{n_train} training / {n_test} unseen test identities (anny), {cfg.data.resolution}² Cycles renders, "
            f"{cfg.train.steps} generalisable steps × {cfg.train.rays} rays, per-subject baseline {cfg.subject.steps} steps"
            f"{f', ours fine-tuned {cfg.subject.finetune_steps} steps' if cfg.subject.finetune_steps else ''}; "
            "mean [95 % bootstrap interval over test images]; PSNR/SSIM on the body mask (torchmetrics).\n\n"
            + "Methods: " + "; ".join(f"`{m}` = {METHOD_LABELS[m]}" for m in methods) + "\n\n")
    diff_rows = [{k: v for k, v in d.items() if not k.startswith("_")} for d in diffs]
    text = (head + markdown_table(table) + "\n\nPaired differences (same images; ✓ interval above 0, ✗ below):\n\n"
            + (markdown_table(diff_rows) if diff_rows else "_(one method only)_")
            + "\n\nSpeed (this run's device):\n\n" + markdown_table(speed)
            + f"\n\nStrips: `report/strips.png`; turntable ({n_frames} walk frames, {walk_views} input views; "
              "ground truth | " + " | ".join(methods) + "): `report/turntable.mp4`.\n")
    (out / "table.md").write_text(text)
    write_json(out / "metrics.json", {"rows": csv, "differences": diffs, "speed": speed})
    import pandas as pd

    pd.DataFrame(csv).to_csv(out / "results.csv", index=False)
    head_metrics = {}
    for r in csv:
        if r["method"] == methods[0]:
            head_metrics[f"{r['split']}_v{r['views']}_psnr"] = r["psnr"]
            head_metrics[f"{r['split']}_v{r['views']}_iou"] = r["iou"]
    for d in diffs:
        tag = d["comparison"].split("−")[-1].strip()
        split_key = "novel_view" if d["split"] == "novel view" else "novel_pose"
        head_metrics[f"{split_key}_v{d['views']}_dpsnr_vs_{tag}"] = d["_psnr"][0]
    write_json(out / "headline.json", head_metrics)
