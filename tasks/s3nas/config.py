"""The ``s3nas`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``s3nas``.

S3NAS (METHODS.md §8) has three knobs that decide everything downstream: the NPU the latency
is measured on (``npu``), the search space (``supernet``), and the latency target. The search
runs at ``search_target_ratio × target_latency_us`` (the paper searches at a tighter target than
the final one), then compound scaling grows the found net back up to ``target_latency_us``.

A target below the smallest network of the search space is refused before any work: the
check simulates that network's layers on the configured NPU (seconds the first time; the
simulator cache makes it instant afterwards).
"""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.common.config import FlowConfig

Dataflow = Literal["ws", "os", "is"]


class NPUConfig(BaseModel):
    """A systolic-array NPU as SCALE-Sim models it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    array_rows: int = Field(16, ge=2, le=256)
    """Processing-element rows of the systolic array."""

    array_cols: int = Field(16, ge=2, le=256)
    """Processing-element columns of the systolic array."""

    dataflow: Dataflow = "ws"
    """'ws' weight-, 'os' output- or 'is' input-stationary (SCALE-Sim's three dataflows)."""

    ifmap_sram_kb: int = Field(64, ge=1)
    """On-chip input-feature-map SRAM (double-buffered), kB of 1-byte words."""

    filter_sram_kb: int = Field(64, ge=1)
    """On-chip weight SRAM, kB."""

    ofmap_sram_kb: int = Field(32, ge=1)
    """On-chip output SRAM, kB."""

    dram_bw_words: int = Field(8, ge=1)
    """DRAM bandwidth, words per cycle, for inputs, weights and outputs (memory stalls follow from it)."""

    clock_mhz: float = Field(1000.0, gt=0)
    """Clock that turns simulated cycles into microseconds."""

    def key(self) -> str:
        """Digest of everything that changes a simulated cycle count (not the clock)."""
        d = self.model_dump()
        d.pop("clock_mhz")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class SupernetConfig(BaseModel):
    """The searchable macro-architecture (METHODS.md §8.1), shrunk for 32×32 Fashion-MNIST."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    resolution: int = Field(32, ge=16, le=128)
    """Input side in pixels (28×28 Fashion-MNIST resized to it); a multiple of 4."""

    stem_channels: int = Field(16, ge=4)
    """Channels of the 3×3 stride-2 stem convolution."""

    stages: list[tuple[int, int, int]] = Field(default_factory=lambda: [(1, 16, 1), (2, 24, 2), (3, 40, 2), (2, 64, 1)],
                                               min_length=1)
    """(blocks, output channels, stride of the first block) per stage; different block counts per
    stage, as in the paper's 3-4-7-4-11 supernets."""

    branch_kernels: list[int] = Field(default_factory=lambda: [3, 5], min_length=1)
    """Largest depthwise kernel of each parallel MixConv branch; a branch chooses k ∈ {3, 5, …, max}.
    The last branch is the primary one: it can be zeroed only in blocks with a residual."""

    branch_expansions: list[int] = Field(default_factory=lambda: [2, 4], min_length=1)
    """Largest expansion of each branch; a branch chooses e ∈ {0, step, …, max} (0 removes it)."""

    expansion_step: int = Field(2, ge=1)
    """Granularity of the expansion choice: one nested channel group per step."""

    head_channels: int = Field(128, ge=8)
    """Channels of the 1×1 feature-mix convolution before pooling."""

    num_classes: int = Field(10, ge=2)
    """Classifier outputs (10 Fashion-MNIST classes)."""

    @field_validator("branch_kernels")
    @classmethod
    def _odd_kernels(cls, v: list[int]) -> list[int]:
        for k in v:
            if k < 3 or k % 2 == 0:
                raise ValueError(f"every branch kernel must be odd and ≥ 3, got {k}")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
        for n, c, s in v:
            if n < 1 or c < 4 or s not in (1, 2):
                raise ValueError(f"each stage is (blocks ≥ 1, channels ≥ 4, stride 1|2), got {(n, c, s)}")
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
        return self


class S3NASConfig(FlowConfig):
    target_latency_us: float = Field(400.0, gt=0)
    """Final latency requirement T on the simulated NPU, µs. The delivered net is ≤ T and ≥ 90 % of it."""

    search_target_ratio: float = Field(0.6, gt=0.1, le=1.0)
    """The search runs at this fraction of T (a tighter target than the final one, as in the paper)."""

    npu: NPUConfig = Field(default_factory=NPUConfig)
    """The simulated NPU (SCALE-Sim)."""

    supernet: SupernetConfig = Field(default_factory=SupernetConfig)
    """The search space."""

    n_train: int = Field(4000, ge=64)
    """Fashion-MNIST training images used (a stratified subset of the 60k)."""

    n_val: int = Field(1000, ge=32)
    """Held-out training images for choosing among random-search candidates and SE statistics."""

    n_test: int = Field(2000, ge=32, le=10000)
    """Test images (from the 10k test set) for the reported accuracy."""

    batch_size: int = Field(64, ge=8)
    """Mini-batch size of every training run."""

    search_epochs: int = Field(5, ge=2)
    """Epochs of the supernet search (warm-up + latency phase); also the random-search budget."""

    warmup_epochs: int = Field(3, ge=1)
    """Epochs of equal-selection warm-up (latency loss off) at the start of the search."""

    latency_lambda: float = Field(15.0, ge=0)
    """λ of the latency loss λ·log(1 + m·ReLU(LAT − T)) (paper: 15)."""

    latency_m: float = Field(100.0, gt=0)
    """m of the latency loss, with LAT and T in milliseconds (paper: 100)."""

    lr: float = Field(3e-3, gt=0)
    """Learning rate of the weights (AdamW, cosine decay) in search and final training."""

    threshold_lr: float = Field(0.005, gt=0)
    """Learning rate of the superkernel thresholds (latency phase only)."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    """Cross-entropy label smoothing (paper: 0.1)."""

    random_epochs_each: int = Field(1, ge=1)
    """Training epochs per random-search candidate; candidates = search_epochs / this (same budget)."""

    final_epochs: int = Field(3, ge=1)
    """Training epochs of each scaled final net (ours, random search, hand-designed)."""

    se_ratio: float = Field(0.25, gt=0, le=1)
    """Squeeze-and-excitation reduction (of the block's input channels), added after scaling."""

    se_remove_fraction: float = Field(0.34, ge=0, lt=1)
    """Share of SE blocks removed by lowest excitation variance (rmSE variant)."""

    rmse_finetune_epochs: int = Field(1, ge=0)
    """Fine-tuning epochs after SE removal."""

    width_choices: list[float] = Field(default_factory=lambda: [0.5, 0.625, 0.75, 0.875, 1.0, 1.125, 1.25, 1.5, 1.75, 2.0])
    """Width multipliers the compound scaling may pick (channels rounded to multiples of 8)."""

    depth_choices: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0])
    """Depth multipliers (blocks per stage = round(n·d); extra blocks copy the stage's largest)."""

    resolution_choices: list[float] = Field(default_factory=lambda: [0.75, 0.875, 1.0, 1.25, 1.5])
    """Resolution multipliers (rounded to multiples of 4)."""

    max_confirmations: int = Field(8, ge=1)
    """Scaled candidates at most confirmed by the simulator before giving up."""

    heldout_networks: int = Field(24, ge=4)
    """Whole random networks (random scale, so their layers are new) to check the estimator on."""

    lut_workers: int = Field(2, ge=1)
    """Ray actors running SCALE-Sim in parallel."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """'auto' (GPU when Ray has one, bf16 autocast there), 'cpu' or 'cuda'."""

    cpus_per_step: int = Field(0, ge=0)
    """CPU cores a training step asks Ray for; 0 = all cores of the local machine."""

    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of data subsets, initialisation, dropout and random search."""

    @field_validator("width_choices", "depth_choices", "resolution_choices")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"needs at least one multiplier, all > 0, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _epochs(self) -> "S3NASConfig":
        if self.warmup_epochs >= self.search_epochs:
            raise ValueError(f"warmup_epochs: {self.warmup_epochs} leaves no latency phase in "
                             f"search_epochs={self.search_epochs}")
        return self

    @model_validator(mode="after")
    def _target_is_reachable(self) -> "S3NASConfig":
        from .npu import SimCache, network_cycles
        from .space import network_layers, smallest_arch

        small = smallest_arch(self.supernet)
        cycles = network_cycles(network_layers(small), SimCache.default(self.npu))
        floor_us = cycles / self.npu.clock_mhz
        search_t = self.search_target_ratio * self.target_latency_us
        if search_t < floor_us:
            raise ValueError(
                f"target_latency_us: {self.target_latency_us:g} µs × search_target_ratio {self.search_target_ratio:g} "
                f"= {search_t:.1f} µs is below the smallest network of the search space, {floor_us:.1f} µs "
                f"on this NPU (npu.clock_mhz={self.npu.clock_mhz:g}); raise the target (≥ {floor_us / self.search_target_ratio:.0f} µs) or shrink the supernet"
            )
        return self

    @property
    def search_target_us(self) -> float:
        return self.search_target_ratio * self.target_latency_us
