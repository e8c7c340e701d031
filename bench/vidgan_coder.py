"""Benchmark of the vidgan edge-map lossless coder (METHODS.md §9, Encoder B step 3).

For each real clip and each (down-sampling, levels) setting: bytes of the soft-edge maps with our
context-adaptive range coder (spatial + temporal context), the spatial-only context, zstd-19 and
PNG, the order-0 entropy bound, the edge stream's kbit/s, and encode/decode speed (maps/s).
Prints a markdown table and writes ``bench/results/vidgan_coder.json``.

    .venv/bin/python bench/vidgan_coder.py [--width 96] [--frames 120]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tasks.common.tables import markdown_table
from tasks.vidgan.edges import soft_edge_map
from tasks.vidgan.lossless import baseline_sizes, decode_maps, encode_maps, entropy_bits
from tasks.vidgan.video import read_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--videos", nargs="+", default=["carphone", "bikes", "bigbuckbunny"])
    args = ap.parse_args()
    rows = []
    for name in args.videos:
        frames, fps = read_clip(name, args.width, args.frames)
        seconds = len(frames) / float(fps)
        for d, levels in ((4, 2), (4, 4), (2, 4), (4, 6)):
            maps, _ = soft_edge_map(frames, d, levels, 0.3)
            t0 = time.perf_counter()
            ours = encode_maps(maps, levels, True)
            t1 = time.perf_counter()
            assert np.array_equal(decode_maps(ours, maps.shape, levels, True), maps)
            t2 = time.perf_counter()
            other = baseline_sizes(maps, levels)
            rows.append({"video": name, "map": "×".join(map(str, maps.shape)), "levels": levels,
                         "ours B": len(ours), "spatial-only B": len(encode_maps(maps, levels, False)),
                         "zstd-19 B": other["zstd"], "PNG B": other["png"],
                         "order-0 B": int(np.ceil(entropy_bits(maps, levels) / 8)),
                         "ours / zstd": round(len(ours) / other["zstd"], 3),
                         "edge kbps": round(len(ours) * 8 / seconds / 1000, 2),
                         "enc maps/s": round(len(maps) / (t1 - t0), 1), "dec maps/s": round(len(maps) / (t2 - t1), 1)})
    print(markdown_table(rows))
    out = Path(__file__).parent / "results" / "vidgan_coder.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
