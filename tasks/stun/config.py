"""The ``stun`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``stun``.

Total sparsity S is the fraction of MoE expert weights removed. STUN removes a fraction x of
the experts first (``expert_fraction``), then prunes the survivors unstructured at
u = 1 − (1 − S)/(1 − x), so that (1 − x)(1 − u) = 1 − S (METHODS.md §1.1).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig


class ZooConfig(ConfigSection):
    """How the zoo's MoE (``model=zoo``, trained by :mod:`tasks.stun.zoo`) is shaped and trained.
    The defaults were measured on two CPU cores: about five minutes of training, held-out
    perplexity ~57 (add-one unigram baseline ~470) and held-out exact match ~0.59."""

    arch: Literal["mixtral", "qwen2_moe"] = "mixtral"
    """Mixtral is the paper's main subject (8 experts, top-2, no shared expert); qwen2_moe adds an
    always-on shared expert, the other MoE family the paper prunes."""
    layers: int = Field(default=4, ge=1, le=32)
    """Four MoE layers give expert pruning several layers to choose between while one training
    step stays under half a second on two cores."""
    experts: int = Field(default=8, ge=2, le=64)
    """Mixtral's eight experts per layer: enough that pruning 25-50% of them is a real choice."""
    top_k: int = Field(default=2, ge=1, le=8)
    """Mixtral routes each token to two experts; STUN's expert pruning is defined for top-k routing."""
    hidden: int = Field(default=128, ge=16, le=4096)
    """Model width: at 128 a step of 4096 tokens takes about 0.45 s on two cores, so the
    default steps fit the budget."""
    intermediate: int = Field(default=256, ge=16, le=16384)
    """Width of each expert's SwiGLU; twice the hidden size keeps expert weights the bulk of the
    parameters, as in real MoEs, which is what makes pruning them matter."""
    shared_intermediate: int = Field(default=256, ge=16, le=16384)
    """Width of qwen2_moe's shared expert (ignored for mixtral); one expert's worth of width."""
    heads: int = Field(default=4, ge=1, le=64)
    """Four heads of 32 dims each at hidden 128."""
    kv_heads: int = Field(default=2, ge=1, le=64)
    """Grouped-query attention as in Mixtral (fewer key/value heads than query heads)."""
    vocab_size: int = Field(default=2048, ge=258, le=65536)
    """Byte-level BPE size: small, so the embedding does not dominate a 128-wide model, yet large
    enough that Shakespeare averages about 2.7 characters per token."""
    seq_len: int = Field(default=256, ge=16, le=4096)
    """Training window and perplexity window; 256 tokens hold a speech or five problems."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    """Sequences per step: 4096 tokens per step at seq_len 256."""
    steps: int = Field(default=600, ge=1, le=1_000_000)
    """Optimizer steps: 600 steps (2.5M tokens, about 0.7 passes over the training plays) take
    about 4.5-5 minutes on two idle CPU cores, inside the flow's six-minute budget for the zoo."""
    lr: float = Field(default=3e-3, gt=0.0, le=1.0)
    """Peak AdamW learning rate; a model this small trained for a few hundred steps needs a high
    one, and 3e-3 trained stably (no loss spikes) with the router aux loss on."""
    warmup_steps: int = Field(default=50, ge=0, le=100_000)
    """Linear warmup before the cosine decay, so the router does not lock in on early noise."""
    router_aux_loss_coef: float = Field(default=0.01, ge=0.0, le=1.0)
    """Switch Transformer's load-balancing weight (Mixtral used 0.001): with it the balance loss
    stays at its balanced value (about top_k) throughout training, so every expert is used and
    pruning any of them costs something."""
    problem_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of training sequences that are arithmetic problems. At 0.625 exact match did not
    improve while held-out perplexity rose from ~52 to ~65; 0.5 serves both metrics."""
    n_train_problems: int = Field(default=20_000, ge=1, le=1_000_000)
    """Training problems written (keys repeat with other names and items); about as many as the
    problem half of training reads, so few are seen twice."""
    n_heldout_problems: int = Field(default=200, ge=1, le=300)
    """Held-out problems, each a distinct (template, numbers) key; evaluation scores the first
    160. The held-out quarter of the key space holds only about 320 keys, hence the cap."""
    heldout_works: int = Field(default=2, ge=1, le=20)
    """Whole plays held out for perplexity; two plays give over 100k held-out tokens."""
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seeds the corpus split (held-out works and problems), the same for every training seed so
    all seeds are judged on the same data; the flow's ``seeds`` seed initialisation and batch
    order (one zoo model per seed)."""
    threads: int = Field(default=2, ge=1, le=256)
    """torch CPU threads training uses. Part of the model's identity, not the machine's: a sum
    split over another number of threads rounds differently and hundreds of steps amplify that
    into another model (1 and 2 threads give different weights), so it is fixed here, never
    taken from the machine's core count."""

    @model_validator(mode="after")
    def _shapes_fit(self) -> "ZooConfig":
        # Checked here, not only when the model is built, so a bad shape fails before any work.
        if self.hidden % self.heads:
            raise ValueError(f"heads: hidden={self.hidden} is not divisible by heads={self.heads}")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads: heads={self.heads} is not divisible by kv_heads={self.kv_heads}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k: {self.top_k} exceeds experts={self.experts}")
        return self


Baseline = Literal["wanda", "owl", "naee", "frequency", "stun_experts"]


#: calibration tokens (samples x sequence length) the streaming pruner holds per layer: 2^20 tokens
#: are four times the paper's 128 x 2048, about 8 GiB of bf16 activations at Mixtral's width
MAX_CALIB_TOKENS = 2**20


class StunConfig(FlowConfig):
    model: str = Field("zoo", min_length=1, max_length=4096)
    """'zoo' trains (once, then cached in DVC) the embedded small MoE; otherwise a path to a
    Hugging Face MoE checkpoint folder (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE)."""

    zoo: ZooConfig = Field(default_factory=ZooConfig)
    """Architecture and training recipe of the embedded model (used when model='zoo')."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, max_length=16)
    """Seeds of the repeated experiment: each one trains its own zoo model (initialisation and
    batch order; model=zoo) and draws its own calibration set; the report gives mean ± std over
    them. Two fit `make run`'s 20 minutes on two cores; the ``paper`` preset runs three."""

    sparsities: list[float] = Field(default_factory=lambda: [0.4, 0.5, 0.65, 0.75, 0.8], min_length=1,
                                    max_length=32)
    """Total sparsity levels of the sweep, each in [0, 1): fraction of expert weights removed.
    The paper's claim lives at 40-80 % (its Arctic/Mixtral tables: 40 % and 65 %)."""

    expert_fractions: list[float] = Field(default_factory=lambda: [0.0, 0.125, 0.25], min_length=1, max_length=16)
    """x values of the sweep (the paper's Figure 1 axis): at each S, STUN removes a fraction x of
    the experts first, then prunes u = 1 − (1 − S)/(1 − x) of the rest; x = 0 is unstructured
    pruning alone (the Wanda/OWL baseline rows)."""

    expert_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    """x of the single-point studies: the expert-only baselines (NAEE, frequency drop, STUN's
    expert stage alone), the budget / co-activation ablations, and the kurtosis study
    (0.25 = 2 of 8 experts per layer, the paper's Mixtral expert-only operating point)."""

    keep_experts: int | None = Field(None, ge=1, le=4096)
    """Experts kept per layer at the single-point studies; overrides expert_fraction when set."""

    budget: Literal["uniform", "global"] = "uniform"
    """'uniform': every layer keeps the same number of experts (loads in stock transformers);
    'global': one τ for all layers, total expert count hit exactly, per-layer counts vary."""

    lambda1: float = Field(1.0, ge=0.0, le=1e6)
    """λ1: weight of the router-row distance ‖W_i − W_j‖ in the expert similarity."""

    lambda2: float = Field(0.0, ge=0.0, le=1e6)
    """λ2: weight of the co-activation term a_ij (needs one calibration sweep; 0 = none). The
    paper's notes give (λ1, λ2) = (1, 0) for Arctic: router distance alone, no forward pass."""

    coactivation: Literal["raw", "normalised"] = "raw"
    """a_ij when λ2 > 0: 'raw' = counts of tokens routing to both i and j (the released
    ``assemble_logit_patterns.py``; grows with how busy the experts are), 'normalised' = counts
    divided by √(usage_i·usage_j), which measures co-selection rather than traffic."""

    ablations: list[Literal["global", "coact_raw", "coact_normalised"]] = Field(
        default_factory=lambda: ["global", "coact_raw", "coact_normalised"], max_length=3)
    """STUN's expert stage alone at expert_fraction, re-run with one setting changed and
    evaluated beside the default: 'global' = the released one-τ budget, 'coact_raw' /
    'coact_normalised' = λ2 = 1 with raw / normalised co-activation."""

    kurtosis_sparsity: float | None = Field(0.65, ge=0.0, lt=1.0)
    """S of the kurtosis study (both orders: experts→unstructured and unstructured→experts, at
    expert_fraction); null = no study."""

    scope: Literal["experts", "layer"] = "experts"
    """What the unstructured stage prunes: 'experts' = routed (and shared) expert weights only;
    'layer' = every linear layer of a decoder layer (attention, router, experts), the scope of
    the released Wanda/OWL, so numbers compare in kind with the paper's."""

    reconstruction: Literal["none", "small_clusters", "max_clusters"] = "none"
    """How a cluster is replaced: 'none' = member closest to the centroid (released code);
    'small_clusters' = the paper's rule (mean-merge clusters under kappa members);
    'max_clusters' = the released rule (mean-merge only when a layer has ≤ kappa clusters)."""

    kappa: int = Field(3, ge=1, le=4096)
    """κ of the selective-reconstruction rule."""

    unstructured: list[Literal["wanda", "owl", "magnitude"]] = Field(default_factory=lambda: ["owl"], min_length=1, max_length=3)
    """Second-stage methods STUN is run with (each one a curve)."""

    baselines: list[Baseline] = Field(default_factory=lambda: ["naee", "frequency", "stun_experts"],
                                      max_length=5)
    """Baselines of the same run: 'wanda' / 'owl' add unstructured-only rows at every S (besides
    the x = 0 twins of ``unstructured``; off by default to keep `make run` under 20 minutes);
    'naee', 'frequency', 'stun_experts' prune experts alone at expert_fraction ('stun_experts'
    also to every S: the other end of Figure 1)."""

    nm: str | None = None
    """Optional N:M semi-structured pattern for the unstructured stage, e.g. '2:4': it fixes the
    unstructured rate at N/M (the sweep's total sparsity is then only the curves' label) and
    rules out OWL."""

    owl_M: float = Field(5.0, gt=0.0, le=1e4)
    """OWL outlier threshold M (a score is an outlier above M × layer mean)."""

    owl_lambda: float = Field(0.08, ge=0.0, lt=0.5)
    """OWL λ: layer sparsities stay within target ± λ."""

    naee_max_combinations: int = Field(200_000, ge=1, le=100_000_000)
    """NAEE refuses layers whose C(n, r) subsets exceed this (its cost is exponential)."""

    calib_data: str | None = Field(None, min_length=1, max_length=4096)
    """Calibration text by path (``.jsonl`` with a "text" field, or plain text with documents
    split by blank lines), tokenised by the model's own tokenizer; null = the zoo corpus's
    training mix. Use the model's own domain: the paper calibrates on C4."""

    eval_data: str | None = Field(None, min_length=1, max_length=4096)
    """Held-out text for perplexity by path (same formats); null = the zoo corpus's held-out plays.
    Without ``eval_problems_data`` exact match is then not scored."""

    eval_problems_data: str | None = Field(None, min_length=1, max_length=4096)
    """Problem set for exact match by path: JSONL ``{"question", "answer": int[, "solution"]}``,
    prompted as ``Question: …\nAnswer:`` and read after ``####``."""

    calib_samples: int = Field(64, ge=1, le=65_536)
    """Calibration sequences for profiling and Wanda/OWL statistics (the profiling actors of
    ``resources.workers`` share them). The paper's defaults: 128 × 2048 tokens of C4 for
    Wanda/OWL, 1000 × 2048 for co-activation profiling; 64 × 128 fits the zoo on two cores."""

    calib_seq_len: int = Field(128, ge=8, le=32_768)
    """Tokens per calibration sequence; samples x length is at most 2^20 tokens."""

    eval_ppl_tokens: int = Field(16384, ge=256, le=2**24)
    """Held-out tokens scored for perplexity per evaluated model."""

    eval_problems: int | None = Field(None, ge=1, le=100_000)
    """Held-out test problems scored for generative exact match; null = all of them (the held-out
    problems minus the validation ones)."""

    val_problems: int = Field(50, ge=1, le=100_000)
    """Held-out problems kept apart as the validation split (the last ones), used only to choose
    the exported checkpoint; the test rows never see them."""

    val_ppl_tokens: int = Field(8192, ge=256, le=2**24)
    """Validation tokens (the held-out tokens after the test ones) for choosing the export."""

    export_sparsity: float = Field(0.65, ge=0.0, lt=1.0)
    """Sparsity of the exported checkpoint: the best STUN variant there (any x > 0 and
    unstructured method) by validation perplexity, from the first seed."""

    @field_validator("sparsities")
    @classmethod
    def _sparsities_in_range(cls, v: list[float]) -> list[float]:
        for s in v:
            if not 0.0 <= s < 1.0:
                raise ValueError(f"every sparsity must be in [0, 1), got {s}")
        return sorted(set(v))

    @field_validator("expert_fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 0.0 <= x < 1.0:
                raise ValueError(f"every expert fraction must be in [0, 1), got {x}")
        return sorted(set(v))

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s < 2**31:
                raise ValueError(f"every seed must be in [0, 2^31), got {s}")
        return list(dict.fromkeys(v))

    @field_validator("unstructured", "baselines", "ablations")
    @classmethod
    def _each_once(cls, v: list[str]) -> list[str]:
        # A method listed twice would make two variants of one name write the same folders.
        return list(dict.fromkeys(v))

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
        if self.nm is not None and self.unstructured == ["owl"]:
            raise ValueError(
                "nm: an N:M pattern fixes every layer's sparsity at N/M, so OWL's per-layer ratios cannot "
                "apply; add wanda or magnitude to unstructured (OWL curves are skipped under nm)"
            )
        if self.calib_samples * self.calib_seq_len > MAX_CALIB_TOKENS:
            raise ValueError(
                f"calib_samples: {self.calib_samples} x calib_seq_len={self.calib_seq_len} calibration tokens exceed "
                f"{MAX_CALIB_TOKENS:,} (the streaming pruner holds every calibration token's activations per layer)"
            )
        if not any(x > 0 and self.export_sparsity >= x - 1e-9 for x in self.expert_fractions):
            raise ValueError(
                f"export_sparsity: {self.export_sparsity} has no STUN variant: it needs an expert fraction x > 0 "
                f"at or below it in expert_fractions={self.expert_fractions}"
            )
        if self.kurtosis_sparsity is not None and self.kurtosis_sparsity < self.expert_fraction:
            raise ValueError(f"kurtosis_sparsity: {self.kurtosis_sparsity} is below expert_fraction="
                             f"{self.expert_fraction} (the expert stage alone already removes more)")
        return self

    @field_validator("calib_data", "eval_data", "eval_problems_data")
    @classmethod
    def _data_file_exists(cls, v: str | None) -> str | None:
        from pathlib import Path

        if v is not None and not Path(v).is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @field_validator("model")
    @classmethod
    def _model_is_a_moe_checkpoint(cls, v: str) -> str:
        if v == "zoo":
            return v
        from .adapters import MoEModelError, check_model_folder

        # Headers and JSON only (milliseconds, writes nothing): a truncated weight file, a broken
        # config.json or a missing tokenizer is refused here, naming stun.model, not after the
        # profiling workers died loading it.
        try:
            check_model_folder(v)
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
        for x in self.expert_fractions:
            if round(n * (1.0 - x)) < k:
                raise ValueError(f"expert_fractions: x={x} leaves {round(n * (1.0 - x))} experts per layer, "
                                 f"fewer than the model's top-k={k}")
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
