"""The S3NAS comparison at equal simulated latency: a table, metrics JSON, a Pareto PNG and
the statistics that say whether accuracy differences are more than test-set noise (Wilson
95 % intervals; exact McNemar tests of ours against each baseline on the same test images)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from tasks.common.artifacts import atomic_path, read_json, write_json
from tasks.common.tables import markdown_table

COLUMNS = ["method", "seed", "test_acc", "sim_latency_us", "of_target", "macs_M", "params_k", "train_s"]

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return c - h, c + h


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> dict[str, float]:
    """Two-sided exact McNemar test on paired correctness vectors."""
    b = int(np.sum(a_correct & ~b_correct))  # a right, b wrong
    c = int(np.sum(~a_correct & b_correct))
    n = b + c
    if n == 0:
        return {"a_only": b, "b_only": c, "p_value": 1.0}
    k = min(b, c)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return {"a_only": b, "b_only": c, "p_value": min(1.0, 2 * p)}


def report_rows(target_us: float, final_dirs: dict[str, list[Path]], search_dirs: dict[str, Path],
                scaled_dirs: dict[str, Path], est_dir: Path, lut_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per evaluated net and seed — every arm, rmSE —, the run-level facts) from the steps' outputs."""
    rows = []
    for name, dirs in final_dirs.items():
        scaling = read_json(Path(scaled_dirs[name]) / "scaling.json")
        for d in dirs:
            for f in ("eval.json", "eval_rmse.json"):
                p = Path(d) / f
                if p.is_file():
                    r = read_json(p)
                    r.update(target_us=target_us, arm=name, scale={k: scaling[k] for k in ("depth", "width", "resolution")})
                    rows.append(r)
    val = read_json(Path(est_dir) / "validation.json")
    searches = {}
    for name, d in search_dirs.items():
        info = read_json(Path(d) / "search.json")
        searches[name] = {k: info.get(k) for k in ("search_seconds", "latency_us", "npu_latency_us", "target_us",
                                                   "distinct_blocks", "image_passes", "cost", "arch", "cost_model")}
        if "candidates" in info:  # random search
            searches[name]["candidates"] = [{k: c[k] for k in ("val_acc", "latency_us", "describe")} for c in info["candidates"]]
        if "history" in info:
            searches[name]["readout_latency_by_epoch"] = [h.get("readout_latency_us") for h in info["history"]]
    scalings = {k: {x: v for x, v in read_json(Path(d) / "scaling.json").items() if x != "confirmations"}
                for k, d in scaled_dirs.items()}
    extra = {
        "target_us": target_us,
        "estimator": {k: val[k] for k in ("networks", "mape_pct", "max_abs_err_pct", "mean_new_layer_fraction",
                                          "estimate_seconds_total", "simulate_wall_seconds", "scalesim_seconds_as_run_total")},
        "searches": searches, "scalings": scalings, "lut": read_json(Path(lut_dir) / "lut_stats.json"),
    }
    return rows, extra


def per_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: r["seed"])
    return out


def paired_tests(ours: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed-matched comparisons of ours with another method on the same test images: an exact
    McNemar per seed, one over every (seed, image) pair pooled, and a paired t-test of the seeds'
    accuracies (the seed-to-seed spread is the noise the single-seed comparison ignored)."""
    from scipy import stats

    by_seed = {r["seed"]: r for r in other}
    pairs = [(a, by_seed[a["seed"]]) for a in ours if a["seed"] in by_seed]
    per_seed = [mcnemar_exact(np.asarray(a["correct_mask"], bool), np.asarray(b["correct_mask"], bool)) for a, b in pairs]
    pooled = mcnemar_exact(np.concatenate([np.asarray(a["correct_mask"], bool) for a, _ in pairs]),
                           np.concatenate([np.asarray(b["correct_mask"], bool) for _, b in pairs]))
    diffs = [a["test_acc"] - b["test_acc"] for a, b in pairs]
    t_p = float(stats.ttest_rel([a["test_acc"] for a, _ in pairs], [b["test_acc"] for _, b in pairs]).pvalue) \
        if len(pairs) >= 2 and np.std(diffs) > 0 else float("nan")
    return {"seeds": len(pairs), "mean_diff": float(np.mean(diffs)) if diffs else float("nan"),
            "per_seed_p": [round(t["p_value"], 4) for t in per_seed],
            "seeds_ours_better_p05": sum(t["p_value"] < 0.05 and t["a_only"] > t["b_only"] for t in per_seed),
            "seeds_ours_worse_p05": sum(t["p_value"] < 0.05 and t["a_only"] < t["b_only"] for t in per_seed),
            "pooled": pooled, "t_test_p": t_p}


def write_report(rows: list[dict[str, Any]], out: Path, extra: dict[str, Any], tolerance: float = 0.02,
                 npu_md: str = "") -> dict[str, Any]:
    """Write table.md, headline.json, metrics.json, results.csv, summary.json and pareto.png into ``out`` (the
    report step's temp folder, renamed into place whole)."""
    out.mkdir(parents=True, exist_ok=True)
    target = extra["target_us"]
    methods = per_method(rows)
    ours = methods.get("s3nas", [])
    tests = {m: paired_tests(ours, rs) for m, rs in methods.items() if m != "s3nas" and ours}
    table, metrics = [], {}
    for m, rs in methods.items():
        accs = np.array([r["test_acc"] for r in rs])
        lat = float(np.mean([r["sim_latency_us"] for r in rs]))
        sc = rs[0]["scale"]
        t = tests.get(m)
        within = (1 - tolerance) * target <= lat <= target
        table.append({
            "method": m, "test acc mean ± std": f"{accs.mean():.4f} ± {accs.std(ddof=1) if len(accs) > 1 else 0:.4f}",
            "seeds": len(rs), "per seed": " ".join(f"{a:.3f}" for a in accs),
            "sim µs (of T)": f"{lat:.1f} ({100 * lat / target:.1f} %)" + ("" if within else " ✗"),
            "Δ s3nas − this": "" if t is None else f"{t['mean_diff']:+.4f}",
            "McNemar p (pooled)": "" if t is None else f"{t['pooled']['p_value']:.3g}",
            "t-test p": "" if t is None else f"{t['t_test_p']:.3g}",
            "seeds p<.05 ours better/worse": "" if t is None else f"{t['seeds_ours_better_p05']}/{t['seeds_ours_worse_p05']}",
            "MACs M": round(rs[0]["macs"] / 1e6, 2), "params k": round(rs[0]["params"] / 1e3, 1),
            "scale d/w/r": f"{sc['depth']:g}/{sc['width']:g}/{sc['resolution']:g}", "net": rs[0]["arch_describe"],
        })
        metrics[m] = {"test_acc_mean": float(accs.mean()), "test_acc_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
                      "test_acc_per_seed": accs.tolist(), "sim_latency_us": lat, "within_tolerance": within,
                      "macs": rs[0]["macs"], "params": rs[0]["params"], "n_test": rs[0]["n_test"]}
    metrics["tests"] = tests
    metrics.update(extra)
    write_json(out / "metrics.json", metrics)
    # DVC's metrics view: the claim's numbers only (mean accuracy and simulated latency per method,
    # and the pooled paired test against each baseline); everything else stays in metrics.json.
    write_json(out / "headline.json", {
        **{m: {"test_acc_mean": round(v["test_acc_mean"], 4), "test_acc_std": round(v["test_acc_std"], 4),
               "sim_latency_us": round(v["sim_latency_us"], 1)} for m, v in metrics.items() if m in methods},
        **{f"p_s3nas_vs_{k}": round(v["pooled"]["p_value"], 4) for k, v in tests.items()},
    })
    flat = [{"method": r["method"], "seed": r["seed"], "test_acc": round(r["test_acc"], 4),
             "sim_latency_us": round(r["sim_latency_us"], 1), "of_target": round(r["sim_latency_us"] / target, 4),
             "macs_M": round(r["macs"] / 1e6, 3), "params_k": round(r["params"] / 1e3, 1),
             "train_s": round(r["train_seconds"], 1)} for r in rows]
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for t in flat:
            w.writerow(t)
    md = markdown_table(table, list(table[0]))
    md += (f"\n\nT = {target:g} µs on the simulated NPU; ✗ = outside [{100 * (1 - tolerance):.0f} %, 100 %] of T. "
           "Paired tests are against s3nas with the training seeds matched, on the same test images (McNemar pooled "
           "over seeds × images; t-test over the seeds' accuracies).\n\n" + diagnosis_md(extra))
    if npu_md:
        md += "\n\n" + npu_md
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(md + "\n")
    pareto_png(rows, out / "pareto.png", target, tolerance)
    write_json(out / "summary.json", {"rows": [{k: v for k, v in r.items() if k not in ("correct_mask", "arch")}
                                               for r in rows], **extra})
    return {"table": table, "markdown": md}


def diagnosis_md(extra: dict[str, Any]) -> str:
    """The searches side by side: cost model, target, what the read-out costs, how varied it is."""
    srows = []
    for name, s in extra["searches"].items():
        srows.append({"search": name, "cost model": s.get("cost") or "npu (table)",
                      "search target µs": round(s["target_us"], 1) if s.get("target_us") else "",
                      "read-out µs (its model)": round(s["latency_us"], 1) if s.get("latency_us") else "",
                      "read-out µs (NPU)": round(s["npu_latency_us"], 1) if s.get("npu_latency_us") else "",
                      "distinct block shapes": s.get("distinct_blocks", ""),
                      "read-out µs by epoch": " ".join(f"{x:.0f}" for x in (s.get("readout_latency_by_epoch") or []) if x),
                      "image passes": s.get("image_passes", ""), "seconds": round(s["search_seconds"] or 0, 1)})
    srows_md = markdown_table(srows, list(srows[0])) if srows else ""
    sc = [{"net": k, "scaled by": v.get("scale_cost", "npu"), "d/w/r": f"{v['depth']:g}/{v['width']:g}/{v['resolution']:g}",
           "its model µs": round(v.get("proxy_us", v["estimated_us"]), 1), "simulated µs": round(v["simulated_us"], 1),
           "of T": round(v["fraction_of_target"], 3)} for k, v in extra["scalings"].items()]
    return "Searches:\n\n" + srows_md + "\n\nScalings:\n\n" + markdown_table(sc, list(sc[0]))


def pareto_png(rows: list[dict[str, Any]], path: Path, target_us: float | None, tolerance: float = 0.02) -> None:
    """Accuracy vs simulated latency: every trained net (one dot per seed) and each method's mean ± std."""
    from tasks.common.plotting import png_figure

    with png_figure(path, size=(8.5, 4)) as (fig, ax):
        for i, (m, rs) in enumerate(per_method(rows).items()):
            color = f"C{i % 10}"
            x = [r["sim_latency_us"] for r in rs]
            y = [r["test_acc"] for r in rs]
            ax.scatter(x, y, s=12, alpha=0.5, color=color)
            ax.errorbar(np.mean(x), np.mean(y), yerr=np.std(y, ddof=1) if len(y) > 1 else 0, fmt="o", ms=7, capsize=4,
                        color=color, label=f"{m} (n={len(rs)})")
        if target_us:
            ax.axvline(target_us, color="red", lw=1, label=f"target {target_us:.0f} µs")
            ax.axvspan((1 - tolerance) * target_us, target_us, color="red", alpha=0.08)
        ax.set_xlabel("simulated NPU latency (µs, SCALE-Sim)")
        ax.set_ylabel("Fashion-MNIST test accuracy (10,000 images)")
        ax.set_title("Arms at equal simulated latency: seeds (dots) and mean ± std")
        # beside the axes, not on them: the arms cluster at T, where an inside legend hid them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
