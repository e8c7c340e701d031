"""The STUN comparison (ACL 2025, METHODS.md §1): tables, intervals, curves and the model card.

Rows come from the evaluation step, one per (seed, model variant). Sparsity is measured, not
assumed: 1 − (nonzero expert weights) / (expert weights of that seed's dense model). Spread is
read two ways: mean ± sample std over the seeds (each seed its own zoo model and calibration
set), and, for exact match, a 95 % Wilson interval over all test problems of all seeds. A STUN
row is read against its twin — unstructured pruning alone with the same method at the same S —
through paired differences on the same seeds and the same problems (a stratified bootstrap over
problems for exact match), and how many seeds agree on the sign.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tasks.common.artifacts import atomic_path, write_json
from tasks.common.tables import markdown_table

Z95 = 1.959963984540054
BOOTSTRAP = 2000


# ---------------------------------------------------------------------------- statistics


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for a single value)."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound at 0 and 1, unlike p ± z·se)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_bootstrap(a: list[list[int]], b: list[list[int]], reps: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile interval of EM(a) − EM(b) over problems, paired per problem and
    resampled within each seed (strata: seeds' problem lists, same problems in a and b)."""
    rng = np.random.default_rng(seed)
    diffs = [np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64) for x, y in zip(a, b)]
    if not diffs or any(d.size == 0 for d in diffs):
        return float("nan"), float("nan"), float("nan")
    total = sum(d.size for d in diffs)
    point = float(sum(d.sum() for d in diffs) / total)
    stats = np.zeros(reps)
    for d in diffs:
        idx = rng.integers(0, d.size, size=(reps, d.size))
        stats += d[idx].sum(axis=1)
    stats /= total
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


# ---------------------------------------------------------------------------- aggregation


def _sparsity(r: dict[str, Any], dense_total: dict[int, int]) -> float:
    total = dense_total.get(r.get("seed", 0), r["expert_weights_total"])
    return 1.0 - r["expert_weights_nonzero"] / total


def label(r: dict[str, Any]) -> str:
    """Curve label: the method, with x for STUN rows ("stun+owl x=0.125")."""
    return f"{r['method']} x={r['x']:.3g}" if r.get("expert_method") == "stun" and r.get("unstructured") else r["method"]


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant name, over seeds: means, stds, pooled Wilson interval, per-seed values."""
    dense_total = {r.get("seed", 0): r["expert_weights_total"] for r in rows if r["method"] == "dense"}
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_name[r["name"]].append(r)
    out = []
    for name, rs in by_name.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        r0 = rs[0]
        ppl_m, ppl_s = mean_std(r["ppl"] for r in rs)
        em_m, em_s = mean_std(r["exact_match"] for r in rs)
        k = sum(sum(r.get("correct", [])) for r in rs)
        n = sum(len(r.get("correct", [])) for r in rs)
        lo, hi = wilson_interval(k, n)
        kur_m, kur_s = mean_std(r["kurtosis"] for r in rs if r.get("kurtosis") is not None)
        out.append({
            "name": name, "method": r0["method"], "label": label(r0), "study": r0.get("study", "sweep"),
            "target_sparsity": float(r0.get("target_sparsity", 0.0)), "x": float(r0.get("x", 0.0)),
            "unstructured": r0.get("unstructured"), "expert_method": r0.get("expert_method"),
            "sparsity": float(np.mean([_sparsity(r, dense_total) for r in rs])),
            "experts_kept": sum(r0["experts_per_layer"]), "experts_per_layer": r0["experts_per_layer"],
            "ppl": ppl_m, "ppl_std": ppl_s, "exact_match": em_m, "exact_match_std": em_s,
            "em_lo": lo, "em_hi": hi, "n_problems": n, "kurtosis": kur_m, "kurtosis_std": kur_s,
            "seeds": [r.get("seed", 0) for r in rs], "ppl_by_seed": [r["ppl"] for r in rs],
            "em_by_seed": [r.get("exact_match") for r in rs], "correct_by_seed": [r.get("correct", []) for r in rs],
        })
    out.sort(key=lambda t: (t["target_sparsity"], t["x"], t["method"]))
    return out


def _pm(m: float, s: float, digits: int = 1) -> str:
    if not math.isfinite(m):
        return "—"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _ci(t: dict[str, Any]) -> str:
    return f"[{t['em_lo']:.2f}, {t['em_hi']:.2f}]" if math.isfinite(t["em_lo"]) else "—"


def twin_of(t: dict[str, Any], table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The unstructured-only row with the same method at the same total sparsity."""
    if t.get("expert_method") != "stun" or not t.get("unstructured") or t["study"] != "sweep":
        return None
    return next((u for u in table if u["study"] == "sweep" and u["expert_method"] is None
                 and u["method"] == t["unstructured"] and abs(u["target_sparsity"] - t["target_sparsity"]) < 1e-9), None)


def compare(t: dict[str, Any], twin: dict[str, Any]) -> dict[str, Any]:
    """Paired STUN − twin differences on the seeds both ran."""
    common = sorted(set(t["seeds"]) & set(twin["seeds"]))
    pick = lambda row, key: [row[key][row["seeds"].index(s)] for s in common]  # noqa: E731
    dppl = [a - b for a, b in zip(pick(t, "ppl_by_seed"), pick(twin, "ppl_by_seed"))]
    dem = [a - b for a, b in zip(pick(t, "em_by_seed"), pick(twin, "em_by_seed")) if a is not None and b is not None]
    d, lo, hi = paired_bootstrap(pick(t, "correct_by_seed"), pick(twin, "correct_by_seed"))
    return {"dppl": mean_std(dppl), "dem": (d, lo, hi), "seeds": len(common),
            "ppl_wins": sum(x < 0 for x in dppl), "em_wins": sum(x > 0 for x in dem)}


def sweep_table(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for t in table:
        if t["study"] != "sweep":
            continue
        row = {
            "S": f"{t['target_sparsity']:.2f}", "x": f"{t['x']:.3g}", "method": t["method"],
            "sparsity": f"{t['sparsity']:.3f}", "ppl": _pm(t["ppl"], t["ppl_std"]),
            "exact match": _pm(t["exact_match"], t["exact_match_std"], 3),
            "EM 95% CI": _ci(t),
            "Δppl vs twin": "", "ΔEM vs twin [95% CI]": "", "seeds won (ppl, EM)": "",
        }
        twin = twin_of(t, table)
        if twin is not None:
            c = compare(t, twin)
            row["Δppl vs twin"] = _pm(*c["dppl"])
            d, lo, hi = c["dem"]
            row["ΔEM vs twin [95% CI]"] = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if math.isfinite(d) else "—"
            row["seeds won (ppl, EM)"] = f"{c['ppl_wins']}/{c['seeds']}, {c['em_wins']}/{c['seeds']}"
        rows.append(row)
    return rows


def figure1_table(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per S and unstructured method, the paper's Figure-1 question: does an intermediate x
    (STUN) beat both ends — x = 0 (the method alone) and experts alone to S?"""
    out = []
    sweep = [t for t in table if t["study"] == "sweep"]
    for s in sorted({t["target_sparsity"] for t in sweep if t["method"] != "dense"}):
        at = [t for t in sweep if t["target_sparsity"] == s]
        end = next((t for t in at if t["method"] == "stun_experts"), None)
        for m in sorted({t["unstructured"] for t in at if t.get("unstructured")}):
            zero = next((t for t in at if t["expert_method"] is None and t["method"] == m), None)
            mids = [t for t in at if t["expert_method"] == "stun" and t.get("unstructured") == m]
            if zero is None or not mids:
                continue
            ends = [zero] + ([end] if end else [])
            best_mid_ppl = min(mids, key=lambda t: t["ppl"])
            best_mid_em = max(mids, key=lambda t: t["exact_match"])
            verdict = lambda better: "yes" if better else "no"  # noqa: E731
            out.append({
                "S": f"{s:.2f}", "method": m, "x = 0": f"{zero['ppl']:.1f} / {zero['exact_match']:.3f}",
                "best STUN x": f"{best_mid_ppl['x']:.3g}: {best_mid_ppl['ppl']:.1f} / {best_mid_em['exact_match']:.3f}",
                "experts alone": (f"x={end['x']:.3g}: {end['ppl']:.1f} / {end['exact_match']:.3f}" if end else "—"),
                "STUN beats both ends (ppl)": verdict(best_mid_ppl["ppl"] < min(t["ppl"] for t in ends)),
                "STUN beats both ends (EM)": verdict(best_mid_em["exact_match"] > max(t["exact_match"] for t in ends)),
            })
    return out


def study_table(table: list[dict[str, Any]], studies: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for t in table:
        if t["study"] in studies or t["method"] == "dense":
            rows.append({"method": t["method"], "x": f"{t['x']:.3g}", "experts per layer": str(t["experts_per_layer"]),
                         "sparsity": f"{t['sparsity']:.3f}", "ppl": _pm(t["ppl"], t["ppl_std"]),
                         "exact match": _pm(t["exact_match"], t["exact_match_std"], 3),
                         "EM 95% CI": _ci(t)})
    return rows


def kurtosis_table(table: list[dict[str, Any]], cfg: Any) -> list[dict[str, Any]]:
    """β₂ of the remaining expert weights after each stage, in both orders."""
    s = getattr(cfg, "kurtosis_sparsity", None)
    if s is None:
        return []
    dense = next((t for t in table if t["method"] == "dense"), None)
    experts = next((t for t in table if t["method"] == "stun_experts" and t["study"] == "expert_only"), None)
    first_u = next((t for t in table if t["method"].endswith("@u")), None)
    rev = next((t for t in table if "→stun" in t["method"]), None)
    fwd = None
    if experts is not None and rev is not None:
        fwd = next((t for t in table if t["method"] == f"stun+{rev['unstructured']}" and abs(t["x"] - experts["x"]) < 1e-9
                    and abs(t["target_sparsity"] - s) < 1e-9), None)
    if None in (dense, experts, first_u, rev, fwd):
        return []
    k = lambda t: _pm(t["kurtosis"], t["kurtosis_std"], 2)  # noqa: E731
    q = lambda t: f"{t['ppl']:.1f} / {t['exact_match']:.3f}"  # noqa: E731
    return [
        {"stage": "dense", "experts → unstructured": k(dense), "unstructured → experts": k(dense),
         "ppl / EM (A)": q(dense), "ppl / EM (B)": q(dense)},
        {"stage": "after stage 1", "experts → unstructured": f"{k(experts)} (x={experts['x']:.3g})",
         "unstructured → experts": f"{k(first_u)} (u={first_u['target_sparsity']:.3f})",
         "ppl / EM (A)": q(experts), "ppl / EM (B)": q(first_u)},
        {"stage": f"after stage 2 (S={s:.2f})", "experts → unstructured": k(fwd), "unstructured → experts": k(rev),
         "ppl / EM (A)": q(fwd), "ppl / EM (B)": q(rev)},
    ]


# ---------------------------------------------------------------------------- outputs


CSV_COLUMNS = ["method", "x", "target_sparsity", "sparsity", "ppl", "ppl_std", "exact_match", "exact_match_std",
               "em_lo", "em_hi", "experts_kept"]


def curve_file(t: dict[str, Any]) -> str:
    return f"{t['method']}_x{t['x']:.3f}.csv" if t["x"] > 0 and t.get("unstructured") else f"{t['method']}.csv"


def write_report(rows: list[dict[str, Any]], out: Path, cfg: Any, zoo: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(rows)
    seeds = sorted({r.get("seed", 0) for r in rows})
    dense = next((t for t in table if t["method"] == "dense"), None)
    metrics: dict[str, Any] = {"seeds": seeds, "dense": {}, "sweep": {}, "expert_only": {}, "ablations": {},
                               "kurtosis": {}}
    pick = ("sparsity", "ppl", "ppl_std", "exact_match", "exact_match_std", "em_lo", "em_hi")
    for t in table:
        vals = {k: round(t[k], 5) for k in pick}
        if t["method"] == "dense":
            metrics["dense"] = {**vals, "kurtosis": t["kurtosis"]}
        elif t["study"] == "sweep":
            key = f"{t['method']}@x{t['x']:.3g}"
            twin = twin_of(t, table)
            if twin is not None:
                c = compare(t, twin)
                vals.update(dppl=round(c["dppl"][0], 4), dem=round(c["dem"][0], 4), dem_lo=round(c["dem"][1], 4),
                            dem_hi=round(c["dem"][2], 4), ppl_wins=c["ppl_wins"], em_wins=c["em_wins"])
            metrics["sweep"].setdefault(f"s{round(t['target_sparsity'] * 100)}", {})[key] = vals
        elif t["study"] == "expert_only":
            metrics["expert_only"][t["method"]] = {**vals, "experts_per_layer": t["experts_per_layer"]}
        elif t["study"] == "ablation":
            metrics["ablations"][t["method"]] = {**vals, "experts_per_layer": t["experts_per_layer"]}
        if t["study"] == "kurtosis" or t["method"] in ("dense", "stun_experts"):
            metrics["kurtosis"][t["name"]] = {"kurtosis": t["kurtosis"], "kurtosis_std": t["kurtosis_std"]}
    if zoo:
        metrics["zoo"] = [{k: z[k] for k in ("dense_ppl", "dense_exact_match", "train_seconds", "params",
                                              "expert_params") if k in z} for z in zoo]
    write_json(out / "metrics.json", metrics)
    write_json(out / "headline.json", headline(table, getattr(cfg, "export_sparsity", None)))

    curves = out / "curves"
    curves.mkdir(exist_ok=True)
    sweep = [t for t in table if t["study"] == "sweep" and t["method"] != "dense"]
    for f in sorted({curve_file(t) for t in sweep}):
        pts = ([dense] if dense else []) + sorted((t for t in sweep if curve_file(t) == f), key=lambda t: t["sparsity"])
        with atomic_path(curves / f) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for p in pts:
                w.writerow({**p, "method": pts[-1]["label"]})
    with atomic_path(out / "sweep.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["name", "label", "study", *CSV_COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    plot_curves(table, out / "pruning_curves.png")

    zoo_line = ""
    if dense:
        zoo_line = (f"Dense model: ppl {_pm(dense['ppl'], dense['ppl_std'])}, exact match "
                    f"{_pm(dense['exact_match'], dense['exact_match_std'], 3)} over seeds {seeds} "
                    f"({dense['n_problems'] // max(1, len(seeds))} test problems each).")
    parts = [f"{zoo_line}\n\n" + markdown_table(sweep_table(table))]
    fig1 = figure1_table(table)
    if fig1:
        parts.append("**At a fixed total sparsity S, does an intermediate expert fraction beat both ends?** (the "
                     "paper's Figure 1; ppl / exact match, means over seeds; experts alone removes whole experts, "
                     "so its real sparsity is in the table above)\n\n" + markdown_table(fig1))
    exp_rows = study_table(table, ("expert_only", "ablation"))
    if len(exp_rows) > 1:
        parts.append("**Expert pruning alone** (NAEE, frequency drop, STUN's expert stage and its ablations: "
                     "`[global]` = released one-τ budget, `[coact_*]` = λ2 = 1 with raw / normalised "
                     "co-activation)\n\n" + markdown_table(exp_rows))
    kt = kurtosis_table(table, cfg)
    if kt:
        parts.append("**Kurtosis β₂ of the remaining expert weights after each stage** (A: experts → unstructured, "
                     "STUN's order; B: unstructured → experts; mean ± std over seeds)\n\n" + markdown_table(kt))
    md = "\n\n".join(parts)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(md + "\n")
    return {"table": table, "markdown": md, "metrics": metrics}


def headline(table: list[dict[str, Any]], sparsity: float | None) -> dict[str, Any]:
    """DVC's metrics view: dense, and every sweep curve at the export sparsity (mean ppl, EM)."""
    targets = sorted({t["target_sparsity"] for t in table if t["study"] == "sweep" and t["method"] != "dense"})
    if not targets:
        return {}
    at = min(targets, key=lambda x: abs(x - (sparsity if sparsity is not None else targets[len(targets) // 2])))
    out: dict[str, Any] = {"sparsity": at}
    for t in table:
        if t["method"] == "dense" or (t["study"] == "sweep" and t["target_sparsity"] == at):
            out[t["label"]] = {"ppl": round(t["ppl"], 4), "exact_match": round(t["exact_match"], 4)}
    return out


def _plain_log_ticks(ax: Any, lo: float, hi: float) -> None:
    """A log axis that reads 60 / 100 / 200, not 6×10¹."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    cands = [v * 10**e for e in range(0, 7) for v in (1, 1.5, 2, 3, 4, 5, 6, 8)]
    ticks = [v for v in cands if lo * 0.95 <= v <= hi * 1.05]
    if len(ticks) > 8:
        ticks = ticks[:: math.ceil(len(ticks) / 8)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_curves(table: list[dict[str, Any]], path: Path) -> None:
    from tasks.common.plotting import png_figure

    dense = next((t for t in table if t["method"] == "dense"), None)
    sweep = [t for t in table if t["study"] == "sweep" and t["method"] != "dense"]
    with png_figure(path, ncols=2, size=(12, 4.6), dpi=110,
                    title="STUN vs unstructured-only pruning (mean ± std over seeds)") as (fig, (ax_acc, ax_ppl)):
        for lab in sorted({t["label"] for t in sweep}):
            pts = sorted((t for t in sweep if t["label"] == lab), key=lambda t: t["sparsity"])
            if dense:
                pts = [dense] + pts
            style = "-o" if lab.startswith("stun+") else (":^" if lab.startswith("stun") else "--s")
            xs = [p["sparsity"] for p in pts]
            ax_acc.errorbar(xs, [p["exact_match"] for p in pts], yerr=[p["exact_match_std"] for p in pts], fmt=style,
                            capsize=3, label=lab)
            ax_ppl.errorbar(xs, [p["ppl"] for p in pts], yerr=[p["ppl_std"] for p in pts], fmt=style, capsize=3,
                            label=lab)
        ax_acc.set(xlabel="total expert-weight sparsity S", ylabel="exact match (held-out test problems)",
                   title="accuracy")
        ax_ppl.set(xlabel="total expert-weight sparsity S", ylabel="perplexity (held-out works)", title="perplexity",
                   yscale="log")
        ppls = [t["ppl"] + t["ppl_std"] for t in sweep] + [t["ppl"] - t["ppl_std"] for t in sweep]
        if dense:
            ppls.append(dense["ppl"])
        ppls = [p for p in ppls if p > 0 and math.isfinite(p)]
        if ppls:
            _plain_log_ticks(ax_ppl, min(ppls), max(ppls))
        for ax in (ax_acc, ax_ppl):
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=8)


# ---------------------------------------------------------------------------- model card


def model_card(cfg: Any, best: dict[str, Any], candidates: list[dict[str, Any]]) -> str:
    """README.md of the exported checkpoint: source, method, sparsity, measured metrics."""
    # the row's total counts the *remaining* experts; the dense model had 1/(1 − x) times as many
    dense_total = best["expert_weights_total"] / max(1e-12, 1.0 - float(best.get("x", 0.0)))
    sparsity = 1.0 - best["expert_weights_nonzero"] / dense_total if dense_total else float("nan")
    source = "the embedded zoo MoE (Shakespeare + arithmetic word problems, trained by paperline, seed " \
             f"{best.get('seed', 0)})" if cfg.model == "zoo" else f"`{cfg.model}`"
    lines = [
        f"# STUN-pruned MoE: {best['method']}, x = {best['x']:.3g}, S = {best['target_sparsity']:.2f}", "",
        f"- **Source model**: {source}.",
        f"- **Method**: STUN (Lee et al., ACL 2025): expert pruning (router-row clustering, λ1 = {cfg.lambda1}, "
        f"λ2 = {cfg.lambda2}, {cfg.budget} budget) keeping {best['keep']} experts per layer "
        f"(x = {best['x']:.3g}), then {best['unstructured']} at u = {best['rate']:.3f} "
        f"of the remaining {('expert' if cfg.scope == 'experts' else 'decoder-layer')} weights.",
        f"- **Sparsity**: target S = {best['target_sparsity']:.2f}; measured {sparsity:.4f} of the dense expert "
        f"weights removed; experts per layer {best['experts_per_layer']}.",
        f"- **Chosen by** the validation split (lowest validation perplexity among {len(candidates)} STUN "
        "variants at this S), never the test split.", "",
        "| split | perplexity | exact match | problems |", "|---|---|---|---|",
        f"| validation | {best.get('val_ppl', float('nan')):.3f} | {best.get('val_exact_match') or 0:.4f} | "
        f"{cfg.val_problems} |",
        f"| test | {best['ppl']:.3f} | {best['exact_match']:.4f} | {best['n_problems']} |", "",
        f"Kurtosis β₂ of the remaining expert weights: {best.get('kurtosis', float('nan')):.2f}.", "",
        "Candidates (validation): " + ", ".join(f"{c['name']}: ppl {c.get('val_ppl', float('nan')):.2f}"
                                                for c in sorted(candidates, key=lambda c: c["name"])) + ".", "",
        "Load with `AutoModelForCausalLM.from_pretrained(<this folder>)` (stock transformers; uniform budget).",
    ]
    return "\n".join(lines) + "\n"
