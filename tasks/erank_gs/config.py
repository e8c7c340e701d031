"""The ``erank_gs`` flow's config: which scene, which variants and seeds, how long to train.

Defaults are the small CPU run (a 64-pixel still life, ~1k steps, two variants × two seeds,
≈15 min on 2 cores); on a GPU the same config trains with gsplat's CUDA rasterizer at the
scene's full resolution (``gpu_resolution: 0``). Step counts are absolute; the paper's
schedule (30k steps, erank from 7k, densify 500–15k every 100, opacity reset every 3k) is the
same shape at a larger scale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.training import TrainingConfig

from .procedural import SCENES

#: variant → (erank + thin regulariser on, densification strategy)
VARIANTS: dict[str, tuple[bool, str]] = {
    "vanilla": (False, "default"),
    "erank": (True, "default"),
    "vanilla_absgrad": (False, "absgrad"),
    "erank_absgrad": (True, "absgrad"),
}
Variant = Literal["vanilla", "erank", "vanilla_absgrad", "erank_absgrad"]


class SceneRender(ConfigSection):
    """How a procedural scene is rendered by the Blender workers (ignored for a user's scene)."""

    resolution: int = Field(96, ge=16, le=2048)
    """Rendered image side, pixels (square): the 'full resolution' a GPU trains at."""
    train_views: int = Field(32, ge=2, le=400)
    """Training views on a Fibonacci spiral around the scene."""
    test_views: int = Field(8, ge=1, le=400)
    """Held-out views on a second, offset spiral."""
    samples: int = Field(16, ge=1, le=4096)
    """Cycles samples per pixel."""
    camera_radius: float = Field(2.6, gt=0.5, le=100.0)
    """Camera distance from the scene centre (objects fit in a radius ≈ 1)."""
    camera_angle_deg: float = Field(40.0, gt=5.0, lt=150.0)
    """Horizontal field of view, degrees (NeRF-synthetic's camera_angle_x)."""


class Densify(ConfigSection):
    """Adaptive density control (both strategies share the schedule)."""

    start: int = Field(100, ge=0)
    """First refinement step."""
    stop: int = Field(700, ge=1)
    """No refinement from this step on."""
    every: int = Field(50, ge=1)
    """Steps between refinements (3DGS: 100 of 30k)."""
    reset_every: int = Field(500, ge=0)
    """Opacity reset period, 0 = never (3DGS: 3000 of 30k)."""
    grad_threshold: float = Field(2e-4, gt=0, le=1)
    """τ: mean view-space positional gradient (NDC units) that triggers clone/split."""
    max_gaussians: int = Field(30_000, ge=100, le=10_000_000)
    """Hard cap on the number of Gaussians (memory of the CPU renderer)."""


class TrainGS(ConfigSection):
    """3DGS optimisation (learning rates are 3DGS's; the mean's is scaled by the scene extent)."""

    steps: int = Field(1000, ge=1, le=1_000_000)
    """Optimisation steps (one random training view each)."""
    init_points: int = Field(3000, ge=10, le=1_000_000)
    """Random initial Gaussians in the scene's bounding cube (no SfM points here)."""
    lambda_dssim: float = Field(0.2, ge=0, le=1)
    """λ_dssim of (1 − λ)·L1 + λ·(1 − SSIM)."""
    lr_means: float = Field(1.6e-4, gt=0, le=1)
    """Initial position lr (× extent), decayed exponentially to lr_means_final."""
    lr_means_final: float = Field(1.6e-6, gt=0, le=1)
    """Final position lr (× extent), reached at the last step."""
    lr_color: float = Field(2.5e-3, gt=0, le=1)
    """Colour (SH degree-0 coefficient) lr."""
    lr_opacity: float = Field(0.05, gt=0, le=1)
    """Opacity-logit lr."""
    lr_scales: float = Field(5e-3, gt=0, le=1)
    """Log-scale lr."""
    lr_quats: float = Field(1e-3, gt=0, le=1)
    """Quaternion lr."""
    densify: Densify = Field(default_factory=Densify)
    """When and how Gaussians are cloned, split and pruned."""

    @model_validator(mode="after")
    def _schedule(self):
        if self.densify.stop > self.steps:
            raise ValueError(f"densify: stop ({self.densify.stop}) must be ≤ steps ({self.steps})")
        if self.densify.start >= self.densify.stop:
            raise ValueError(f"densify: start ({self.densify.start}) must be below stop ({self.densify.stop})")
        if self.lr_means_final > self.lr_means:
            raise ValueError(f"lr_means_final: must not exceed lr_means ({self.lr_means})")
        return self


class ErankReg(ConfigSection):
    """The erank-GS regulariser: λ_erank·mean(max(0, −log(erank − 1 + ε))) + λ_thin·mean(s_min)."""

    lambda_erank: float = Field(0.01, ge=0, le=100)
    """λ_erank (official DTU script: 0.01)."""
    lambda_thin: float = Field(1.0, ge=0, le=100)
    """λ_thin (official DTU script: 1)."""
    from_step: int = Field(300, ge=0)
    """First step with the regulariser (official: 7000 of 30000)."""


class ErankGSConfig(FlowConfig):
    """3DGS vs 3DGS + effective-rank regularisation on a scene with true depth, normals and mesh."""

    scene: str = Field("still_life", min_length=1, max_length=4096)
    """A procedural scene (vase, chair, plant, box, still_life) or a folder in the NeRF-synthetic / nerfstudio transforms.json layout."""
    scene_render: SceneRender = Field(default_factory=SceneRender)
    """Blender rendering of a procedural scene."""
    variants: list[Variant] = Field(default_factory=lambda: ["vanilla", "erank"], min_length=1, max_length=4)
    """Variants trained side by side on the same scene and seeds; the first is the baseline."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1, max_length=16)
    """Seeds: each variant is trained once per seed (same initialisation and view order across variants)."""
    cpu_resolution: int = Field(64, ge=16, le=4096)
    """Longest image side for training and evaluation on CPU (the torch reference renderer)."""
    gpu_resolution: int = Field(0, ge=0, le=8192)
    """Longest side on a GPU (gsplat CUDA); 0 = the scene's full resolution."""
    train: TrainGS = Field(default_factory=TrainGS)
    """3DGS optimisation and densification."""
    erank: ErankReg = Field(default_factory=ErankReg)
    """The regulariser of the erank variants."""
    turntable_frames: int = Field(24, ge=2, le=720)
    """Frames of each variant's turntable MP4 (RGB | normals)."""
    chamfer_seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seed of the points sampled on the true mesh (and of the rendered-point subsample) for the Chamfer distance."""
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(grad_clip=0.0, checkpoint_every=250,
                                                                            log_every=50))
    """How the shared training engine runs (checkpoints for resume; 3DGS uses no gradient clipping)."""

    @field_validator("scene")
    @classmethod
    def _scene(cls, v: str) -> str:
        if v in SCENES:
            return v
        if not v.isprintable():
            raise ValueError("must be a procedural scene name or a folder path")
        p = Path(v).expanduser()
        if not ((p / "transforms.json").is_file() or (p / "transforms_train.json").is_file()):
            raise ValueError(f"{v!r} is neither a procedural scene ({', '.join(SCENES)}) nor a folder with "
                             "transforms.json / transforms_train.json")
        return str(p.resolve())

    @field_validator("variants", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    @model_validator(mode="after")
    def _schedule(self):
        # cross-field messages start with the field they are about (the config error names it)
        if self.erank.from_step >= self.train.steps and any(VARIANTS[v][0] for v in self.variants):
            raise ValueError(f"erank: from_step ({self.erank.from_step}) must be below train.steps ({self.train.steps})")
        if self.training.backend not in ("auto", "torch"):
            # densification resizes the parameters every few steps: DeepSpeed/ZeRO partitions cannot follow
            raise ValueError("training: erank_gs trains on the plain torch backend (backend auto or torch)")
        return self
