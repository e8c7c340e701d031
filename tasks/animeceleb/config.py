"""The ``animeceleb`` flow's config: how many heads, which frames, how they are rendered.

Sizes that allocate are bounded, each on its own and together: the plan holds one row per
render in memory, so the product identities × domains × styles × frames per identity is capped
(AnimeCeleb itself is 2.4 M renders); a shard's PNGs are staged whole on a worker's disk, so
frames per shard × pixels is capped too. Where the render pool runs (workers, threads, device)
is the shared ``resources`` section."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.common.config import ConfigSection, FlowConfig
from tasks.common.morphs import ANIME_MORPH_NAMES, HUMAN_MORPH_NAMES

Domain = Literal["anime", "human"]
Style = Literal["default", "toon"]

#: renders one run may plan (AnimeCeleb: 2.4 M); the plan is a table in memory, ~1 kB a row
MAX_RENDERS = 2_500_000
#: pixels one shard may hold (frames_per_shard × resolution²): 2**30 ≈ 3 GiB of RGB
MAX_SHARD_PIXELS = 2**30


class PoseRange(ConfigSection):
    """Head rotation range, degrees (see the pose convention in the README)."""

    yaw: tuple[float, float] = (-30.0, 30.0)
    """Yaw range; positive turns the head to its own left (face moves to image right)."""
    pitch: tuple[float, float] = (-20.0, 20.0)
    """Pitch range; positive tilts the head up."""
    roll: tuple[float, float] = (-15.0, 15.0)
    """Roll range; positive tilts the top of the head toward image right."""

    @model_validator(mode="after")
    def _ordered(self):
        for name in ("yaw", "pitch", "roll"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: range must be (low, high) with low <= high, got ({lo}, {hi})")
            if max(abs(lo), abs(hi)) > 75:
                raise ValueError(f"{name}: angles beyond ±75° leave the head out of the camera's view, got ({lo}, {hi})")
        return self


class AnimeCelebConfig(FlowConfig):
    identities: int = Field(12, ge=1, le=100_000)
    """Identities per domain."""
    domains: list[Domain] = ["anime", "human"]
    """Which domains to render: procedural anime heads and/or anny human heads."""
    frames_per_identity: int = Field(64, ge=0, le=100_000)
    """Random frames per identity (sparse random morphs, random pose), besides the neutral basis frame."""
    sequences_per_identity: int = Field(1, ge=0, le=1_000)
    """Smooth sequences (driving videos) per identity."""
    sequence_length: int = Field(8, ge=2, le=10_000)
    """Frames per sequence."""
    styles: list[Style] = ["default", "toon"]
    """Rendering styles for anime heads; every anime frame is rendered in each."""
    human_styles: list[Style] = ["default"]
    """Rendering styles for human heads."""
    resolution: int = Field(128, ge=16, le=2048)
    """Square image size in pixels."""
    samples: int = Field(8, ge=1, le=4096)
    """Cycles samples per pixel."""
    denoise: bool = True
    """Denoise default-style renders with OpenImageDenoise (toon shading is flat: nothing to denoise)."""
    anime_morphs: list[str] = list(ANIME_MORPH_NAMES)
    """Anime morphs that random frames may activate (others stay 0)."""
    human_morphs: list[str] = list(HUMAN_MORPH_NAMES)
    """Human (ARKit) morphs that random frames may activate."""
    max_active_morphs: int = Field(3, ge=0, le=52)
    """A random frame activates between 0 and this many morphs, each with a weight in [0, 1]."""
    pose: PoseRange = PoseRange()
    """Head pose ranges for random and sequence frames."""
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    """Share of identities held out for the test split (identity-disjoint)."""
    frames_per_shard: int = Field(48, ge=1, le=10_000)
    """Renders per shard (one tar of PNGs + its manifest rows); a shard never mixes identities."""
    contact_sheet_samples: int = Field(64, ge=1, le=1024)
    """Random frames per contact sheet."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    """Seeds identities, frames and the split."""

    @field_validator("anime_morphs", "human_morphs")
    @classmethod
    def _known_morphs(cls, v: list[str], info):
        known = ANIME_MORPH_NAMES if info.field_name == "anime_morphs" else HUMAN_MORPH_NAMES
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown morph(s) {bad}; known: {', '.join(known)}")
        if len(set(v)) != len(v):
            raise ValueError("morphs are listed more than once")
        return v

    @field_validator("domains", "styles", "human_styles")
    @classmethod
    def _non_empty_unique(cls, v: list[str]):
        if not v:
            raise ValueError("must not be empty")
        if len(set(v)) != len(v):
            raise ValueError("entries are listed more than once")
        return v

    @model_validator(mode="after")
    def _split_possible(self):
        if self.test_fraction > 0 and self.identities < 2:
            raise ValueError("test_fraction: an identity-disjoint test split needs identities >= 2 (or test_fraction=0)")
        return self

    @model_validator(mode="after")
    def _sizes_fit(self):
        if self.renders > MAX_RENDERS:
            raise ValueError(f"frames_per_identity: the plan would hold {self.renders:,} renders (identities × styles × "
                             f"(1 + frames_per_identity + sequences_per_identity × sequence_length), per domain); "
                             f"at most {MAX_RENDERS:,} per run")
        if self.frames_per_shard * self.resolution**2 > MAX_SHARD_PIXELS:
            raise ValueError(f"frames_per_shard: {self.frames_per_shard} frames of {self.resolution}² px exceed "
                             f"{MAX_SHARD_PIXELS:,} px per shard; lower frames_per_shard")
        return self

    @property
    def frames_per_head(self) -> int:
        """Poses rendered per identity and style: the basis frame, random frames, sequences."""
        return 1 + self.frames_per_identity + self.sequences_per_identity * self.sequence_length

    @property
    def renders(self) -> int:
        """Rows of the plan: every pose of every identity in each of its domain's styles."""
        return sum(self.identities * len(self.styles_for(d)) * self.frames_per_head for d in self.domains)

    def styles_for(self, domain: str) -> list[str]:
        return list(self.styles if domain == "anime" else self.human_styles)

    def morphs_for(self, domain: str) -> list[str]:
        return list(self.anime_morphs if domain == "anime" else self.human_morphs)
