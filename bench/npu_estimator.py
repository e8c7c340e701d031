"""Accuracy and speed of S3NAS's analytical latency estimator against the SCALE-Sim NPU (METHODS.md §8.2–8.3).

One run: fit the estimator to the latency table of the default search space (plus two other
widths/resolutions of it), then draw ``--networks`` random whole networks at *other* widths and
resolutions (half of them finished with SE + h-swish), and for each

* simulate it with a cold, private cache (every distinct layer through SCALE-Sim once — the
  flow's own cost) and time that;
* also report what SCALE-Sim itself would spend running the network as-is (every layer
  instance and every depthwise channel, from the per-layer times);
* estimate it analytically and time that.

It prints MAPE, max error and both speed-ups, and writes ``bench/results/npu_estimator.json``.

    python bench/npu_estimator.py --networks 24 --out bench/results/npu_estimator.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks.s3nas.config import NPUConfig, SupernetConfig  # noqa: E402
from tasks.s3nas.estimator import LatencyEstimator, mape  # noqa: E402
from tasks.s3nas.lut import fit_scales  # noqa: E402
from tasks.s3nas.npu import SimCache, network_cycles  # noqa: E402
from tasks.s3nas.space import network_layers, scaled_supernet, search_space_layers  # noqa: E402
from tasks.s3nas.validation import heldout_archs  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--networks", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataflow", default="ws", choices=["ws", "os", "is"])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "npu_estimator.json"))
    args = p.parse_args(argv)

    npu, sn = NPUConfig(dataflow=args.dataflow), SupernetConfig()
    with tempfile.TemporaryDirectory(prefix="npu-bench-") as d:
        cache = SimCache(d, npu)  # cold: nothing reused from earlier runs
        t0 = time.perf_counter()
        fit_layers = {l.key(): l for w, r in fit_scales() for l in search_space_layers(scaled_supernet(sn, w, r), se_ratio=0.25)}
        rows = [(l, cache.simulate(l)["cycles"]) for l in fit_layers.values()]
        table_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        est = LatencyEstimator.fit(rows, npu)
        fit_s = time.perf_counter() - t0

        nets = heldout_archs(sn, args.networks, args.seed, se_ratio=0.25)  # the flow's held-out networks
        results = []
        for a in nets:
            net = network_layers(a)
            n0 = cache.simulations
            t0 = time.perf_counter()
            sim = network_cycles(net, cache)
            sim_s = time.perf_counter() - t0
            as_run = sum(cache.get(l)["sim_seconds"] * n for l, n in net)
            t0 = time.perf_counter()
            for _ in range(100):
                pred = est.network_cycles(net)
            est_s = (time.perf_counter() - t0) / 100
            keys = {l.key() for l, _ in net}
            results.append({"name": a.name, "arch": a.describe(), "sim_us": sim / npu.clock_mhz, "est_us": pred / npu.clock_mhz,
                            "err_pct": 100 * (pred - sim) / sim, "new_layers_simulated": cache.simulations - n0,
                            "new_layer_fraction": len(keys - set(fit_layers)) / len(keys), "sim_seconds_cold": sim_s,
                            "scalesim_seconds_as_run": as_run, "estimate_seconds": est_s})
    sim_total = sum(r["sim_seconds_cold"] for r in results)
    as_run_total = sum(r["scalesim_seconds_as_run"] for r in results)
    est_total = sum(r["estimate_seconds"] for r in results)
    summary = {
        "npu": npu.model_dump(), "networks": len(results), "fit_rows": len(rows), "table_seconds": table_s, "fit_seconds": fit_s,
        "mape_pct": mape([r["est_us"] for r in results], [r["sim_us"] for r in results]),
        "max_abs_err_pct": max(abs(r["err_pct"]) for r in results),
        "mean_new_layer_fraction": sum(r["new_layer_fraction"] for r in results) / len(results),
        "simulate_seconds_cold_cache": sim_total, "scalesim_seconds_as_run": as_run_total, "estimate_seconds": est_total,
        "speedup_vs_cold_cache": sim_total / est_total, "speedup_vs_scalesim_as_run": as_run_total / est_total,
        "per_network": results,
    }
    print(f"{'network':10} {'sim µs':>9} {'est µs':>9} {'err %':>7} {'new layers':>10} {'sim s':>7} {'est ms':>7}")
    for r in results:
        print(f"{r['name']:10} {r['sim_us']:9.1f} {r['est_us']:9.1f} {r['err_pct']:7.2f} {r['new_layer_fraction']:10.2f} "
              f"{r['sim_seconds_cold']:7.2f} {1e3 * r['estimate_seconds']:7.3f}")
    print(f"MAPE {summary['mape_pct']:.2f} % (max {summary['max_abs_err_pct']:.2f} %) on {len(results)} held-out networks; "
          f"estimator {est_total * 1e3:.1f} ms vs simulation {sim_total:.1f} s cold-cache "
          f"({summary['speedup_vs_cold_cache']:.0f}×) / {as_run_total:.1f} s SCALE-Sim as-run ({summary['speedup_vs_scalesim_as_run']:.0f}×)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
