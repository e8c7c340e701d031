"""The ``reenact`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``reenact``.

Every size that allocates (steps, batches, widths, evaluation sets) has an upper bound, and
every float is finite (the sections derive from :class:`~tasks.common.config.ConfigSection`).
Threads and device come from the shared ``resources`` section."""
from __future__ import annotations

from pydantic import Field, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.training import TrainingConfig

#: training steps any one model may be given (~weeks of a GPU at these sizes)
MAX_STEPS = 10_000_000


class BridgeConfig(ConfigSection):
    ridge: float = Field(1e-3, ge=0.0, le=1e6)
    """λ of the box-constrained ridge fit of B; keeps weights off blendshapes the landmarks cannot see."""


class EDTNConfig(ConfigSection):
    steps: int = Field(1500, ge=1, le=MAX_STEPS)
    """Training steps (the released run: 100 epochs of batch 512)."""
    batch: int = Field(256, ge=1, le=65_536)
    """Human expressions per step (released: 512)."""
    lr: float = Field(3e-4, gt=0, le=1.0)
    """Adam learning rate, β = (0.5, 0.999) as released (released lr 1e-4 over far more steps)."""
    hidden: int = Field(512, ge=8, le=8192)
    """Width of the 3 hidden layers (released: 512)."""
    max_active: int = Field(3, ge=0, le=52)
    """Random training expressions activate 0..max_active ARKit morphs, each U(0, 1) (the animeceleb sampler)."""
    manifest_fraction: float = Field(0.25, ge=0.0, le=1.0)
    """Share of each batch drawn from the training human frames' rendered expressions."""
    mouth_boost: float = Field(1.0, ge=0.0, le=3.0)
    """Inference-time factor on the mouth morphs 12–16 (EDTN's hand-tuned 1.5, applied on the morph
    dimension); 1 = off, since our EDTN is trained to hit the mouth geometry itself."""
    eval_expressions: int = Field(512, ge=16, le=100_000)
    """Fresh held-out random expressions in the evaluation (besides the test identities' frames)."""


class GeneratorConfig(ConfigSection):
    image_size: int = Field(64, ge=16, le=512)
    """Training and evaluation resolution (renders are area-resampled); Animo trains at 256."""
    styles: list[str] = ["default"]
    """Anime rendering styles to train on (each pair stays within one style)."""
    steps: int = Field(3000, ge=1, le=MAX_STEPS)
    """Training steps."""
    batch: int = Field(8, ge=1, le=1024)
    """Pairs per step (Animo: 4)."""
    lr: float = Field(2e-4, gt=0, le=1.0)
    """Adam learning rate, β = (0.5, 0.999)."""
    channels: int = Field(32, ge=4, le=1024)
    """Base width of the warping / editing U-Nets and the discriminator."""
    descriptor: int = Field(128, ge=8, le=4096)
    """Width of the mapping net's motion descriptor."""
    depth: int = Field(3, ge=1, le=6)
    """Downsamplings in each U-Net (image_size must be divisible by 2**depth)."""
    w_warp: float = Field(2.5, ge=0, le=1e6)
    """Weight of the warped image's reconstruction loss (Animo's warp weight)."""
    w_final: float = Field(4.0, ge=0, le=1e6)
    """Weight of the edited image's reconstruction loss (Animo's final weight)."""
    w_adv: float = Field(0.05, ge=0, le=1e6)
    """Weight of the patch discriminator's LSGAN loss; 0 = no discriminator."""
    edit_start: float = Field(0.2, ge=0, le=1)
    """Fraction of training after which the editing net's loss is on (Animo: from epoch 99 of 200)."""
    adv_start: float = Field(0.5, ge=0, le=1)
    """Fraction of training after which the adversarial loss is on."""


class RegressorConfig(ConfigSection):
    steps: int = Field(1500, ge=1, le=MAX_STEPS)
    """Training steps of the morph regressor (the expression-fidelity judge)."""
    batch: int = Field(32, ge=1, le=4096)
    """Renders per step."""
    lr: float = Field(1e-3, gt=0, le=1.0)
    """Adam learning rate."""
    channels: int = Field(32, ge=4, le=1024)
    """Base width of its CNN."""


class ReenactConfig(FlowConfig):
    dataset: str = ""
    """The animeceleb output folder (manifest, shards, morph models); empty = data/animeceleb."""
    heldout_expression_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of each training identity's poses held out of all training, as unseen expressions."""
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    """Fit of the anime → human bridge B."""
    edtn: EDTNConfig = Field(default_factory=EDTNConfig)
    """Expression domain translation network."""
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    """Anime head generator (mapping / warping / editing nets + patch discriminator)."""
    regressor: RegressorConfig = Field(default_factory=RegressorConfig)
    """Morph regressor that judges expression fidelity."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Engine: plain torch on CPU, DeepSpeed ZeRO-2 bf16 on a GPU, Ray Train across GPUs."""
    eval_pairs: int = Field(64, ge=4, le=100_000)
    """Self-reenactment pairs evaluated per held-out split."""
    video_fps: int = Field(8, ge=1, le=60)
    """Frame rate of the cross-domain MP4."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seeds the held-out poses, every model's init and every batch."""

    @model_validator(mode="after")
    def _checks(self):
        g = self.generator
        if g.image_size % (2**g.depth):
            raise ValueError(f"generator: image_size {g.image_size} is not divisible by 2**depth = {2**g.depth}")
        if not g.styles or len(set(g.styles)) != len(g.styles) or set(g.styles) - {"default", "toon"}:
            raise ValueError(f"generator: styles must be distinct entries of default/toon, got {g.styles}")
        return self
