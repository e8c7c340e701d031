"""The STUN comparison: metrics JSON, one CSV per curve, and a plot of quality vs sparsity.

Rows come from the evaluation step, one per model variant. Sparsity is measured, not
assumed: 1 − (nonzero expert weights) / (expert weights of the dense model).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from tasks.common.artifacts import atomic_path, write_json
from tasks.common.tables import markdown_table

COLUMNS = ["method", "target_sparsity", "sparsity", "ppl", "exact_match", "experts_kept"]


def tabulate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dense = next((r for r in rows if r["method"] == "dense"), None)
    dense_total = dense["expert_weights_total"] if dense else max(r["expert_weights_total"] for r in rows)
    table = []
    for r in rows:
        table.append({
            "method": r["method"],
            "target_sparsity": round(float(r.get("target_sparsity", 0.0)), 4),
            "sparsity": round(1.0 - r["expert_weights_nonzero"] / dense_total, 4),
            "ppl": round(float(r["ppl"]), 3),
            "exact_match": round(float(r["exact_match"]), 4),
            "experts_kept": sum(r["experts_per_layer"]),
        })
    table.sort(key=lambda t: (t["target_sparsity"], t["method"]))
    return table


def write_report(rows: list[dict[str, Any]], out: Path, cfg: Any, zoo: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    table = tabulate(rows)
    metrics: dict[str, Any] = {"dense": {}, "sweep": {}}
    for t in table:
        if t["method"] == "dense":
            metrics["dense"] = {"ppl": t["ppl"], "exact_match": t["exact_match"]}
        else:
            key = f"s{int(round(t['target_sparsity'] * 100))}"
            metrics["sweep"].setdefault(key, {})[t["method"]] = {k: t[k] for k in ("sparsity", "ppl", "exact_match")}
    if zoo:
        metrics["zoo"] = {k: zoo[k] for k in ("train_seconds", "params", "expert_params") if k in zoo}
    write_json(out / "metrics.json", metrics)
    write_json(out / "headline.json", headline(table, getattr(cfg, "export_sparsity", None)))

    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    dense = [t for t in table if t["method"] == "dense"]
    for method in sorted({t["method"] for t in table} - {"dense"}):
        pts = dense + [t for t in table if t["method"] == method]
        with atomic_path(curves / f"{method}.csv") as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            for p in sorted(pts, key=lambda p: p["sparsity"]):
                w.writerow({**p, "method": method})
    # One long-format CSV too, which DVC plots can split by method.
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(table)
    plot_curves(table, out / "pruning_curves.png")
    md = markdown_table(table, COLUMNS)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(md + "\n")
    return {"table": table, "markdown": md, "metrics": metrics}


def headline(table: list[dict[str, Any]], sparsity: float | None) -> dict[str, Any]:
    """DVC's metrics view: dense, and every method at the exported sparsity (ppl, exact match);
    the full sweep stays in ``metrics.json``."""
    targets = sorted({t["target_sparsity"] for t in table if t["method"] != "dense"})
    if not targets:
        return {}
    at = min(targets, key=lambda x: abs(x - (sparsity if sparsity is not None else targets[len(targets) // 2])))
    out: dict[str, Any] = {"sparsity": at}
    for t in table:
        if t["method"] == "dense" or t["target_sparsity"] == at:
            out[t["method"]] = {"ppl": t["ppl"], "exact_match": t["exact_match"]}
    return out


def plot_curves(table: list[dict[str, Any]], path: Path) -> None:
    from tasks.common.plotting import png_figure

    with png_figure(path, ncols=2, size=(11, 4.2), dpi=110, title="STUN vs baselines") as (fig, (ax_acc, ax_ppl)):
        dense = next((t for t in table if t["method"] == "dense"), None)
        for method in sorted({t["method"] for t in table} - {"dense"}):
            pts = sorted([t for t in table if t["method"] == method], key=lambda t: t["sparsity"])
            if dense:
                pts = [dense] + pts
            style = "-o" if method.startswith("stun") else "--s"
            ax_acc.plot([p["sparsity"] for p in pts], [p["exact_match"] for p in pts], style, label=method)
            ax_ppl.plot([p["sparsity"] for p in pts], [p["ppl"] for p in pts], style, label=method)
        ax_acc.set(xlabel="total expert-weight sparsity", ylabel="exact match (held-out problems)", title="accuracy")
        ax_ppl.set(xlabel="total expert-weight sparsity", ylabel="perplexity (held-out works)", title="perplexity",
                   yscale="log")
        for ax in (ax_acc, ax_ppl):
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=8)
