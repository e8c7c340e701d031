"""The ``vidgan`` report (METHODS.md §9's claim: better quality than H.264/HEVC below ~10 kbps):
rate–distortion of ours against x264 and x265 on the same clips, compared at matched bitrate,
with the edge coder's sizes, speeds, RD plots and side-by-side frame strips.

Matched rate: a baseline's quality at our bitrate is read off its CRF sweep, linear in
log-bitrate between the two sweep points around it; where our rate is below the lowest rate the
baseline reaches (CRF 51 with one I-frame), there is nothing to match and the table says so,
showing the baseline's lowest point instead. Our bitrate is the bitstream's full byte count
(header, key frames, edge maps); "+ weights" adds the generator sent inside it.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from tasks.common.artifacts import read_json, write_json
from tasks.common.plotting import png_figure

from .metrics import MS_SSIM_BETAS, MS_SSIM_KERNEL, interpolate_at

METRICS = ("psnr", "ssim", "ms_ssim")
LABEL = {"psnr": "PSNR dB", "ssim": "SSIM", "ms_ssim": "MS-SSIM"}


def _fmt(x: float | None, metric: str) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if metric == "psnr" else f"{x:.3f}"


def matched(ours: dict, curve: list[dict], metric: str) -> tuple[float | None, str]:
    """(baseline value at our rate or None, a note when the baseline cannot reach that rate)."""
    v = interpolate_at(ours["kbps"], curve, metric)
    if v is not None:
        return v, ""
    low = min(curve, key=lambda p: p["kbps"])
    if ours["kbps"] < low["kbps"]:
        return None, f"min {low['kbps']:.1f} kbps"
    return None, "above sweep"


def collect(clips, baseline_dirs, enc_dirs, dec_dirs) -> list[dict]:
    videos = []
    for c, b, es, ds in zip(clips, baseline_dirs, enc_dirs, dec_dirs):
        meta = read_json(Path(c) / "clip.json")
        base = read_json(Path(b) / "rd.json")
        ours = []
        for e, d in zip(es, ds):
            m = read_json(Path(d) / "metrics.json")
            m["encode"] = read_json(Path(e) / "encode.json")
            ours.append(m)
        videos.append({"name": meta["name"], "slug": Path(c).name, "clip": meta, "ours": sorted(ours, key=lambda r: r["kbps"]),
                       "x264": [r for r in base if r["method"] == "x264"],
                       "x265": [r for r in base if r["method"] == "x265"], "clip_dir": str(c), "dec_dirs": [str(d) for d in ds]})
    return videos


def rd_table(videos: list[dict]) -> tuple[str, list[dict]]:
    head = ("| video | ours (key CRF) | kbps | kbps + weights | PSNR ours / x264 / x265 | SSIM ours / x264 / x265 "
            "| MS-SSIM ours / x264 / x265 |\n| --- | --- | --- | --- | --- | --- | --- |\n")
    lines, cmp_rows = [], []
    for v in videos:
        for o in v["ours"]:
            cells = []
            row = {"video": v["name"], "crf": o["crf"], "kbps": o["kbps"], "kbps_with_weights": o["kbps_with_weights"]}
            for metric in METRICS:
                vals, notes = [_fmt(o[metric], metric)], []
                for codec in ("x264", "x265"):
                    val, note = matched(o, v[codec], metric)
                    row[f"{codec}_{metric}"] = val
                    vals.append(_fmt(val, metric))
                    if note:
                        notes.append(f"{codec} {note}")
                row[f"ours_{metric}"] = o[metric]
                cells.append(" / ".join(vals) + (f" ({'; '.join(dict.fromkeys(notes))})" if notes and metric == "psnr" else ""))
            cmp_rows.append(row)
            lines.append(f"| {v['name']} | {o['crf']} | {o['kbps']:.2f} | {o['kbps_with_weights']:.0f} | " + " | ".join(cells) + " |")
    # Averages over videos, per rate point (same key CRF), only over entries a baseline could match.
    for crf in sorted({r["crf"] for r in cmp_rows}, reverse=True):
        rs = [r for r in cmp_rows if r["crf"] == crf]
        cells = []
        for metric in METRICS:
            vals = [_fmt(float(np.mean([r[f"ours_{metric}"] for r in rs])), metric)]
            for codec in ("x264", "x265"):
                got = [r[f"{codec}_{metric}"] for r in rs if r[f"{codec}_{metric}"] is not None]
                vals.append(_fmt(float(np.mean(got)), metric) + (f"[{len(got)}/{len(rs)}]" if len(got) < len(rs) else "")
                            if got else "—")
            cells.append(" / ".join(vals))
        lines.append(f"| **mean of {len(rs)}** | {crf} | {np.mean([r['kbps'] for r in rs]):.2f} | "
                     f"{np.mean([r['kbps_with_weights'] for r in rs]):.0f} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n", cmp_rows


def baseline_floor_table(videos: list[dict]) -> str:
    rows = ["| video | frames × size @ fps | x264 lowest (CRF 51) kbps / PSNR / MS-SSIM | x265 lowest kbps / PSNR / MS-SSIM "
            "| x264 highest kbps / PSNR | x265 highest kbps / PSNR |", "| --- | --- | --- | --- | --- | --- |"]
    for v in videos:
        c = v["clip"]
        cells = []
        for codec in ("x264", "x265"):
            lo = min(v[codec], key=lambda p: p["kbps"])
            cells.append(f"{lo['kbps']:.2f} / {lo['psnr']:.2f} / {lo['ms_ssim']:.3f}")
        for codec in ("x264", "x265"):
            hi = max(v[codec], key=lambda p: p["kbps"])
            cells.append(f"{hi['kbps']:.1f} / {hi['psnr']:.2f}")
        rows.append(f"| {v['name']} | {c['frames']} × {c['width']}×{c['height']} @ {c['fps'][0] / c['fps'][1]:.2f} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def coder_table(videos: list[dict]) -> str:
    rows = ["| video | map T×h×w, levels | ours (context-adaptive + range coder) B | spatial-only / with-temporal context B "
            "| zstd-19 B | PNG B | order-0 entropy B |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in videos:
        e = v["ours"][0]["encode"]
        c = e["edge_coder_bytes"]
        other = c.get("ours_spatial_only", c.get("ours_with_temporal"))
        rows.append(f"| {v['name']} | {'×'.join(map(str, e['map_shape']))} | **{c['ours']}** | {other} | {c['zstd']} | "
                    f"{c['png']} | {c['order0_entropy']} |")
    return "\n".join(rows) + "\n"


def speed_table(videos: list[dict]) -> str:
    rows = ["| video | ours encode fps | ours decode fps (trains the GAN) | ours decode fps (weights sent) "
            "| GAN training s | x264 enc / dec fps | x265 enc / dec fps |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in videos:
        o = v["ours"]
        med = lambda rs, k: float(np.median([r[k] for r in rs]))  # noqa: E731
        rows.append(f"| {v['name']} | {med([r['encode'] for r in o], 'encode_fps'):.0f} | "
                    f"{med(o, 'decode_fps_with_training'):.2f} | {med(o, 'decode_fps_with_weights'):.0f} | "
                    f"{np.median([r['timings']['train_seconds'] for r in o]):.0f} | "
                    f"{med(v['x264'], 'encode_fps'):.0f} / {med(v['x264'], 'decode_fps'):.0f} | "
                    f"{med(v['x265'], 'encode_fps'):.0f} / {med(v['x265'], 'decode_fps'):.0f} |")
    return "\n".join(rows) + "\n"


def plot_rd(v: dict, path: Path) -> None:
    with png_figure(path, ncols=3, size=(13, 3.8), title=f"{v['name']}: rate–distortion") as (fig, axes):
        for ax, metric in zip(axes, METRICS):
            for codec, style in (("x264", "o-"), ("x265", "s-")):
                pts = sorted(v[codec], key=lambda p: p["kbps"])
                ax.plot([p["kbps"] for p in pts], [p[metric] for p in pts], style, label=codec, ms=4)
            ax.plot([o["kbps"] for o in v["ours"]], [o[metric] for o in v["ours"]], "*-", ms=9, label="ours (soft-edge GAN)")
            ax.set_xscale("log")
            ax.set_xlabel("kbps")
            ax.set_ylabel(LABEL[metric])
            ax.axvline(10, color="grey", lw=0.8, ls=":")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)


def plot_strip(v: dict, path: Path, n: int) -> dict:
    """Original / ours (lowest rate) / x264 / x265 at the sweep point nearest our rate, on ``n``
    evenly spaced generated (non-key) frames."""
    from fractions import Fraction

    from .video import decode_standard, encode_standard

    frames = np.load(Path(v["clip_dir"]) / "frames.npy")
    o = v["ours"][0]
    dec_dir = next(d for d in v["dec_dirs"] if read_json(Path(d) / "metrics.json")["crf"] == o["crf"])
    ours = np.load(Path(dec_dir) / "frames.npy")
    keys = set(read_json(Path(dec_dir) / "metrics.json").get("key_index", []))
    fps = Fraction(*v["clip"]["fps"])
    rows = {"original": frames, f"ours {o['kbps']:.1f} kbps": ours}
    chosen = {}
    for codec, name in (("x264", "h264"), ("x265", "hevc")):
        p = min(v[codec], key=lambda r: abs(np.log(r["kbps"] / o["kbps"])))
        chosen[codec] = p
        rows[f"{codec} {p['kbps']:.1f} kbps"] = decode_standard(encode_standard(frames, name, p["crf"], fps), name)
    idx = [i for i in np.linspace(0, len(frames) - 1, n + 2).round().astype(int)[1:-1] if i not in keys][:n] or [0]
    with png_figure(path, ncols=1, size=(1.6 * len(idx) + 1, 1.3 * len(rows) + 0.4), dpi=150,
                    title=f"{v['name']}: frames {', '.join(map(str, idx))}") as (fig, ax):
        grid = np.concatenate([np.concatenate([r[i] for i in idx], axis=1) for r in rows.values()], axis=0)
        ax.imshow(grid)
        h = frames.shape[1]
        ax.set_yticks([h * (k + 0.5) for k in range(len(rows))], list(rows))
        ax.set_xticks([])
    return {k: {"crf": p["crf"], "kbps": p["kbps"]} for k, p in chosen.items()}


def write_report(out: Path, cfg, clips, baseline_dirs, enc_dirs, dec_dirs) -> None:
    out = Path(out)
    videos = collect(clips, baseline_dirs, enc_dirs, dec_dirs)
    table, cmp_rows = rd_table(videos)
    strips = {}
    (out / "figures").mkdir()
    for v in videos:
        plot_rd(v, out / "figures" / f"rd_{v['slug']}.png")
        strips[v["slug"]] = plot_strip(v, out / "figures" / f"strip_{v['slug']}.png", cfg.strip_frames)
    md = ("Rate–distortion at matched bitrate (baselines interpolated in log-rate along their CRF sweeps; "
          "— = the codec cannot go that low):\n\n" + table +
          "\nWhat x264 and x265 reach at the ends of their sweeps (one I-frame, then prediction):\n\n"
          + baseline_floor_table(videos) +
          "\nEdge-map lossless coding, bytes for the whole clip:\n\n" + coder_table(videos) +
          "\nSpeed (2-core CPU, frames/s):\n\n" + speed_table(videos) +
          f"\nMS-SSIM: torchmetrics, {len(MS_SSIM_BETAS)} scales (weights {MS_SSIM_BETAS}), {MS_SSIM_KERNEL}-tap "
          "window (the frames are too small for 5 scales); SSIM 11-tap Gaussian; all on RGB.\n")
    (out / "table.md").write_text(md)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video", "method", "crf", "kbps", "psnr", "ssim", "ms_ssim"])
    for v in videos:
        for codec in ("x264", "x265", "ours"):
            for p in v[codec]:
                w.writerow([v["name"], codec, p["crf"], round(p["kbps"], 4), round(p["psnr"], 4), round(p["ssim"], 5),
                            round(p["ms_ssim"], 5)])
    (out / "results.csv").write_text(buf.getvalue())
    low = [r for r in cmp_rows if r["crf"] == max(r2["crf"] for r2 in cmp_rows)]
    headline = {"videos": len(videos), "lowest_point_kbps": float(np.mean([r["kbps"] for r in low]))}
    for metric in METRICS:
        headline[f"ours_{metric}"] = float(np.mean([r[f"ours_{metric}"] for r in low]))
        for codec in ("x264", "x265"):
            got = [r[f"{codec}_{metric}"] for r in low if r[f"{codec}_{metric}"] is not None]
            headline[f"{codec}_{metric}_matched"] = float(np.mean(got)) if got else None
    write_json(out / "headline.json", headline)
    write_json(out / "metrics.json", {"videos": videos, "matched": cmp_rows, "strips": strips})
