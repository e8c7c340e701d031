"""Which model variants one ``stun`` run prunes and evaluates, and at what rates.

The paper's Figure-1 question is the sweep: for each total sparsity S and each expert fraction x
of ``expert_fractions``, STUN removes round(x·n) experts per layer, then prunes the survivors
unstructured at u = 1 − (1 − S)/(1 − x); x = 0 is unstructured pruning alone, the twin every
STUN row is read against. Around it, at one operating point x₀ = ``expert_fraction``: the
expert-only baselines (NAEE, frequency drop, STUN's expert stage alone), the ablations of STUN's
expert stage (global τ budget, raw / normalised co-activation), and the kurtosis study's
reverse order (unstructured first, then experts). Every variant is run once per seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import StunConfig, unstructured_rate

#: the settings each ablation changes in STUN's expert stage
ABLATIONS: dict[str, dict[str, Any]] = {
    "global": {"budget": "global"},
    "coact_raw": {"lambda2": 1.0, "coactivation": "raw"},
    "coact_normalised": {"lambda2": 1.0, "coactivation": "normalised"},
}


@dataclass(frozen=True)
class Variant:
    name: str  # unique within a seed, filesystem-safe
    method: str  # row label: "stun+owl", "owl", "naee", "stun_experts[global]", "owl→stun", ...
    target_sparsity: float
    x: float = 0.0  # share of experts removed per layer (real, from the kept count)
    expert_method: str | None = None  # "stun" | "naee" | "frequency" | None (dense experts)
    keep: int | None = None  # experts kept per layer (mean for a global budget)
    unstructured: str | None = None  # "wanda" | "owl" | "magnitude" | None
    rate: float = 0.0  # unstructured sparsity of the weights it sees
    order: str = "experts_first"  # or "unstructured_first" (the kurtosis study's reverse order)
    study: str = "sweep"  # "sweep" | "expert_only" | "ablation" | "kurtosis"
    expert_opts: tuple[tuple[str, Any], ...] = ()  # overrides of the expert stage's settings
    validate: bool = False  # an export candidate: also scored on the validation split

    def meta(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "name"}
        d["expert_opts"] = dict(self.expert_opts)
        return d


def keep_of(n_experts: int, x: float) -> int:
    return round(n_experts * (1.0 - x))


def stun_keep(cfg: StunConfig, n_experts: int, top_k: int) -> int:
    """Experts kept per layer at the single-point studies (x₀ = expert_fraction)."""
    keep = cfg.keep_experts if cfg.keep_experts is not None else keep_of(n_experts, cfg.expert_fraction)
    if keep > n_experts:
        raise ValueError(f"keep_experts={keep} is larger than the model's {n_experts} experts per layer")
    if keep < top_k:
        raise ValueError(f"expert_fraction/keep_experts leaves {keep} experts per layer, fewer than top-k={top_k}")
    return keep


def _tag(s: float) -> str:
    return f"s{round(s * 100):02d}"


def sweep_variants(cfg: StunConfig, n_experts: int, top_k: int) -> list[Variant]:
    out: list[Variant] = [Variant("dense", "dense", 0.0)]
    nm_rate = cfg.nm_tuple[0] / cfg.nm_tuple[1] if cfg.nm_tuple else None
    methods = [m for m in cfg.unstructured if not (cfg.nm_tuple and m == "owl")]
    twins = list(dict.fromkeys(methods + [m for m in ("wanda", "owl") if m in cfg.baselines
                                          and not (cfg.nm_tuple and m == "owl")]))
    keeps = sorted({keep_of(n_experts, x) for x in cfg.expert_fractions}, reverse=True)
    for s in sorted(set(cfg.sparsities) | {cfg.export_sparsity}):
        in_sweep = s in cfg.sparsities
        for keep in keeps:
            x = 1.0 - keep / n_experts
            if keep < top_k or s < x - 1e-9:
                continue  # STUN cannot un-prune: the expert stage alone removes more than S
            if keep == n_experts:
                if in_sweep:
                    out += [Variant(f"{m}-{_tag(s)}", m, s, 0.0, None, None, m, nm_rate or s) for m in twins]
                continue
            u = nm_rate if nm_rate is not None else unstructured_rate(s, x)
            out += [Variant(f"stun-{m}-k{keep}-{_tag(s)}", f"stun+{m}", s, x, "stun", keep, m, u,
                            validate=s == cfg.export_sparsity) for m in methods]
        if in_sweep and "stun_experts" in cfg.baselines:
            # the other end of Figure 1: experts alone to S (as close as whole experts and top-k allow)
            k_s = min(n_experts, max(top_k, keep_of(n_experts, s)))
            out.append(Variant(f"stun_experts-{_tag(s)}", "stun_experts", s, 1.0 - k_s / n_experts, "stun", k_s))
    keep0 = stun_keep(cfg, n_experts, top_k)
    x0 = 1.0 - keep0 / n_experts
    for m, label in (("stun", "stun_experts"), ("naee", "naee"), ("frequency", "frequency")):
        if label in cfg.baselines or (label == "stun_experts" and (cfg.ablations or cfg.kurtosis_sparsity is not None)):
            out.append(Variant(f"{label}-k{keep0}", label, x0, x0, m, keep0, study="expert_only"))
    for a in cfg.ablations:
        out.append(Variant(f"stun_experts-{a}-k{keep0}", f"stun_experts[{a}]", x0, x0, "stun", keep0,
                           study="ablation", expert_opts=tuple(sorted(ABLATIONS[a].items()))))
    if cfg.kurtosis_sparsity is not None and methods:
        s, m = cfg.kurtosis_sparsity, methods[0]
        u = nm_rate if nm_rate is not None else unstructured_rate(s, x0)
        names = {v.name for v in out}
        forward = Variant(f"stun-{m}-k{keep0}-{_tag(s)}", f"stun+{m}", s, x0, "stun", keep0, m, u, study="kurtosis")
        if forward.name not in names:
            out.append(forward)
        out.append(Variant(f"{m}-u{round(u * 100):02d}", f"{m}@u", u, 0.0, None, None, m, u, study="kurtosis"))
        out.append(Variant(f"{m}-then-stun-k{keep0}-{_tag(s)}", f"{m}→stun", s, x0, "stun", keep0, m, u,
                           order="unstructured_first", study="kurtosis"))
    return out


def model_variants(cfg: StunConfig, model_dir: Path | str) -> list[Variant]:
    """The sweep for the dense checkpoint at ``model_dir`` (its expert count and top-k)."""
    from .adapters import adapter_for, read_config

    config = read_config(model_dir)
    ad = adapter_for(config)
    return sweep_variants(cfg, ad.num_experts(config), ad.top_k(config))


def pick_export(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The export: among the validation candidates (STUN at export_sparsity), the lowest
    validation perplexity, ties broken by validation exact match. Test numbers play no part."""
    cands = [r for r in rows if r.get("validate") and r.get("val_ppl") is not None]
    if not cands:
        raise ValueError("export: no STUN variant was scored on the validation split")
    return min(cands, key=lambda r: (r["val_ppl"], -(r.get("val_exact_match") or 0.0), r["name"]))
