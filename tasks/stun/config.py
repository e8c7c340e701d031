"""The ``stun`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``stun``.

Total sparsity S is the fraction of MoE expert weights removed. STUN removes a fraction x of
the experts first (``expert_fraction``), then prunes the survivors unstructured at
u = 1 − (1 − S)/(1 − x), so that (1 − x)(1 − u) = 1 − S (METHODS.md §1.1).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import FlowConfig

from .zoo import ZooConfig

Baseline = Literal["wanda", "owl", "naee", "frequency", "stun_experts"]


class StunConfig(FlowConfig):
    model: str = "zoo"
    """'zoo' trains (once, then cached in DVC) the embedded small MoE; otherwise a path to a
    Hugging Face MoE checkpoint folder (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE)."""

    zoo: ZooConfig = Field(default_factory=ZooConfig)
    """Architecture and training recipe of the embedded model (used when model='zoo')."""

    sparsities: list[float] = Field(default_factory=lambda: [0.4, 0.5, 0.65], min_length=1)
    """Total sparsity levels of the sweep, each in [0, 1): fraction of expert weights removed."""

    expert_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    """x: share of experts STUN removes before unstructured pruning (0.25 = 2 of 8 per layer,
    the Mixtral expert-only operating point in the paper)."""

    keep_experts: int | None = Field(None, ge=1)
    """Experts kept per layer by STUN's structured stage; overrides expert_fraction when set."""

    budget: Literal["uniform", "global"] = "uniform"
    """'uniform': every layer keeps the same number of experts (loads in stock transformers);
    'global': one τ for all layers, total expert count hit exactly, per-layer counts vary."""

    lambda1: float = Field(1.0, ge=0.0)
    """λ1: weight of the router-row distance ‖W_i − W_j‖ in the expert similarity."""

    lambda2: float = Field(1.0, ge=0.0)
    """λ2: weight of the co-activation count a_ij (needs one calibration sweep; 0 = none)."""

    reconstruction: Literal["none", "small_clusters", "max_clusters"] = "none"
    """How a cluster is replaced: 'none' = member closest to the centroid (released code);
    'small_clusters' = the paper's rule (mean-merge clusters under kappa members);
    'max_clusters' = the released rule (mean-merge only when a layer has ≤ kappa clusters)."""

    kappa: int = Field(3, ge=1)
    """κ of the selective-reconstruction rule."""

    unstructured: list[Literal["wanda", "owl", "magnitude"]] = Field(default_factory=lambda: ["wanda", "owl"], min_length=1)
    """Second-stage methods STUN is run with (each one a curve)."""

    baselines: list[Baseline] = Field(default_factory=lambda: ["wanda", "owl", "naee", "frequency", "stun_experts"])
    """Baselines evaluated in the same run at the same sparsities."""

    nm: str | None = None
    """Optional N:M semi-structured pattern for the unstructured stage, e.g. '2:4': it fixes the
    unstructured rate at N/M (the sweep's total sparsity is then only the curves' label) and
    rules out OWL."""

    owl_M: float = Field(5.0, gt=0.0)
    """OWL outlier threshold M (a score is an outlier above M × layer mean)."""

    owl_lambda: float = Field(0.08, ge=0.0, lt=0.5)
    """OWL λ: layer sparsities stay within target ± λ."""

    naee_max_combinations: int = Field(200_000, ge=1)
    """NAEE refuses layers whose C(n, r) subsets exceed this (its cost is exponential)."""

    calib_samples: int = Field(64, ge=1)
    """Calibration sequences for profiling and Wanda/OWL statistics."""

    calib_seq_len: int = Field(128, ge=8)
    """Tokens per calibration sequence."""

    profile_workers: int = Field(2, ge=0)
    """Ray actors sharing the profiling sweep; 0 = one per GPU of the cluster."""

    eval_ppl_tokens: int = Field(16384, ge=256)
    """Held-out tokens scored for perplexity per evaluated model."""

    eval_problems: int = Field(150, ge=1)
    """Held-out arithmetic problems for generative exact match per evaluated model."""

    export_sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    """Sparsity of the exported checkpoint (STUN + export_method, uniform budget)."""

    export_method: Literal["wanda", "owl", "magnitude"] = "owl"
    """Unstructured method of the exported checkpoint."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """'auto' (GPU when Ray has one, bf16 there), 'cpu' or 'cuda'."""

    cpus_per_step: int = Field(0, ge=0)
    """CPU cores a compute step asks Ray for; 0 = all cores of the local machine."""

    seed: int = 0
    """Seed of calibration sampling and everything random downstream."""

    @field_validator("sparsities")
    @classmethod
    def _sparsities_in_range(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"every sparsity must be in [0, 1), got {s}")
        return sorted(set(v))

    @field_validator("nm")
    @classmethod
    def _nm_pattern(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            n, m = (int(x) for x in v.split(":"))
        except ValueError:
            raise ValueError(f"must look like 'N:M' (e.g. '2:4'), got {v!r}") from None
        if not 0 < n < m:
            raise ValueError(f"needs 0 < N < M, got {v!r}")
        return v

    @model_validator(mode="after")
    def _lambdas(self) -> "StunConfig":
        if self.lambda1 == 0 and self.lambda2 == 0:
            raise ValueError("lambda1: lambda1 and lambda2 are both 0, so the expert similarity would be empty")
        if self.nm is not None and self.export_method == "owl":
            raise ValueError(
                "nm: an N:M pattern fixes every layer's sparsity at N/M, so OWL's per-layer ratios cannot "
                "apply; set export_method=wanda (OWL curves are skipped under nm)"
            )
        if self.export_sparsity < self.expert_fraction and self.keep_experts is None:
            raise ValueError(
                f"export_sparsity: {self.export_sparsity} is below expert_fraction={self.expert_fraction}: "
                "STUN cannot remove fewer weights than its expert stage already does"
            )
        return self

    @field_validator("model")
    @classmethod
    def _model_is_a_moe_checkpoint(cls, v: str) -> str:
        if v == "zoo":
            return v
        from .adapters import MoEModelError, read_config

        try:
            read_config(v)
        except (FileNotFoundError, MoEModelError) as e:
            raise ValueError(str(e).removeprefix("model: ")) from None
        return v

    @model_validator(mode="after")
    def _budget_fits_the_model(self) -> "StunConfig":
        n, k = self.experts_and_top_k()
        keep = self.keep_experts if self.keep_experts is not None else round(n * (1.0 - self.expert_fraction))
        if self.keep_experts is not None and self.keep_experts > n:
            raise ValueError(f"keep_experts={self.keep_experts} is larger than the model's {n} experts per layer")
        if keep < k:
            raise ValueError(
                f"expert_fraction: {self.expert_fraction} (keep_experts={self.keep_experts}) leaves {keep} experts "
                f"per layer, fewer than the model's top-k={k}" + (" (zoo.top_k)" if self.model == "zoo" else "")
            )
        return self

    def experts_and_top_k(self) -> tuple[int, int]:
        """(experts per layer, top-k) of the model this config prunes."""
        if self.model == "zoo":
            return self.zoo.experts, self.zoo.top_k
        from .adapters import adapter_for, read_config

        config = read_config(self.model)
        ad = adapter_for(config)
        return ad.num_experts(config), ad.top_k(config)

    @property
    def nm_tuple(self) -> tuple[int, int] | None:
        if self.nm is None:
            return None
        n, m = (int(x) for x in self.nm.split(":"))
        return n, m


def unstructured_rate(total: float, expert_sparsity: float) -> float:
    """u such that (1 − x)(1 − u) = 1 − S; raises when S < x (STUN cannot un-prune)."""
    if total < expert_sparsity - 1e-9:
        raise ValueError(
            f"sparsities: total sparsity {total} is below the expert stage's {expert_sparsity:.4f}; "
            "lower expert_fraction or raise the sparsity"
        )
    return max(0.0, 1.0 - (1.0 - total) / (1.0 - expert_sparsity))
