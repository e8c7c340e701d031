"""Rate–distortion benchmark of the vidgan codec against x264 and x265 (METHODS.md §9), in one
process with no Prefect or Ray: the flow's own domain functions on real clips.

Per video: our codec at each key-frame CRF (bitstream bytes → kbps, decoder-side GAN training,
PSNR / SSIM / MS-SSIM over all frames), x264 and x265 CRF sweeps, and each baseline's quality at
our bitrate (linear in log-rate between sweep points). Prints a markdown table, writes
``bench/results/vidgan_rd.json``.

    .venv/bin/python bench/vidgan_rd.py [--width 96] [--frames 120] [--crfs 42 34] [--steps 250]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tasks.common.tables import markdown_table
from tasks.common.training import TrainingConfig
from tasks.vidgan import codec
from tasks.vidgan.config import GanConfig
from tasks.vidgan.container import bitrate_kbps
from tasks.vidgan.metrics import quality
from tasks.vidgan.report import matched
from tasks.vidgan.video import decode_standard, encode_standard, read_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--crfs", type=int, nargs="+", default=[42, 34])
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--videos", nargs="+", default=["carphone", "bikes", "bigbuckbunny"])
    args = ap.parse_args()
    gan = GanConfig(steps=args.steps)
    rows, raw = [], {}
    for name in args.videos:
        frames, fps = read_clip(name, args.width, args.frames)
        curves = {}
        for label, c in (("x264", "h264"), ("x265", "hevc")):
            curves[label] = []
            for crf in (51, 47, 43, 39, 35, 31, 27, 23):
                data = encode_standard(frames, c, crf, fps)
                curves[label].append({"crf": crf, "kbps": bitrate_kbps(len(data), len(frames), fps),
                                      **quality(frames, decode_standard(data, c))})
        ours = []
        for crf in args.crfs:
            bs, info = codec.encode(frames, fps, key_crf=crf, gan=codec.gan_header(gan))
            n = len(bs.to_bytes())
            t0 = time.perf_counter()
            dec = codec.decode(bs, training=TrainingConfig().on("cpu"))
            o = {"crf": crf, "kbps": bitrate_kbps(n, len(frames), fps), "sections": bs.sizes(),
                 "decode_s": time.perf_counter() - t0, **quality(frames, dec.frames)}
            ours.append(o)
            row = {"video": name, "key CRF": crf, "kbps": round(o["kbps"], 2)}
            for metric in ("psnr", "ssim", "ms_ssim"):
                row[f"{metric} ours"] = round(o[metric], 3)
                for label in ("x264", "x265"):
                    v, note = matched(o, curves[label], metric)
                    row[f"{metric} {label}"] = round(v, 3) if v is not None else note
            rows.append(row)
            print(row, flush=True)
        raw[name] = {"ours": ours, **curves, "frames": len(frames), "size": list(frames.shape[1:3]), "fps": float(fps)}
    print(markdown_table(rows))
    out = Path(__file__).parent / "results" / "vidgan_rd.json"
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "raw": raw}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
