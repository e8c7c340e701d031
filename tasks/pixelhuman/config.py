"""The ``pixelhuman`` flow's config: which bodies are rendered, how the models are trained and judged.

Defaults are the toy CPU run (64² renders, 12 training and 4 test identities, 1.5k training steps
per generalisable model; ≈25–30 min on 2 idle cores). On a GPU the same config runs with the
models, rays and images on the device (``resources.device``); only the sizes are toy.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.training import TrainingConfig

#: the methods of one run: ours and the two baselines (the issue's names in brackets)
METHODS = ("pixelhuman", "pixel_posed", "anerf_subject")
Method = Literal["pixelhuman", "pixel_posed", "anerf_subject"]
METHOD_LABELS = {
    "pixelhuman": "PixelHuman (ours: canonical + pixel features)",
    "pixel_posed": "pixel-aligned, no canonical space (pose-unaware)",
    "anerf_subject": "per-subject animatable NeRF (no pixel features)",
}


class BodyData(ConfigSection):
    """The rendered bodies: anny identities, poses and cameras (Cycles on the Blender pool)."""

    resolution: int = Field(64, ge=16, le=1024)
    """Rendered image side, pixels (square)."""
    train_identities: int = Field(12, ge=1, le=1000)
    """Identities the generalisable models are trained on (seeds 1000+i)."""
    test_identities: int = Field(4, ge=1, le=1000)
    """Unseen identities they are evaluated on (seeds 9000+i): identity-disjoint from training."""
    train_poses: int = Field(4, ge=1, le=100)
    """Poses per training identity: procedural poses within joint limits, some of them walk phases."""
    walk_share: float = Field(0.5, ge=0.0, le=1.0)
    """Fraction of every identity's poses taken from the walk cycle (the rest are procedural)."""
    cameras: int = Field(8, ge=5, le=64)
    """Cameras on a ring around each body (the first 5 hold a test identity's input views)."""
    test_novel_poses: int = Field(2, ge=1, le=50)
    """Held-out poses per test identity (besides its input pose)."""
    test_views_per_pose: int = Field(3, ge=1, le=64)
    """Held-out cameras rendered for each novel pose of a test identity."""
    walk_frames: int = Field(16, ge=2, le=240)
    """Frames of the rendered walk (with an orbiting camera) of the first test identity: the turntable MP4."""
    samples: int = Field(8, ge=1, le=4096)
    """Cycles samples per pixel."""
    camera_radius: float = Field(3.1, gt=1.0, le=50.0)
    """Camera distance from the body's vertical axis, metres."""
    fov_deg: float = Field(40.0, gt=5.0, lt=150.0)
    """Horizontal (= vertical) field of view, degrees."""
    max_angle_deg: float = Field(35.0, ge=0.0, le=90.0)
    """Largest procedural joint rotation (per axis) of a limb bone, degrees."""


class ModelConfig(ConfigSection):
    """The field every method shares (the baselines switch parts of it off)."""

    feature_dim: int = Field(32, ge=4, le=256)
    """Channels of the pixel-aligned CNN feature map."""
    hidden: int = Field(96, ge=16, le=1024)
    """Width of the density/colour MLP."""
    pos_freqs: int = Field(6, ge=0, le=12)
    """Positional-encoding frequencies of the query coordinate."""
    samples_per_ray: int = Field(24, ge=4, le=512)
    """Stratified samples per ray inside the body's padded bounding box."""
    shell: float = Field(0.08, gt=0.0, le=1.0)
    """Points farther than this (metres) from the posed body-model surface get zero density (all methods)."""
    skin_knn: int = Field(1, ge=1, le=32)
    """Nearest body vertices whose skinning weights are blended (inverse-distance) at a query point (1 = the nearest's)."""
    skin_vertices: int = Field(1000, ge=100, le=20000)
    """Body vertices (a fixed subsample) used for the skinning-weight lookup."""
    residual_scale: float = Field(0.05, ge=0.0, le=1.0)
    """Largest learned residual deformation, metres (tanh-bounded)."""


class TrainConfig(ConfigSection):
    """Generalisable training across identities (ours and the pose-unaware baseline)."""

    steps: int = Field(1500, ge=1, le=1_000_000)
    """Optimisation steps (one identity, a source pose with 1–5 input views, one target view each)."""
    rays: int = Field(256, ge=16, le=65536)
    """Rays per step (¾ inside the target's mask box, ¼ anywhere)."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """Adam learning rate (cosine-decayed to 10 %)."""
    mask_weight: float = Field(0.1, ge=0.0, le=10.0)
    """Weight of the opacity-vs-mask binary cross-entropy."""
    max_input_views: int = Field(5, ge=1, le=16)
    """Input views per step are drawn from 1..this."""


class SubjectConfig(ConfigSection):
    """Per-subject fitting: the animatable-NeRF baseline, and ours' optional fine-tuning."""

    steps: int = Field(300, ge=1, le=100_000)
    """Steps of the per-subject animatable NeRF on a test identity's input views."""
    finetune_steps: int = Field(0, ge=0, le=100_000)
    """Per-subject fine-tuning of ours on the input views (0 = off: purely feed-forward)."""
    rays: int = Field(256, ge=16, le=65536)
    """Rays per per-subject step."""
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    """Adam learning rate of the per-subject fit (fine-tuning uses a tenth)."""


class EvalConfig(ConfigSection):
    """Evaluation on unseen identities."""

    view_counts: list[int] = Field(default_factory=lambda: [1, 3, 5], min_length=1, max_length=5)
    """Numbers of input views (nested subsets of the 5 input cameras)."""
    bootstrap: int = Field(1000, ge=100, le=100_000)
    """Bootstrap resamples (over test images) of the 95 % intervals."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of the bootstrap."""

    @field_validator("view_counts")
    @classmethod
    def _counts(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(not 1 <= n <= 5 for n in v):
            raise ValueError("entries must be unique numbers of input views between 1 and 5")
        return sorted(v)


class PixelHumanConfig(FlowConfig):
    """PixelHuman (ours) vs a pose-unaware pixel-aligned field and a per-subject animatable NeRF."""

    data: BodyData = Field(default_factory=BodyData)
    """The rendered anny bodies."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The shared field."""
    train: TrainConfig = Field(default_factory=TrainConfig)
    """Generalisable training."""
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    """Per-subject fits."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    methods: list[Method] = Field(default_factory=lambda: list(METHODS), min_length=1, max_length=3)
    """Methods run side by side; the first is compared against the others."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of the models' initialisation and the training batches."""
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(backend="torch", grad_clip=1.0,
                                                                            checkpoint_every=250, log_every=50))
    """How the shared training engine runs the generalisable models (checkpoints for resume)."""

    @field_validator("methods")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.training.backend not in ("auto", "torch"):
            raise ValueError("training: pixelhuman trains on the plain torch backend (backend auto or torch)")
        if self.data.test_views_per_pose > self.data.cameras:
            raise ValueError(f"data: test_views_per_pose ({self.data.test_views_per_pose}) must be ≤ cameras "
                             f"({self.data.cameras})")
        return self
