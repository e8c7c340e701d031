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

COLUMNS = ["method", "test_acc", "acc_ci95", "sim_latency_us", "target_us", "of_target", "est_latency_us", "macs_M",
           "params_k", "search_s", "train_s", "arch"]


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


def report_rows(target_us: float, search_target_us: float, final_dirs: dict[str, Path], search_dirs: dict[str, Path],
                est_dir: Path, lut_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(one row per evaluated net — ours, rmSE, baselines —, the run-level facts) from the steps' outputs."""
    rows = []
    for name, d in final_dirs.items():
        for f in ("eval.json", "eval_rmse.json"):
            p = Path(d) / f
            if p.is_file():
                r = read_json(p)
                r["target_us"] = target_us
                s = search_dirs.get(name)
                r["search_seconds"] = read_json(Path(s) / "search.json")["search_seconds"] if s else 0.0
                rows.append(r)
    val = read_json(Path(est_dir) / "validation.json")
    search_info = read_json(Path(search_dirs["s3nas"]) / "search.json")
    extra = {
        "target_us": target_us, "search_target_us": search_target_us,
        "estimator": {k: val[k] for k in ("networks", "mape_pct", "max_abs_err_pct", "mean_new_layer_fraction",
                                          "estimate_seconds_total", "simulate_wall_seconds", "scalesim_seconds_as_run_total")},
        "search": {"seconds": search_info["search_seconds"], "searched_latency_us": search_info["latency_us"],
                   "arch": search_info["arch"]},
        "lut": read_json(Path(lut_dir) / "lut_stats.json"),
    }
    return rows, extra


def write_report(rows: list[dict[str, Any]], out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Write table.md, headline.json, metrics.json, results.csv, summary.json and pareto.png into ``out`` (the
    report step's temp folder, renamed into place whole)."""
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for r in rows:
        lo, hi = wilson(r["correct"], r["n_test"])
        table.append({
            "method": r["method"], "test_acc": round(r["test_acc"], 4), "acc_ci95": f"[{lo:.3f}, {hi:.3f}]",
            "sim_latency_us": round(r["sim_latency_us"], 1), "target_us": round(r["target_us"], 1),
            "of_target": round(r["sim_latency_us"] / r["target_us"], 3),
            "est_latency_us": round(r.get("est_latency_us", float("nan")), 1), "macs_M": round(r["macs"] / 1e6, 2),
            "params_k": round(r["params"] / 1e3, 1), "search_s": round(r.get("search_seconds", 0.0), 1),
            "train_s": round(r["train_seconds"], 1), "arch": r["arch_describe"],
        })
    ours = next((r for r in rows if r["method"] == "s3nas"), None)
    tests = {}
    if ours is not None:
        for r in rows:
            if r["method"] != "s3nas":
                tests[f"s3nas_vs_{r['method']}"] = mcnemar_exact(np.asarray(ours["correct_mask"], bool),
                                                                 np.asarray(r["correct_mask"], bool))
    metrics = {r["method"]: {k: r[k] for k in ("test_acc", "sim_latency_us", "macs", "params")} for r in rows}
    metrics["tests"] = tests
    metrics.update(extra)
    write_json(out / "metrics.json", metrics)
    # DVC's metrics view: the claim's numbers only (accuracy and simulated latency per method,
    # and the paired test against each baseline); everything else stays in metrics.json.
    write_json(out / "headline.json", {
        **{r["method"]: {"test_acc": round(r["test_acc"], 4), "sim_latency_us": round(r["sim_latency_us"], 1)}
           for r in rows},
        **{f"p_{k}": round(v["p_value"], 4) for k, v in tests.items()},
    })
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for t in table:
            w.writerow(t)
    md = markdown_table(table, COLUMNS)
    if tests:
        md += "\n\nExact McNemar tests (same test images): " + "; ".join(
            f"{k}: ours-only {v['a_only']}, baseline-only {v['b_only']}, p = {v['p_value']:.3g}" for k, v in tests.items())
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(md + "\n")
    pareto_png(table, out / "pareto.png", extra.get("target_us"))
    write_json(out / "summary.json", {"rows": [{k: v for k, v in r.items() if k not in ("correct_mask", "arch")}
                                               for r in rows], **extra})
    return {"table": table, "markdown": md}


def pareto_png(table: list[dict[str, Any]], path: Path, target_us: float | None) -> None:
    from tasks.common.plotting import png_figure

    with png_figure(path) as (fig, ax):
        for t in table:
            ax.scatter(t["sim_latency_us"], t["test_acc"], s=50)
            ax.annotate(t["method"], (t["sim_latency_us"], t["test_acc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        pts = sorted((t["sim_latency_us"], t["test_acc"]) for t in table)
        front, best = [], -1.0
        for x, y in pts:
            if y > best:
                front.append((x, y))
                best = y
        if len(front) > 1:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", lw=1, ls="--", label="Pareto front")
        if target_us:
            ax.axvline(target_us, color="red", lw=1, label=f"target {target_us:.0f} µs")
            ax.axvline(0.9 * target_us, color="red", lw=0.5, ls=":")
        ax.set_xlabel("simulated NPU latency (µs, SCALE-Sim)")
        ax.set_ylabel("Fashion-MNIST test accuracy")
        ax.set_title("S3NAS vs baselines at equal simulated latency")
        ax.legend(fontsize=8, loc="lower right")
