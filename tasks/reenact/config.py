"""The ``reenact`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``reenact``.

Every size that allocates (steps, batches, widths, evaluation sets) has an upper bound, and
every float is finite (the sections derive from :class:`~tasks.common.config.ConfigSection`).
Threads and device come from the shared ``resources`` section."""
from __future__ import annotations

from typing import Literal

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
    sampler: Literal["natural", "uniform"] = "natural"
    """Training expressions: ``natural`` correlated actions (blink both eyes, smile with cheeks, vowels
    with jaw, gaze, ...: ``tasks/reenact/expressions.py``) or ``uniform`` independent random shapes."""
    max_active: int = Field(3, ge=0, le=52)
    """A training expression combines 0..max_active actions (natural) or ARKit shapes at U(0, 1) (uniform)."""
    seeds: int = Field(3, ge=1, le=64)
    """EDTNs trained, seeds seed..seed+seeds-1 (init and batches): the intervals over training seeds."""
    manifest_fraction: float = Field(0.25, ge=0.0, le=1.0)
    """Share of each batch drawn from the training human frames' rendered expressions."""
    mouth_boost: float = Field(1.0, ge=0.0, le=3.0)
    """Inference-time factor on the mouth morphs 12–16 (EDTN's hand-tuned 1.5, applied on the morph
    dimension); 1 = off, since our EDTN is trained to hit the mouth geometry itself."""
    eval_expressions: int = Field(512, ge=16, le=100_000)
    """Test expressions with known anime answers: 1-3 semantic units (half with distractor shapes)."""
    distractor_expressions: int = Field(128, ge=0, le=100_000)
    """Test expressions of distractor shapes only (answer: the neutral anime face): the leakage set."""


class AnimoConfig(ConfigSection):
    pairs: int = Field(32, ge=1, le=100_000)
    """(human, anime) expression pairs the Animo-style mapping is fitted on (single units, every unit
    once before any twice; a fresh draw per training seed)."""
    units: int = Field(12, ge=1, le=16)
    """How many of the 16 correspondences the fitting subset covers (a random choice per seed); the
    table also shows the mapping fitted on all 16 (``animo_all_units``), its upper bound."""
    ridge: float = Field(1e-3, ge=0.0, le=1e6)
    """λ of its least-squares fit of B_a (human ≈ anime · B_a)."""


class GeneratorConfig(ConfigSection):
    image_size: int = Field(128, ge=16, le=512)
    """Training and evaluation resolution (renders are area-resampled); Animo trains at 256 (the GPU
    preset: animeceleb resolution=256 and this 256)."""
    styles: list[str] = ["default"]
    """Anime rendering styles to train on (each pair stays within one style)."""
    steps: int = Field(1000, ge=1, le=MAX_STEPS)
    """Training steps (the CPU default is sized to the 2-core machine's time budget, not to quality)."""
    batch: int = Field(4, ge=1, le=1024)
    """Pairs per step (Animo: 4)."""
    lr: float = Field(1e-3, gt=0, le=1.0)
    """Adam learning rate, β = (0.5, 0.999) (Animo: 1e-4 over ~10⁵ steps; at 2e-4 our 600-step run
    stayed a blur, at 1e-3 it draws eyes)."""
    channels: int = Field(16, ge=4, le=1024)
    """Base width of the warping / editing U-Nets and the discriminator."""
    descriptor: int = Field(128, ge=8, le=4096)
    """Width of the mapping net's motion descriptor."""
    depth: int = Field(4, ge=1, le=6)
    """Downsamplings in each U-Net (image_size must be divisible by 2**depth)."""
    flow_down: int = Field(2, ge=1, le=2)
    """The warping net reads the source at 1/flow_down resolution; its flow is upsampled (0.73× the
    step time at 2, same PSNR)."""
    basis_source: float = Field(1.0, ge=0.0, le=1.0)
    """Share of training pairs whose source is the identity's neutral frontal basis frame — the
    source every evaluation and the demo animate; the rest draw any frame, as Animo does."""
    warp_pool: int = Field(4, ge=1, le=16)
    """The warped image's loss is L1 at 1/warp_pool resolution: the warp moves the head and keeps
    the eyes (scored at full resolution it smears skin over eyes it cannot line up); 1 = full
    resolution with the perceptual term, as Animo."""
    w_warp: float = Field(2.5, ge=0, le=1e6)
    """Weight of the warped image's reconstruction loss (Animo's warp weight)."""
    w_final: float = Field(4.0, ge=0, le=1e6)
    """Weight of the edited image's reconstruction loss (Animo's final weight)."""
    w_perceptual: float = Field(1.0, ge=0, le=1e6)
    """Weight of the perceptual term (features of the frozen morph regressor trained here) inside
    each reconstruction loss; 0 = pixels only (and the generator no longer waits for the regressor)."""
    w_adv: float = Field(0.05, ge=0, le=1e6)
    """Weight of the patch discriminator's LSGAN loss; 0 = no discriminator."""
    edit_start: float = Field(0.2, ge=0, le=1)
    """Fraction of training after which the editing net's loss is on (Animo: from epoch 99 of 200)."""
    adv_start: float = Field(0.5, ge=0, le=1)
    """Fraction of training after which the adversarial loss is on."""


class RegressorConfig(ConfigSection):
    styles: list[str] = ["default", "toon"]
    """Anime rendering styles the judge trains and proves itself on (both by default: twice the frames
    of the same poses; it reads the generator's style among them)."""
    steps: int = Field(2000, ge=1, le=MAX_STEPS)
    """Training steps of the morph regressor (the expression-fidelity judge); its recipe (mirror,
    shift/scale augmentation, dropout, active-morph-weighted BCE, cosine lr) is
    :class:`~tasks.reenact.regressor.RegressorRecipe`'s."""
    batch: int = Field(32, ge=1, le=4096)
    """Renders per step."""
    lr: float = Field(1e-3, gt=0, le=1.0)
    """Adam learning rate."""
    channels: int = Field(16, ge=4, le=1024)
    """Base width of its CNN."""
    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of each training identity's poses the judge does not train on: on them it shows which
    morphs it reads (error < 0.5 × a neutral copy's; ``regressor/judge.json``), and only those count
    in the fidelity metric."""


class ReenactConfig(FlowConfig):
    dataset: str = ""
    """The animeceleb output folder (manifest, shards, morph models); empty = data/animeceleb."""
    heldout_expression_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of each training identity's poses held out of all training, as unseen expressions."""
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    """Fit of the anime → human bridge B."""
    edtn: EDTNConfig = Field(default_factory=EDTNConfig)
    """Expression domain translation network."""
    animo: AnimoConfig = Field(default_factory=AnimoConfig)
    """The Animo-style baseline mapping (a bridge fitted from a subset of expression pairs)."""
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    """Anime head generator (mapping / warping / editing nets + patch discriminator)."""
    regressor: RegressorConfig = Field(default_factory=RegressorConfig)
    """Morph regressor that judges expression fidelity."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Engine: plain torch on CPU, DeepSpeed ZeRO-2 bf16 on a GPU, Ray Train across GPUs."""
    eval_pairs: int = Field(64, ge=4, le=100_000)
    """Self-reenactment pairs evaluated per held-out split."""
    demo_frames: int = Field(16, ge=2, le=1_000)
    """Frames of the cross-domain demo (each rendered twice in Blender: human driver, true anime)."""
    video_fps: int = Field(8, ge=1, le=60)
    """Frame rate of the cross-domain MP4."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seeds the held-out poses, every model's init and every batch."""

    @model_validator(mode="after")
    def _checks(self):
        g = self.generator
        if g.image_size % (2**g.depth):
            raise ValueError(f"generator: image_size {g.image_size} is not divisible by 2**depth = {2**g.depth}")
        if g.image_size % g.warp_pool or g.image_size // g.warp_pool < 8:
            raise ValueError(f"generator: warp_pool {g.warp_pool} must divide image_size {g.image_size} "
                             "and leave at least 8 pixels (the warp loss is scored at image_size / warp_pool)")
        for name, styles in (("generator", g.styles), ("regressor", self.regressor.styles)):
            if not styles or len(set(styles)) != len(styles) or set(styles) - {"default", "toon"}:
                raise ValueError(f"{name}: styles must be distinct entries of default/toon, got {styles}")
        if set(g.styles) - set(self.regressor.styles):
            raise ValueError(f"regressor: styles {self.regressor.styles} must include the generator's {g.styles} "
                             "(the judge reads the generated frames)")
        return self
