"""Which model variants one ``stun`` run prunes and evaluates, and at what rates.

For each total sparsity S of the sweep: STUN = expert stage keeping k experts per layer, then
each unstructured method at u = 1 − (1 − S)/(1 − x); unstructured-only baselines at S;
expert-only baselines (NAEE, frequency drop, STUN's own expert stage alone) at the expert count
closest to S, their real sparsity being measured afterwards.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .config import StunConfig, unstructured_rate


@dataclass(frozen=True)
class Variant:
    name: str  # unique, filesystem-safe
    method: str  # curve label: "stun+owl", "wanda", "naee", ...
    target_sparsity: float
    expert_method: str | None = None  # "stun" | "naee" | "frequency" | None (dense experts)
    keep: int | None = None  # experts kept per layer (mean for a global budget)
    unstructured: str | None = None  # "wanda" | "owl" | "magnitude" | None
    rate: float = 0.0  # unstructured sparsity of the remaining weights

    def meta(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "name"}


def stun_keep(cfg: StunConfig, n_experts: int, top_k: int) -> int:
    keep = cfg.keep_experts if cfg.keep_experts is not None else round(n_experts * (1.0 - cfg.expert_fraction))
    if keep > n_experts:
        raise ValueError(f"keep_experts={keep} is larger than the model's {n_experts} experts per layer")
    if keep < top_k:
        raise ValueError(f"expert_fraction/keep_experts leaves {keep} experts per layer, fewer than top-k={top_k}")
    return keep


def sweep_variants(cfg: StunConfig, n_experts: int, top_k: int) -> list[Variant]:
    keep = stun_keep(cfg, n_experts, top_k)
    x = 1.0 - keep / n_experts
    out: list[Variant] = [Variant("dense", "dense", 0.0)]
    levels = sorted(set(cfg.sparsities) | {cfg.export_sparsity})
    for s in levels:
        tag = f"s{round(s * 100):02d}"
        u = unstructured_rate(s, x)
        if cfg.nm_tuple:  # an N:M pattern fixes the unstructured rate at N/M; OWL's per-layer rates cannot apply
            u = cfg.nm_tuple[0] / cfg.nm_tuple[1]
        for m in cfg.unstructured:
            if cfg.nm_tuple and m == "owl":
                continue
            out.append(Variant(f"stun-{m}-{tag}", f"stun+{m}", s, "stun", keep, m, u))
        if s not in cfg.sparsities:
            continue  # the export level only needs STUN itself
        for m in ("wanda", "owl"):
            if m in cfg.baselines and not (cfg.nm_tuple and m == "owl"):
                rate = cfg.nm_tuple[0] / cfg.nm_tuple[1] if cfg.nm_tuple else s
                out.append(Variant(f"{m}-{tag}", m, s, None, None, m, rate))
        k_s = min(n_experts, max(top_k, round(n_experts * (1.0 - s))))
        for m, label in (("naee", "naee"), ("frequency", "frequency"), ("stun", "stun_experts")):
            if label in cfg.baselines:
                out.append(Variant(f"{label}-{tag}", label, s, m, k_s))
    return out


def export_variant(cfg: StunConfig, variants: list[Variant]) -> Variant:
    name = f"stun-{cfg.export_method}-s{round(cfg.export_sparsity * 100):02d}"
    for v in variants:
        if v.name == name:
            return v
    raise ValueError(f"export_method={cfg.export_method!r} is not among unstructured={cfg.unstructured}")


def model_variants(cfg: StunConfig, model_dir: Path | str) -> list[Variant]:
    """The sweep for the dense checkpoint at ``model_dir`` (its expert count and top-k)."""
    from .adapters import adapter_for, read_config

    config = read_config(model_dir)
    ad = adapter_for(config)
    return sweep_variants(cfg, ad.num_experts(config), ad.top_k(config))
