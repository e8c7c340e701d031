"""The ``s3nas`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``s3nas``.

S3NAS (METHODS.md §8) has three knobs that decide everything downstream: the NPU the latency
is measured on (``npu``), the search space (``supernet``), and the latency target. The search
runs at ``search_target_ratio × target_latency_us`` (the paper searches at a tighter target than
the final one), then compound scaling grows the found net back up to ``target_latency_us``.

Validation is pure: types, bounds and cross-field arithmetic only — no simulator, no file, no
allocation that grows with a value. Every size has an upper bound (a size that allocates
without one let ``supernet.stem_channels=1e8`` or ``npu.dram_bw_words=1e12`` run away), every
integer must be given as an integer (``16.0`` is refused rather than silently truncated) and
every float is finite. What needs the simulator is checked at flow start, by the first step that
simulates: a target below the smallest network of the space
(:func:`tasks.s3nas.lut.check_target_reachable`); a target above what compound scaling can
reach is refused by the scale step (:class:`tasks.s3nas.scaling.TargetOutOfReach`).
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig, Resources

Dataflow = Literal["ws", "os", "is"]

#: an integer given as an integer: a float such as 1e8 or 16.0 is refused, not coerced
Int = Annotated[int, Field(strict=True)]

#: joint choices one searchable block may have: the latency table simulates every one of them per
#: slot, and the supernet holds a latency vector of that length per block
MAX_BLOCK_CHOICES = 2048
#: widest expanded (hidden) layer, channels: bounds the supernet's activation memory
MAX_HIDDEN_CHANNELS = 8192
#: Fashion-MNIST's training split, which n_train and n_val are drawn from without overlap
FASHION_TRAIN_IMAGES = 60_000


class NPUConfig(ConfigSection):
    """A systolic-array NPU as SCALE-Sim models it."""

    array_rows: Int = Field(16, ge=2, le=256)
    """Processing-element rows of the systolic array."""

    array_cols: Int = Field(16, ge=2, le=256)
    """Processing-element columns of the systolic array."""

    dataflow: Dataflow = "ws"
    """'ws' weight-, 'os' output- or 'is' input-stationary (SCALE-Sim's three dataflows)."""

    # SCALE-Sim keeps fetch matrices of about (SRAM words / bandwidth) × bandwidth entries per
    # buffer: these bounds keep one simulation within a few hundred MB.
    ifmap_sram_kb: Int = Field(64, ge=1, le=8192)
    """On-chip input-feature-map SRAM (double-buffered), kB of 1-byte words."""

    filter_sram_kb: Int = Field(64, ge=1, le=8192)
    """On-chip weight SRAM, kB."""

    ofmap_sram_kb: Int = Field(32, ge=1, le=8192)
    """On-chip output SRAM, kB."""

    dram_bw_words: Int = Field(8, ge=1, le=1024)
    """DRAM bandwidth, words per cycle, for inputs, weights and outputs (memory stalls follow from it)."""

    clock_mhz: float = Field(1000.0, gt=0, le=10_000)
    """Clock that turns simulated cycles into microseconds."""

    def key(self) -> str:
        """Digest of everything that changes a simulated cycle count (not the clock)."""
        d = self.model_dump()
        d.pop("clock_mhz")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class SupernetConfig(ConfigSection):
    """The searchable macro-architecture (METHODS.md §8.1), shrunk for 32×32 Fashion-MNIST."""

    resolution: Int = Field(32, ge=16, le=128)
    """Input side in pixels (28×28 Fashion-MNIST resized to it); a multiple of 4."""

    stem_channels: Int = Field(16, ge=4, le=512)
    """Channels of the 3×3 stride-2 stem convolution."""

    stages: list[tuple[Int, Int, Int]] = Field(default_factory=lambda: [(1, 16, 1), (2, 24, 2), (3, 40, 2), (2, 64, 1)],
                                               min_length=1, max_length=8)
    """(blocks ≤ 8, output channels ≤ 512, stride of the first block) per stage; different block
    counts per stage, as in the paper's 3-4-7-4-11 supernets."""

    branch_kernels: list[Int] = Field(default_factory=lambda: [3, 5], min_length=1, max_length=4)
    """Largest depthwise kernel of each parallel MixConv branch (odd, 3-9); a branch chooses
    k ∈ {3, 5, …, max}. The last branch is the primary one: it can be zeroed only in blocks with a residual."""

    branch_expansions: list[Int] = Field(default_factory=lambda: [2, 4], min_length=1, max_length=4)
    """Largest expansion of each branch (≤ 16); a branch chooses e ∈ {0, step, …, max} (0 removes it)."""

    expansion_step: Int = Field(2, ge=1, le=16)
    """Granularity of the expansion choice: one nested channel group per step."""

    head_channels: Int = Field(128, ge=8, le=4096)
    """Channels of the 1×1 feature-mix convolution before pooling."""

    num_classes: Int = Field(10, ge=10, le=1000)
    """Classifier outputs (at least Fashion-MNIST's 10 classes)."""

    @field_validator("branch_kernels")
    @classmethod
    def _odd_kernels(cls, v: list[int]) -> list[int]:
        for k in v:
            if k < 3 or k > 9 or k % 2 == 0:
                raise ValueError(f"every branch kernel must be odd, 3-9, got {k}")
        return v

    @field_validator("branch_expansions")
    @classmethod
    def _expansions(cls, v: list[int]) -> list[int]:
        for e in v:
            if not 1 <= e <= 16:
                raise ValueError(f"every branch expansion must be 1-16, got {e}")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        for n, c, s in v:
            if not 1 <= n <= 8 or not 4 <= c <= 512 or s not in (1, 2):
                raise ValueError(f"each stage is (blocks 1-8, channels 4-512, stride 1|2), got {(n, c, s)}")
        return v

    @field_validator("resolution")
    @classmethod
    def _res(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"must be a multiple of 4, got {v}")
        return v

    @model_validator(mode="after")
    def _branches(self) -> "SupernetConfig":
        if len(self.branch_kernels) != len(self.branch_expansions):
            raise ValueError(f"branch_expansions: {len(self.branch_expansions)} entries for "
                             f"{len(self.branch_kernels)} branch_kernels")
        for e in self.branch_expansions:
            if e < self.expansion_step or e % self.expansion_step:
                raise ValueError(f"branch_expansions: {e} is not a positive multiple of expansion_step={self.expansion_step}")
        # The largest count any slot has (a residual slot: every branch may be removed).
        choices = math.prod(1 + (e // self.expansion_step) * len(range(3, k + 1, 2))
                            for k, e in zip(self.branch_kernels, self.branch_expansions))
        if choices > MAX_BLOCK_CHOICES:
            raise ValueError(f"branch_kernels: {choices} joint choices per block (kernels × expansions "
                             f"of every branch) exceed {MAX_BLOCK_CHOICES}; the latency table simulates each")
        hidden = max(c for _, c, _ in self.stages) * sum(self.branch_expansions)
        if hidden > MAX_HIDDEN_CHANNELS:
            raise ValueError(f"branch_expansions: the widest expanded layer has {hidden} channels "
                             f"(stage channels × sum of expansions), more than {MAX_HIDDEN_CHANNELS}")
        return self


class S3NASConfig(FlowConfig):
    target_latency_us: float = Field(400.0, gt=0, le=1e7)
    """Final latency requirement T on the simulated NPU, µs. The delivered net is ≤ T and ≥ 90 % of it."""

    search_target_ratio: float = Field(0.6, gt=0.1, le=1.0)
    """The search runs at this fraction of T (a tighter target than the final one, as in the paper)."""

    npu: NPUConfig = Field(default_factory=NPUConfig)
    """The simulated NPU (SCALE-Sim)."""

    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    """The search space."""

    n_train: Int = Field(4000, ge=64, le=FASHION_TRAIN_IMAGES - 32)
    """Fashion-MNIST training images used (a stratified subset of the 60k)."""

    n_val: Int = Field(1000, ge=32, le=10_000)
    """Held-out training images for choosing among random-search candidates and SE statistics."""

    n_test: Int = Field(10_000, ge=32, le=10_000)
    """Test images (from the 10k test set) for the reported accuracy; 10,000 = the whole test set."""

    batch_size: Int = Field(64, ge=8, le=4096)
    """Mini-batch size of every training run."""

    search_epochs: Int = Field(5, ge=2, le=500)
    """Epochs of the supernet search (warm-up + latency phase); also the random-search budget."""

    warmup_epochs: Int = Field(3, ge=1, le=499)
    """Epochs of equal-selection warm-up (latency loss off) at the start of the search."""

    latency_lambda: float = Field(15.0, ge=0, le=1e4)
    """λ of the latency loss λ·log(1 + m·ReLU(LAT − T)) (paper: 15)."""

    latency_m: float = Field(100.0, gt=0, le=1e6)
    """m of the latency loss, with LAT and T in milliseconds (paper: 100)."""

    lr: float = Field(3e-3, gt=0, le=10)
    """Learning rate of the weights (AdamW, cosine decay) in search and final training."""

    threshold_lr: float = Field(0.05, gt=0, le=10)
    """Learning rate of the superkernel thresholds (latency phase only)."""

    threshold_optimizer: Literal["adam", "sgd"] = "sgd"
    """Optimiser of the thresholds: 'adam' (one AdamW with the weights) or 'sgd' (steps proportional
    to the latency gradient; Adam's normalisation moves every threshold alike)."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    """Cross-entropy label smoothing (paper: 0.1)."""

    random_epochs_each: Int = Field(1, ge=1, le=500)
    """Training epochs per random-search candidate; candidates = search_epochs / this (same budget)."""

    final_epochs: Int = Field(3, ge=1, le=1000)
    """Training epochs of each scaled final net (ours, random search, hand-designed)."""

    se_ratio: float = Field(0.25, gt=0, le=1)
    """Squeeze-and-excitation reduction (of the block's input channels), added after scaling."""

    se_remove_fraction: float = Field(0.34, ge=0, lt=1)
    """Share of SE blocks removed by lowest excitation variance (rmSE variant)."""

    rmse_finetune_epochs: Int = Field(1, ge=0, le=1000)
    """Fine-tuning epochs after SE removal."""

    width_choices: list[float] = Field(default_factory=lambda: [0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5, 1.75, 2.0],
                                       min_length=1, max_length=32)
    """Width multipliers the compound scaling may pick (0.1-4; channels rounded to multiples of 4)."""

    depth_choices: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0], min_length=1, max_length=32)
    """Depth multipliers (0.1-4; blocks per stage = round(n·d); extra blocks copy the stage's largest)."""

    resolution_choices: list[float] = Field(default_factory=lambda: [0.875, 1.0, 1.25, 1.5],
                                            min_length=1, max_length=32)
    """Resolution multipliers (0.1-4; rounded to multiples of 4). The default floor 0.875 × 32 = 28 px
    is Fashion-MNIST's native size: scaling below it throws away pixels the data has."""

    max_confirmations: Int = Field(16, ge=1, le=64)
    """Scaled candidates at most confirmed by the simulator before giving up."""

    latency_tolerance: float = Field(0.02, gt=0, le=0.5)
    """Every compared net lands within [(1 − this)·T, T] on the simulator: equal latency within 2 %."""

    seeds: Int = Field(5, ge=1, le=64)
    """Training seeds per arm (final nets trained from scratch with seeds seed, seed+1, …): mean ± std
    across seeds, and paired tests with the seeds matched."""

    second_npu: NPUConfig = Field(default_factory=lambda: NPUConfig(array_rows=64, array_cols=64, dataflow="ws"))
    """A second NPU (another array size and/or dataflow): the search is rerun on its latency table
    to show which blocks the best architecture changes when the NPU changes. Default 64×64: against
    the 16×16 array it slows a block by 1.5-3.1× depending on the choice, while a 32×32
    output-stationary array only scales every choice by 0.6-0.72× (measured on the space's blocks)."""

    heldout_networks: Int = Field(24, ge=4, le=500)
    """Whole random networks (random scale, so their layers are new) to check the estimator on."""

    seed: Int = Field(0, ge=0, le=2**31 - 1)
    """Seed of data subsets, initialisation, dropout and random search."""

    # Two simulator actors by default: the shared rule (0 = one actor per GPU) would give a GPU
    # machine a single SCALE-Sim actor, and simulation is CPU work.
    resources: Resources = Field(default_factory=lambda: Resources(workers=2))
    """Where the steps run; ``workers`` = SCALE-Sim actors of the NPU pool, ``cpus_per_step`` =
    CPUs a training step takes, ``device`` = training device (bf16 autocast on a GPU)."""

    @field_validator("width_choices", "depth_choices", "resolution_choices")
    @classmethod
    def _multipliers(cls, v: list[float]) -> list[float]:
        # Compound scaling enumerates (and estimates) the product of the three grids, filled in
        # between their ends: the bounds keep that grid and every scaled net a sane size.
        if any(not 0.1 <= x <= 4.0 for x in v):
            raise ValueError(f"every multiplier must be in [0.1, 4], got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _epochs(self) -> "S3NASConfig":
        if self.warmup_epochs >= self.search_epochs:
            raise ValueError(f"warmup_epochs: {self.warmup_epochs} leaves no latency phase in "
                             f"search_epochs={self.search_epochs}")
        if self.n_train + self.n_val > FASHION_TRAIN_IMAGES:
            raise ValueError(f"n_val: n_train + n_val = {self.n_train + self.n_val} exceeds the "
                             f"{FASHION_TRAIN_IMAGES} training images they are drawn from")
        return self

    @property
    def search_target_us(self) -> float:
        return self.search_target_ratio * self.target_latency_us
