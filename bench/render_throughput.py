"""Render throughput of the ``animeceleb`` Blender workers: frames/s by resolution and pool size.

One run renders the same plan (anime heads in both styles plus human heads, as the flow does)
at 128² and 256² with 1 and 2 :class:`~workers.blender.BlenderWorker` actors (one ``bpy``
process each, one Cycles thread each), into fresh folders, and reports

* wall frames/s — frames / wall time of the whole pool run, worker start-up (``bpy`` import,
  anny's first build) included: what a user waits for;
* steady frames/s — frames / the slowest worker's busy time (rendering and shard writing only);
* speed-up per added worker — steady frames/s of 2 workers over 1, at the same resolution.

Numbers are relative to the 1-worker run measured in the same process, so they carry over
between machines better than the absolute rates; with 2 cores, 2 workers is the ceiling.
Prints a table and writes ``bench/results/render_throughput.json``.

Run:  .venv/bin/python bench/render_throughput.py [--identities 2 --frames 11 --samples 8]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--identities", type=int, default=2, help="identities per domain")
    p.add_argument("--frames", type=int, default=11, help="random frames per identity (plus the basis frame)")
    p.add_argument("--samples", type=int, default=8, help="Cycles samples per pixel")
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--frames-per-shard", type=int, default=6)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "render_throughput.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import ray

    from tasks.animeceleb.config import AnimeCelebConfig
    from tasks.animeceleb.sampling import build_plan
    from flows.platform.runner import ray_init_kwargs
    from workers.blender import render_shards

    a = parse_args(argv)
    ray.init(**{**ray_init_kwargs(None), "num_cpus": max(a.workers)})
    rows = []
    try:
        for res in a.resolutions:
            cfg = AnimeCelebConfig(identities=a.identities, frames_per_identity=a.frames, sequences_per_identity=0,
                                   resolution=res, samples=a.samples, frames_per_shard=a.frames_per_shard,
                                   test_fraction=0.0)
            plan, _ = build_plan(cfg)
            shards = {s: g.to_dict("records") for s, g in plan.groupby("shard", sort=False)}
            for n in a.workers:
                with tempfile.TemporaryDirectory(prefix="render-bench-") as tmp:
                    t0 = time.perf_counter()
                    # the pool's scratch (Blender's temp files) is a sibling of the output: inside tmp
                    stats = render_shards(shards, Path(tmp) / "shards", workers=n, threads=1)
                    wall = time.perf_counter() - t0
                busy = max(w["seconds"] for w in stats["per_worker"])
                rows.append({"resolution": res, "workers": n, "frames": stats["frames"], "wall_s": round(wall, 2),
                             "wall_fps": stats["frames"] / wall, "steady_fps": stats["frames"] / busy,
                             "per_worker_fps": [round(w["frames_per_second"], 3) for w in stats["per_worker"]]})
                print(f"{res}² × {n} worker(s): {stats['frames']} frames in {wall:.1f} s", flush=True)
    finally:
        ray.shutdown()
    for r in rows:
        base = next(b for b in rows if b["resolution"] == r["resolution"] and b["workers"] == min(a.workers))
        extra = r["workers"] - base["workers"]
        r["speedup"] = r["steady_fps"] / base["steady_fps"]
        r["speedup_per_added_worker"] = (r["speedup"] - 1) / extra if extra else None
        r["wall_speedup"] = r["wall_fps"] / base["wall_fps"]
    print("\n| resolution | workers | frames | wall s | wall frames/s | steady frames/s | speed-up (steady) | gain per added worker | speed-up (wall) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = "—" if r["speedup_per_added_worker"] is None else f"+{100 * r['speedup_per_added_worker']:.0f}%"
        print(f"| {r['resolution']}² | {r['workers']} | {r['frames']} | {r['wall_s']:.1f} | {r['wall_fps']:.2f} | "
              f"{r['steady_fps']:.2f} | {r['speedup']:.2f}× | {gain} | {r['wall_speedup']:.2f}× |")
    result = {"rows": rows, "samples": a.samples, "cpus": os.cpu_count(),
              "note": "same plan for every row; 1 Cycles thread per worker; measured in one run"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
