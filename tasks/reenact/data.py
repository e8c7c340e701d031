"""Data for the reenact flow, read from the ``animeceleb`` outputs (never written to).

* the manifest and its identity-disjoint split; from the *training* identities a fraction of the
  poses (``pose_id``, so both styles of a frame go together) is held out as **held-out
  expressions**: no model sees those frames in training;
* anime frames of one style at ``image_size`` (area-resampled from the render), kept in memory as
  uint8 — the toy datasets are a few hundred frames;
* :class:`ReenactData`: what every step reads, and which frames train and evaluate the models
  (training identities minus held-out expressions; held-out identities; held-out expressions);
* the 20-d AnimeCeleb pose (:func:`pose_vector`) and :class:`PairSampler`: self-reenactment pairs
  (source, driving) of one identity and one style;
* human expressions (ARKit weights) of the manifest, and the human driving sequences.

Every read of a shard checks it is whole: an image the manifest names and the shard's tar does
not deliver (a truncated or missing tar) is a :class:`~tasks.common.config.DataError` naming the
shard — never a tensor left partly uninitialised.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tasks.common.artifacts import MARKER, data_root, read_json
from tasks.common.config import ConfigError, DataError

from .config import ReenactConfig

ANGLES = ["yaw", "pitch", "roll"]
POSE_DIM = 20  # the AnimeCeleb pose: 17 morph weights + yaw, pitch, roll
ANGLE_SCALE = 30.0  # degrees → the descriptor's input range ≈ [-1, 1]


def pose_vector(weights: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """[N, 17] morphs + [N, 3] (yaw, pitch, roll) degrees → [N, 20] generator input."""
    return torch.cat([weights, angles_deg / ANGLE_SCALE], -1)


@dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @classmethod
    def of(cls, dataset: str) -> "DatasetPaths":
        """The animeceleb outputs named by ``reenact.dataset`` (empty: this data root's)."""
        return cls(Path(dataset) if dataset else data_root() / "animeceleb")

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
    from tasks.common.morphs import MorphModel

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
    check_shards_present(paths, m, field)
    return m


def check_shards_present(paths: DatasetPaths, manifest: pd.DataFrame, field: str = "dataset") -> None:
    """Every shard the manifest names exists, at the size animeceleb recorded when it wrote it
    (cheap: sizes only; the readers check every member they read)."""
    recorded: dict[str, list] = {}
    try:
        recorded = read_json(paths.shards / MARKER).get("files", {})
    except (OSError, ValueError, AttributeError):
        pass  # no record to compare with: the readers' checks still hold
    for shard in sorted(manifest["shard"].unique()):
        for name in (f"{shard}.tar", f"{shard}.parquet"):
            f = paths.shards / name
            if not f.is_file():
                raise DataError(f"reenact.{field}: shard {shard} is missing {name} in {paths.shards}; "
                                "rerun animeceleb to render it again")
            if name in recorded and f.stat().st_size != recorded[name][0]:
                raise DataError(f"reenact.{field}: shard {shard} is damaged ({name} is {f.stat().st_size} bytes, "
                                f"written as {recorded[name][0]}); rerun animeceleb to render it again")


def check_inputs(cfg: ReenactConfig) -> pd.DataFrame:
    """Fail before any work when the animeceleb outputs are missing or do not fit (names the field)."""
    return check_dataset(DatasetPaths.of(cfg.dataset))


@dataclass
class ReenactData:
    """What every reenact step reads: the dataset's paths, its checked manifest, the held-out poses."""

    paths: DatasetPaths
    manifest: pd.DataFrame
    heldout: set[str]

    @classmethod
    def open(cls, cfg: ReenactConfig) -> "ReenactData":
        paths = DatasetPaths.of(cfg.dataset)
        manifest = check_dataset(paths)
        return cls(paths, manifest, heldout_poses(manifest, cfg.heldout_expression_fraction, cfg.seed))

    @property
    def labels(self) -> list[Path]:
        """Inputs of every step's cache key: the manifest and the morph models."""
        return [self.paths.manifest, self.paths.morph_models]

    def train_frames(self, styles: list[str], size: int) -> "AnimeFrames":
        """The anime frames models train on: training identities, held-out expressions left out."""
        m = self.manifest
        return AnimeFrames.load(self.paths, m[(m.split == "train") & ~m.pose_id.isin(self.heldout)], styles, size)

    def test_identity_frames(self, styles: list[str], size: int) -> "AnimeFrames":
        """Anime frames of the held-out identities (evaluation (b))."""
        return AnimeFrames.load(self.paths, self.manifest[self.manifest.split == "test"], styles, size)

    def heldout_expression_frames(self, styles: list[str], size: int) -> "AnimeFrames":
        """Training identities' held-out expressions, with their basis frame as a source (evaluation (c))."""
        m = self.manifest
        rows = m[(m.split == "train") & ((m.kind == "basis") | m.pose_id.isin(self.heldout))]
        return AnimeFrames.load(self.paths, rows, styles, size)

    def human_identities(self, split: str) -> list[str]:
        m = self.manifest
        return sorted(m[(m.domain == "human") & (m.split == split)].identity.unique())


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
    """uint8 [N, 3, size, size] in the order of ``rows`` (one pass over each shard's tar).

    Raises :class:`DataError` naming the shard when its tar is missing, unreadable or does not
    hold every requested member (``tarfile`` ends a truncated archive silently).
    """
    from PIL import Image

    out = torch.zeros(len(rows), 3, size, size, dtype=torch.uint8)
    pos = {m: i for i, m in enumerate(rows.member)}
    for shard, g in rows.groupby("shard"):
        want, found = set(g.member), set()
        tar_path = Path(shards_dir) / f"{shard}.tar"
        try:
            with tarfile.open(tar_path) as tar:
                for info in tar:
                    if info.name in want and info.name not in found:
                        data = tar.extractfile(info).read()  # type: ignore[union-attr]
                        if len(data) != info.size:
                            raise DataError(f"shard {shard}: {info.name} is cut short in {tar_path}")
                        img = Image.open(io.BytesIO(data)).convert("RGB")
                        if img.size != (size, size):
                            img = img.resize((size, size), Image.BOX)
                        out[pos[info.name]] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
                        found.add(info.name)
        except FileNotFoundError:
            raise DataError(f"shard {shard}: {tar_path} is missing; rerun animeceleb") from None
        except (tarfile.TarError, EOFError, OSError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise DataError(f"shard {shard}: {tar_path} is damaged ({e}); rerun animeceleb") from None
        if found != want:
            missing = sorted(want - found)
            raise DataError(f"shard {shard}: {len(missing)} of {len(want)} frames are not in {tar_path} "
                            f"(e.g. {missing[0]}): the shard is truncated or damaged; rerun animeceleb")
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
    """Random (source, driving) pairs within one identity and style — Animo's self-reenactment.

    With probability ``basis_source`` the source is the identity's neutral frontal *basis* frame
    (the source of every evaluation and of the cross-domain demo: a character animated from its
    portrait); otherwise any other frame of the identity, as Animo draws them. Training on the basis
    source lets the warp learn one motion per driving pose instead of one per (source, driving) pair —
    at our step budgets the difference between a head that turns and one that smears."""

    def __init__(self, frames: AnimeFrames, basis_source: float = 0.0):
        self.frames, self.basis_source = frames, basis_source
        self.groups = [torch.as_tensor(g.index.to_numpy()) for _, g in frames.rows.groupby(["identity", "style"]) if len(g) > 1]
        if not self.groups:
            raise ValueError("no identity has two training frames in one style: nothing to pair")
        kind = frames.rows.kind.to_numpy()
        self.basis = [int(g[np.flatnonzero(kind[g.numpy()] == "basis")[0]]) if (kind[g.numpy()] == "basis").any() else -1
                      for g in self.groups]
        w, a = pose_of(frames.rows)
        self.poses = pose_vector(w, a)

    def sample(self, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        gi = torch.randint(0, len(self.groups), (n,), generator=g)
        from_basis = torch.rand(n, generator=g) < self.basis_source
        src, tgt = [], []
        for i, b in zip(gi.tolist(), from_basis.tolist()):
            grp = self.groups[i]
            x, y = torch.randperm(len(grp), generator=g)[:2].tolist()
            s, t = int(grp[x]), int(grp[y])
            if b and self.basis[i] >= 0:
                s, t = self.basis[i], (t if t != self.basis[i] else s)
            src.append(s)
            tgt.append(t)
        return {"source": self.frames.float_images(src), "target": self.frames.float_images(tgt),
                "pose": self.poses[tgt]}


def human_expressions(manifest: pd.DataFrame, split: str) -> np.ndarray:
    rows = manifest[(manifest.domain == "human") & (manifest.split == split)]
    return np.stack(rows.weights.to_numpy()).astype(np.float32) if len(rows) else np.zeros((0, 52), np.float32)
