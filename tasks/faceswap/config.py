"""The ``faceswap`` flow's config: the rendered data, the shared training budget, the methods.

Defaults are the small CPU run (≈100 training identities × 4 frames rendered at 128², models
at 64², a few hundred steps per network; ≈25 min on 2 idle cores). Every learned swapper gets
the same budget (steps, batch, backbone width, learning rate) so the table compares training
schemes, not sizes.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.training import TrainingConfig

from . import methods as registry


class FaceData(ConfigSection):
    """The rendered face set (Blender pool): identities, frames, sequences, test pairs."""

    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of every draw (shapes, looks, expressions, poses, pairs)."""
    resolution: int = Field(128, ge=32, le=1024)
    """Render side, pixels (square)."""
    samples: int = Field(10, ge=1, le=4096)
    """Cycles samples per pixel (no denoiser: it costs more than the render at this size)."""
    train_identities: int = Field(100, ge=4, le=100_000)
    """Training identities (face shapes)."""
    train_frames: int = Field(4, ge=2, le=1000)
    """Frames per training identity, each with its own look, expression and pose."""
    test_identities: int = Field(24, ge=3, le=100_000)
    """Held-out identities (disjoint from training)."""
    test_frames: int = Field(2, ge=2, le=1000)
    """Still frames per test identity."""
    sequences: int = Field(3, ge=0, le=1000)
    """Test sequences (one look, smoothly moving expression and pose) for the temporal check."""
    sequence_length: int = Field(6, ge=2, le=1000)
    """Frames per sequence."""
    pairs: int = Field(48, ge=1, le=100_000)
    """Still test pairs (source identity ≠ target identity), besides one source per sequence."""


class Budget(ConfigSection):
    """The training budget every learned swap method gets (same backbone size and steps)."""

    resolution: int = Field(64, ge=16, le=1024)
    """Model side, pixels: faces are area-downsampled from the render."""
    steps: int = Field(300, ge=1, le=1_000_000)
    """Optimisation steps per swap method."""
    batch: int = Field(8, ge=1, le=4096)
    """Batch size."""
    width: int = Field(16, ge=4, le=512)
    """Backbone base channels (generator and discriminator)."""
    lr: float = Field(2e-4, gt=0, le=1)
    """Adam learning rate of generator and discriminator."""

    @field_validator("resolution")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("must be a power of two (the U-Net halves it three times)")
        return v


class Tools(ConfigSection):
    """The identity encoder and attribute regressor trained here (evaluation and identity loss)."""

    steps: int = Field(1500, ge=1, le=1_000_000)
    """Steps of each of the two networks (the identity encoder on face regions: 0.747 held-out
    verification at 800 steps; on whole images it memorised: 0.63)."""
    batch: int = Field(32, ge=2, le=4096)
    """Batch size."""
    width: int = Field(16, ge=4, le=512)
    """Base channels."""
    lr: float = Field(1e-3, gt=0, le=1)
    """Adam learning rate (cosine decay)."""
    min_expression_r2: float | None = Field(0.25, le=1.0)
    """Expression blendshapes the regressor reads on held-out renders with at least this R² are the
    ones the expression columns (error, leakage) score; the rest it cannot read (R² per blendshape
    in ``tools/check.json``). null: score every blendshape."""
    min_verification: float = Field(0.6, ge=0.5, le=1.0)
    """Held-out verification accuracy the identity encoder must reach; below it the run stops."""


class Evaluation(ConfigSection):
    """How swaps are scored."""

    bootstrap: int = Field(1000, ge=100, le=100_000)
    """Bootstrap resamples of the test pairs for the 95 % intervals."""
    dlib: bool = True
    """Score identity with dlib's shipped face descriptor too (the independent check)."""
    strip_pairs: int = Field(6, ge=1, le=64)
    """Test pairs shown in each strip."""


class FaceswapConfig(FlowConfig):
    """SAMAE (masked self-reconstruction) vs a SimSwap-like target-oriented swapper vs warp-and-blend, on rendered faces with true swaps."""

    data: FaceData = Field(default_factory=FaceData)
    """The rendered face set."""
    methods: list[str] = Field(default_factory=lambda: list(registry.DEFAULT_METHODS), min_length=1, max_length=32)
    """Swap methods to train and score (names from tasks/faceswap/methods.py)."""
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-method option overrides, e.g. {samae: {perforation_rate: 0.5}}."""
    budget: Budget = Field(default_factory=Budget)
    """Training budget shared by every learned method."""
    tools: Tools = Field(default_factory=Tools)
    """Identity encoder and attribute regressor."""
    evaluation: Evaluation = Field(default_factory=Evaluation)
    """Scoring."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of every training run."""
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(grad_clip=0.0, checkpoint_every=200,
                                                                            log_every=50))
    """How the shared engine runs (torch on CPU, DeepSpeed on a GPU; checkpoints for resume)."""

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in registry.METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(map(repr, unknown))}; known: {', '.join(registry.METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _options(self):
        for name, opts in self.method_options.items():
            if name not in registry.METHODS:
                raise ValueError(f"method_options: unknown method {name!r}; known: {', '.join(registry.METHODS)}")
            try:
                registry.get(name).options_model(opts)
            except Exception as e:  # pydantic ValidationError: name the method and field
                errs = getattr(e, "errors", None)
                if errs:
                    first = e.errors()[0]
                    loc = ".".join(str(x) for x in first["loc"])
                    raise ValueError(f"method_options.{name}.{loc}: {first['msg']}") from None
                raise ValueError(f"method_options.{name}: {e}") from None
        if self.budget.resolution > self.data.resolution:
            raise ValueError(f"budget: resolution ({self.budget.resolution}) must not exceed data.resolution "
                             f"({self.data.resolution})")
        if self.evaluation.strip_pairs > self.data.pairs:
            raise ValueError(f"evaluation: strip_pairs ({self.evaluation.strip_pairs}) must not exceed data.pairs")
        return self
