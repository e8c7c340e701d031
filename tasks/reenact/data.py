"""Data for the reenact flow, read from the ``animeceleb`` outputs (never written to).

* the manifest and its identity-disjoint split; from the *training* identities a fraction of the
  poses (``pose_id``, so both styles of a frame go together) is held out as **held-out
  expressions**: no model sees those frames in training;
* anime frames of one style at ``image_size`` (area-resampled from the render), kept in memory as
  uint8 — the toy datasets are a few hundred frames;
* :class:`PairSampler`: self-reenactment pairs (source, driving) of one identity and one style;
* human expressions (ARKit weights) of the manifest, and the human driving sequences.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.common.config import ConfigError

ANGLES = ["yaw", "pitch", "roll"]


@dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "dataset" / "manifest.parquet"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def morph_models(self) -> Path:
        return self.root / "morph_models"


def check_dataset(paths: DatasetPaths, n_anime: int = 17, n_human: int = 52, field: str = "dataset") -> pd.DataFrame:
    """The manifest, after checking everything the flow relies on; errors name the config field."""
    from tasks.animeceleb.morph_model import MorphModel

    if not paths.manifest.is_file():
        raise ConfigError(f"reenact.{field}: no animeceleb manifest at {paths.manifest}; "
                          "run `paperline run animeceleb` (or `dvc repro animeceleb`) first")
    for p in (paths.shards, paths.morph_models / "anime.npz", paths.morph_models / "human.npz"):
        if not p.exists():
            raise ConfigError(f"reenact.{field}: {p} is missing: the animeceleb outputs are incomplete")
    m = pd.read_parquet(paths.manifest)
    for domain, want in (("anime", n_anime), ("human", n_human)):
        rows = m[m.domain == domain]
        if rows.empty:
            raise ConfigError(f"reenact.{field}: the manifest has no {domain} frames; render both domains")
        counts = sorted({len(w) for w in rows.weights})
        if counts != [want]:
            raise ConfigError(f"reenact.{field}: {domain} frames carry {counts} morph weights, the models expect {want}")
        got = MorphModel.load(paths.morph_models / f"{domain}.npz").num_morphs
        if got != want:
            raise ConfigError(f"reenact.{field}: {domain}.npz has {got} morphs, the manifest and models expect {want}")
        if not (rows.split == "test").any() or not (rows.split == "train").any():
            raise ConfigError(f"reenact.{field}: {domain} identities need both a train and a test split "
                              "(animeceleb identities >= 2 and test_fraction > 0)")
    return m


def heldout_poses(manifest: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """pose_ids of training identities held out as unseen expressions (never the basis frame)."""
    rng = np.random.default_rng(seed)
    cand = manifest[(manifest.split == "train") & (manifest.kind != "basis")]
    out: set[str] = set()
    for _, g in cand.groupby("identity"):
        ids = sorted(g.pose_id.unique())
        k = int(round(fraction * len(ids)))
        out |= set(rng.choice(ids, size=k, replace=False).tolist()) if k else set()
    return out


def load_images(shards_dir: Path, rows: pd.DataFrame, size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size] in the order of ``rows`` (one pass over each shard's tar)."""
    from PIL import Image

    out = torch.empty(len(rows), 3, size, size, dtype=torch.uint8)
    pos = {m: i for i, m in enumerate(rows.member)}
    for shard, g in rows.groupby("shard"):
        want = set(g.member)
        with tarfile.open(Path(shards_dir) / f"{shard}.tar") as tar:
            for info in tar:
                if info.name in want:
                    img = Image.open(io.BytesIO(tar.extractfile(info).read())).convert("RGB")
                    if img.size != (size, size):
                        img = img.resize((size, size), Image.BOX)
                    out[pos[info.name]] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return out


def pose_of(rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(morph weights [N, K], angles [N, 3] degrees as yaw, pitch, roll)."""
    w = torch.as_tensor(np.stack(rows.weights.to_numpy()).astype(np.float32))
    a = torch.as_tensor(rows[ANGLES].to_numpy(np.float32))
    return w, a


@dataclass
class AnimeFrames:
    rows: pd.DataFrame  # reset index: row i ↔ images[i]
    images: torch.Tensor  # uint8 [N, 3, S, S]

    @classmethod
    def load(cls, paths: DatasetPaths, manifest: pd.DataFrame, styles: list[str], size: int) -> "AnimeFrames":
        rows = manifest[(manifest.domain == "anime") & manifest["style"].isin(styles)].reset_index(drop=True)
        return cls(rows, load_images(paths.shards, rows, size))

    def subset(self, mask: np.ndarray) -> "AnimeFrames":
        idx = np.flatnonzero(mask)
        return AnimeFrames(self.rows.iloc[idx].reset_index(drop=True), self.images[torch.as_tensor(idx)])

    def float_images(self, idx) -> torch.Tensor:
        return self.images[idx].float() / 255.0


class PairSampler:
    """Random (source, driving) pairs within one identity and style — Animo's self-reenactment."""

    def __init__(self, frames: AnimeFrames):
        from .generator import pose_vector

        self.frames = frames
        self.groups = [torch.as_tensor(g.index.to_numpy()) for _, g in frames.rows.groupby(["identity", "style"]) if len(g) > 1]
        if not self.groups:
            raise ValueError("no identity has two training frames in one style: nothing to pair")
        w, a = pose_of(frames.rows)
        self.poses = pose_vector(w, a)

    def sample(self, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        gi = torch.randint(0, len(self.groups), (n,), generator=g)
        src, tgt = [], []
        for i in gi.tolist():
            grp = self.groups[i]
            a, b = torch.randperm(len(grp), generator=g)[:2].tolist()
            src.append(int(grp[a]))
            tgt.append(int(grp[b]))
        return {"source": self.frames.float_images(src), "target": self.frames.float_images(tgt),
                "pose": self.poses[tgt]}


def human_expressions(manifest: pd.DataFrame, split: str) -> np.ndarray:
    rows = manifest[(manifest.domain == "human") & (manifest.split == split)]
    return np.stack(rows.weights.to_numpy()).astype(np.float32) if len(rows) else np.zeros((0, 52), np.float32)
