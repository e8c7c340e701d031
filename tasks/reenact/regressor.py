"""A morph regressor trained on real anime renders: image → 17 morph weights + 3 head angles.

It is the judge of **expression fidelity** (metric (c)) and, frozen, the generator's perceptual
network (:func:`perceptual_loss`: no downloaded VGG weights exist here, so the features are those
of a network trained here on the renders, which by training respond to eyes, brows and mouth): trained only on renders of the
training identities (held-out expressions excluded), it reads the morphs off a generated frame;
its error against the morphs the generator was asked for says whether the expression arrived.
Its error on *real* renders of the same frames is reported beside it as the judge's own floor.
Before it judges anything it proves, on validation poses it never trained on, which morphs it reads
(:class:`Readability`); only those count in the fidelity metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

import torch
import torch.nn.functional as F
from torch import nn

from .data import ANGLE_SCALE, AnimeFrames

#: a morph is *read* when, on validation renders the judge never trained on, its error on the frames
#: that change the morph (weight > CHANGED) is below READ_RATIO of the error it makes on a copy of
#: the identity's neutral frame — with 95 % confidence (the one-sided bootstrap bound over those
#: frames, so a lucky handful does not count), left and right morphs judged together (the judge
#: reads both sides of a mirrored frame); only read morphs count in the fidelity metric (c)
READ_RATIO = 0.5
#: a morph group needs this many changed validation frames before it can count as read
MIN_CHANGED = 6
CHANGED = 0.1
BOOTSTRAP = 2000


def mirror_index(names: list[str]) -> list[int]:
    """For each morph, the index of its mirror image: ``*_left`` ↔ ``*_right``, the rest themselves."""
    swap = {"left": "right", "right": "left"}
    out = []
    for n in names:
        stem, _, side = n.rpartition("_")
        out.append(names.index(f"{stem}_{swap[side]}") if side in swap else names.index(n))
    return out


def augment(image: torch.Tensor, weights: torch.Tensor, angles: torch.Tensor, g: torch.Generator, *,
            mirror: list[int] | None, shift: float, jitter: float = 0.1):
    """The judge's training augmentation, labels moved with the pixels.

    * mirror (half the batch): the image flipped left-right, left and right morphs swapped, yaw and
      roll negated (left and right morphs are mirror shapes; hair and light are not mirrored,
      which varies the rest of the frame);
    * shift/scale: a random affine of up to ``shift`` (fraction of the frame) and 1 ± ``shift`` zoom,
      so the judge reads features where they are rather than at remembered pixels;
    * colour jitter (Animo's): read shape, not exact shading — generated frames are never exact.
    """
    n = len(image)
    if mirror is not None:
        flip = torch.rand(n, generator=g) < 0.5
        image = torch.where(flip[:, None, None, None], image.flip(-1), image)
        weights = torch.where(flip[:, None], weights[:, mirror], weights)
        angles = torch.where(flip[:, None], angles * angles.new_tensor([-1.0, 1.0, -1.0]), angles)
    if shift > 0:
        scale = 1 + shift * (torch.rand(n, generator=g) * 2 - 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift * (torch.rand(n, 2, generator=g) * 2 - 1)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        image = F.grid_sample(image, grid, padding_mode="border", align_corners=False)
    image = (image * (1 + jitter * (torch.rand(n, image.shape[1], 1, 1, generator=g) - 0.5))).clamp(0, 1)
    return image, weights, angles


class MorphRegressor(nn.Module):
    def __init__(self, n_morphs: int = 17, channels: int = 32, size: int = 64, dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = 3, size
        for i in range(4):
            c2 = channels * min(2**i, 4)
            layers += [nn.Conv2d(c, c2, 3, 2, 1), nn.BatchNorm2d(c2), nn.LeakyReLU(0.2)]
            c, s = c2, (s + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c * s * s, 256), nn.LeakyReLU(0.2),
                                  nn.Dropout(dropout), nn.Linear(256, n_morphs + 3))
        self.n_morphs = n_morphs

    def feature_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The activations after each of the 4 stages: the generator's perceptual features."""
        out, h = [], image * 2 - 1
        for i in range(0, len(self.features), 3):
            h = self.features[i + 2](self.features[i + 1](self.features[i](h)))
            out.append(h)
        return out

    def logits(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(image * 2 - 1))
        return out[:, : self.n_morphs], out[:, self.n_morphs:] * ANGLE_SCALE

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, S, S] in [0, 1] → (morphs [N, 17] in [0, 1], angles [N, 3] in degrees)."""
        logit, angles = self.logits(image)
        return torch.sigmoid(logit), angles


@torch.no_grad()
def read_morphs(reg: MorphRegressor, images: torch.Tensor, mirror: bool = True) -> torch.Tensor:
    """The judge's morph reading [N, 17] of images [N, 3, S, S] (in batches; ``reg`` in eval mode).

    ``mirror``: the mean of the reading of the image and of its mirror image (left and right morphs
    swapped back) — the judge trained on both, and averaging halves what either view gets wrong alone."""
    from tasks.common.morphs import ANIME_MORPH_NAMES

    swap = mirror_index(ANIME_MORPH_NAMES) if mirror and reg.n_morphs == len(ANIME_MORPH_NAMES) else None
    out = []
    for i in range(0, len(images), 32):
        x = images[i:i + 32]
        p = reg(x)[0].float()
        if swap is not None:
            p = (p + reg(x.flip(-1))[0].float()[:, swap]) / 2
        out.append(p)
    return torch.cat(out)


class RegressorRecipe:
    """Training of the judge: BCE on the morphs (active morphs weighted ``1 + active_weight``) + L1 on
    the angles, mirror and shift/scale augmentation, cosine learning rate, dropout in the head."""

    def __init__(self, frames, *, steps: int, batch: int, lr: float, channels: int, seed: int,
                 mirror: bool = True, shift: float = 0.1, active_weight: float = 4.0):
        from tasks.common.morphs import ANIME_MORPH_NAMES

        from .data import pose_of

        self.frames, self.steps, self.micro_batch, self.lr, self.channels, self.seed = frames, steps, batch, lr, channels, seed
        self.weights, self.angles = pose_of(frames.rows)
        self.mirror = mirror_index(ANIME_MORPH_NAMES) if mirror and self.weights.shape[1] == len(ANIME_MORPH_NAMES) else None
        self.shift, self.active_weight = shift, active_weight

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        return {"regressor": MorphRegressor(self.weights.shape[1], self.channels, self.frames.images.shape[-1])}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def schedule(self, name: str, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Cosine decay from ``lr`` to 0 over the run (a pure function of the step)."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / self.steps))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(0, len(self.weights), (self.micro_batch,), generator=g)
        img, w, a = augment(self.frames.float_images(idx), self.weights[idx], self.angles[idx], g,
                            mirror=self.mirror, shift=self.shift)
        return {"image": img.to(device), "weights": w.to(device), "angles": a.to(device)}

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        net = models["regressor"]
        logit, a = (net.module if hasattr(net, "module") else net).logits(batch["image"])
        # Cross-entropy against the soft weights, not L1: most targets are 0, and L1's optimum is
        # the median — a judge that always answers "neutral" (and a saturated sigmoid) — while
        # cross-entropy's is the mean and its gradient on the logit never vanishes.
        # Active morphs weigh 1 + active_weight: each is on in ~1 frame in 10, and unweighted the
        # cheapest answer is "neutral" everywhere.
        w = batch["weights"].float()
        per = F.binary_cross_entropy_with_logits(logit.float(), w, reduction="none")
        lw = (per * (1 + self.active_weight * (w > 0).float())).mean()
        la = F.l1_loss(a.float(), batch["angles"].float()) / ANGLE_SCALE
        mae = (torch.sigmoid(logit.detach().float()) - batch["weights"].float()).abs().mean()
        return lw + la, {"morph_mae": float(mae), "angle_mae_deg": float(la.detach()) * ANGLE_SCALE}


def perceptual_loss(judge: MorphRegressor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the judge's 4 stages of the L1 distance of its activations (each stage normalised
    by the target's mean absolute activation, so no stage dominates by scale)."""
    loss = pred.new_zeros(())
    with torch.no_grad():
        ft = judge.feature_maps(target)
    for fp, t in zip(judge.feature_maps(pred), ft):
        loss = loss + (fp - t).abs().mean() / t.abs().mean().clamp_min(1e-6)
    return loss / len(ft)


def validation_split(frames: AnimeFrames, fraction: float, seed: int) -> tuple[AnimeFrames, AnimeFrames]:
    """(fit, validation): a ``fraction`` of each identity's poses (never its basis frame) held out of
    the judge's training, so it can show which morphs it reads on renders it never saw."""
    rng = np.random.default_rng(seed)
    rows, val = frames.rows, set()
    for _, g in rows[rows.kind != "basis"].groupby("identity"):
        ids = sorted(g.pose_id.unique())
        k = int(round(fraction * len(ids)))
        val |= set(rng.choice(ids, size=k, replace=False).tolist()) if k else set()
    held = rows.pose_id.isin(val).to_numpy()
    return frames.subset(~held), frames.subset(held)


def neutral_sources(rows: pd.DataFrame, basis: AnimeFrames) -> list[int]:
    """For each row, the index in ``basis`` of its identity's neutral basis frame of the same style
    (the copy-source every reading is compared with)."""
    b = basis.rows
    neutral = {(r.identity, r["style"]): i for i, r in b[b.kind == "basis"].iterrows()
               if not np.any(np.asarray(r.weights))}
    missing = {(r.identity, r["style"]) for _, r in rows.iterrows()} - set(neutral)
    if missing:
        raise ValueError(f"no neutral basis frame for {sorted(missing)[:3]}: the copy-source is undefined")
    return [neutral[(r.identity, r["style"])] for _, r in rows.iterrows()]


def mirror_groups(names: list[str]) -> dict[str, list[int]]:
    """Morph indices by mirror group: ``eye_close_left`` and ``eye_close_right`` → ``eye_close``."""
    out: dict[str, list[int]] = {}
    for k, n in enumerate(names):
        stem, _, side = n.rpartition("_")
        out.setdefault(stem if side in ("left", "right") else n, []).append(k)
    return out


@dataclass
class Readability:
    """The judge's proof of reading, per mirror group of morphs, on renders it never trained on:
    mean |read − true| on the frames that change the morph, for the true render and for a copy of
    the identity's neutral frame; their ratio and its one-sided 95 % bootstrap upper bound."""

    names: list[str]  # group names
    changed: list[int]
    true_error: list[float]
    copy_error: list[float]
    ratio_upper: list[float]
    members: dict[str, list[str]]

    @classmethod
    def measure(cls, reg: "MorphRegressor", frames: AnimeFrames, basis: AnimeFrames, names: list[str],
                seed: int = 0) -> "Readability":
        from .data import pose_of

        w, _ = pose_of(frames.rows)
        true = (read_morphs(reg, frames.float_images(slice(None))) - w).abs().numpy()
        copy = (read_morphs(reg, basis.float_images(neutral_sources(frames.rows, basis))) - w).abs().numpy()
        ch = (w > CHANGED).numpy()
        rng = np.random.default_rng(seed)
        out = cls([], [], [], [], [], {})
        for group, cols in mirror_groups(names).items():
            t = np.concatenate([true[ch[:, k], k] for k in cols])
            c = np.concatenate([copy[ch[:, k], k] for k in cols])
            n = len(t)
            upper = float("nan")
            if n:
                draw = rng.integers(0, n, (BOOTSTRAP, n))
                upper = float(np.quantile(t[draw].mean(1) / np.maximum(c[draw].mean(1), 1e-9), 0.95))
            out.names.append(group)
            out.changed.append(n)
            out.true_error.append(float(t.mean()) if n else float("nan"))
            out.copy_error.append(float(c.mean()) if n else float("nan"))
            out.ratio_upper.append(upper)
            out.members[group] = [names[k] for k in cols]
        return out

    @property
    def ratio(self) -> list[float]:
        return [t / c if n and c > 0 else float("nan") for t, c, n in zip(self.true_error, self.copy_error, self.changed)]

    @property
    def readable(self) -> list[str]:
        """The morphs the judge reads: their group has enough changed frames and an error below
        READ_RATIO × copy's with 95 % confidence."""
        return [m for g, n, u in zip(self.names, self.changed, self.ratio_upper)
                if n >= MIN_CHANGED and u < READ_RATIO for m in self.members[g]]

    def to_json(self) -> dict:
        return {"read_ratio": READ_RATIO, "min_changed": MIN_CHANGED, "changed_above": CHANGED,
                "readable": self.readable,
                "per_group": {g: {"morphs": self.members[g], "changed": n, "true": round(t, 4), "copy": round(c, 4),
                                  "ratio": round(r, 3), "ratio_upper95": round(u, 3)}
                              for g, n, t, c, r, u in zip(self.names, self.changed, self.true_error, self.copy_error,
                                                          self.ratio, self.ratio_upper)}}
