"""What a person looks at after a render: contact sheets, label statistics, throughput."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .shards import read_image


def contact_sheet(manifest: pd.DataFrame, shards_dir: Path | str, out: Path | str, *, n: int = 64, seed: int = 0,
                  caption: bool = True) -> Path:
    """A square grid of ``n`` random frames of ``manifest`` (already filtered to one domain/style)."""
    rows = manifest.sample(n=min(n, len(manifest)), random_state=seed).reset_index(drop=True)
    cols = int(np.ceil(np.sqrt(len(rows))))
    grid_rows = int(np.ceil(len(rows) / cols))
    res = int(rows["resolution"].iloc[0])
    sheet = Image.new("RGB", (cols * res, grid_rows * res), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, r in rows.iterrows():
        x, y = (i % cols) * res, (i // cols) * res
        sheet.paste(Image.fromarray(read_image(shards_dir, r["shard"], r["member"])), (x, y))
        if caption and res >= 96:
            draw.text((x + 3, y + 2), f"{r['identity'][-3:]} y{r['yaw']:+.0f}", fill=(60, 60, 60))
    out = Path(out)
    sheet.save(out)
    return out


def label_stats(manifest: pd.DataFrame) -> dict:
    """Counts per domain/style/split and the spread of the labels actually rendered."""
    out: dict = {"frames": int(len(manifest)), "by_domain": {}}
    for domain, g in manifest.groupby("domain"):
        w = np.stack(g["weights"].to_numpy())
        out["by_domain"][domain] = {
            "frames": int(len(g)),
            "identities": int(g["identity"].nunique()),
            "styles": sorted(g["style"].unique().tolist()),
            "train_identities": int(g.loc[g["split"] == "train", "identity"].nunique()),
            "test_identities": int(g.loc[g["split"] == "test", "identity"].nunique()),
            "mean_active_morphs": float((w > 0).sum(1).mean()),
            "yaw_range": [float(g["yaw"].min()), float(g["yaw"].max())],
            "pitch_range": [float(g["pitch"].min()), float(g["pitch"].max())],
            "roll_range": [float(g["roll"].min()), float(g["roll"].max())],
        }
    return out


def headline(stats: dict) -> dict:
    """DVC's metrics view: frames and identities per domain, and the render rate."""
    return {"frames": stats["frames"],
            **{d: {"frames": s["frames"], "identities": s["identities"]} for d, s in stats["by_domain"].items()},
            "frames_per_second": round(stats["render"]["frames_per_second"], 3)}


def render_stats(runs: list[dict]) -> dict:
    """Render throughput over the runs that made the current shards (a resumed render has several)."""
    worked = [r for r in runs if r["frames"]] or [{"frames_per_second": 0.0, "workers": 0, "per_worker": []}]
    last = worked[-1]  # the latest run that rendered anything: its pool is the one to report
    return {
        "wall_seconds": sum(r["wall_seconds"] for r in runs),
        "frames_rendered": sum(r["frames"] for r in runs),
        "frames_per_second": last["frames_per_second"],
        "workers": last["workers"],
        "per_worker": last["per_worker"],
        "shards_redone_after_worker_loss": sum(r["shards_redone"] for r in runs),
        "runs": len(runs),
    }


def summary_table(stats: dict) -> str:
    """The flow's report: one row per domain, then the render throughput."""
    from tasks.common.tables import markdown_table

    rows = [{"domain": d, **{k: v for k, v in s.items() if not isinstance(v, list)}} for d, s in stats["by_domain"].items()]
    r = stats["render"]
    return markdown_table(rows) + (f"\n\nRendered {r['frames_rendered']} frames in {r['wall_seconds']:.1f} s "
                                   f"({r['frames_per_second']:.2f} frames/s, {r['workers']} workers).")
