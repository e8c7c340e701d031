"""Evaluation tools trained here: the identity encoder and the attribute regressor.

* **Identity encoder** E_id: a CNN → 128-D unit vector, trained with ArcFace's additive angular
  margin loss (cos(θ_y + m), scale s) over the training identities. Every frame of an identity
  has its own skin, hair, lights, background, expression and pose, so the only thing a frame
  shares with its identity's other frames is face shape — which is what E_id must learn. It sees
  the face region only (the image times its dilated face mask: hair and backdrop are nuisance
  that 4 frames per identity cannot teach it to ignore). Measured on the default set (800 steps,
  held-out identities, 10-fold accuracy / AUC): whole image 0.633 / 0.634, face region 0.716 /
  0.736. Flip, colour-gain and grey augmentation on top scored 0.747 at 800 steps but at 1500
  steps collapsed every embedding onto one direction (ArcFace loss stuck at 3.9, pairwise cosines
  within 1e-6 of 1: verification still read 0.715 off the residue, every identity column of the
  report read 1.000), so it is not used. Every embedding is also centred: the mean raw embedding
  of the training frames is subtracted before normalising (a ReLU network's outputs share one
  positive direction, so an untrained or briefly trained encoder puts every face at cosine ≈ 1;
  what tells identities apart is the residue around that mean), and the tools step refuses an
  encoder whose held-out different-identity cosine is still above 0.95. It is checked on
  held-out (test) identities by verification accuracy under LFW's protocol: 10 folds of
  same/different pairs, the threshold chosen on nine, accuracy on the tenth (a threshold
  chosen on training identities fits memorised embeddings: 0.50 held out).
* **Attribute regressor** A: a CNN → every label a swap must keep from the target (expression
  52, pose 3, light direction 3, light colour 3, skin 3, hair colour 3) and the source's shape
  (P), trained by MSE on labels standardised with the training set's mean/std. It first proves
  it reads true renders (test-identity R² per group) before it judges swaps.

Both are used the same way for every method (``load_tools(dir)``): the swap methods use E_id
as their identity feature and identity loss (ArcFace plays this part in the papers), and the
evaluation uses E_id, A and dlib's descriptor (the independent check: an identity loss on E_id
cannot game dlib).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from tasks.common.artifacts import read_json, write_json
from tasks.common.training import seeded_generator

from .dataset import FaceSet
from .networks import ConvEncoder

ID_DIM = 128
#: attribute groups the regressor predicts, in output order, with their label field
ATTRIBUTES: tuple[str, ...] = ("expression", "pose", "light_dir", "light_color", "skin", "hair_color", "shape")


def _to_tensor(faces: FaceSet, idx: np.ndarray, resolution: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(faces.images[idx])).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    return x


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random shifts (±3 px) so the encoders do not key on exact pixel positions."""
    n = x.shape[0]
    dx, dy = (torch.randint(-3, 4, (2, n), generator=gen)).tolist()
    return torch.stack([torch.roll(x[i], (dy[i], dx[i]), (1, 2)) for i in range(n)])


def face_region(images: torch.Tensor, masks: torch.Tensor, resolution: int) -> torch.Tensor:
    """What E_id sees: images [N, 3, R, R] resized to ``resolution``, times the face masks
    [N, 1, R', R'] (> 0.5 = face) dilated by ~5 px per 64 px, so the outline of the face and no hair
    or backdrop is in view."""
    if images.shape[-1] != resolution:
        images = F.interpolate(images, size=(resolution, resolution), mode="area")
    m = masks.to(images.device, images.dtype)
    if m.ndim == 3:
        m = m[:, None]
    if m.shape[-1] != resolution:
        m = F.interpolate(m, size=(resolution, resolution), mode="area")
    k = 2 * max(1, round(2.5 * resolution / 64)) + 1
    return images * (F.max_pool2d((m > 0.25).to(images.dtype), k, 1, k // 2))


class ArcMargin(nn.Module):
    """ArcFace head: logits s·cos(θ_j), with cos(θ_y + m) for the true class y."""

    def __init__(self, dim: int, classes: int, s: float = 16.0, m: float = 0.3):
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(z) @ F.normalize(self.w).T
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        target = torch.cos(theta + self.m)
        onehot = F.one_hot(y, cos.shape[1]).bool()
        return self.s * torch.where(onehot, target, cos)


class IdentityRecipe:
    """Engine recipe: E_id + ArcFace head over the training identities."""

    def __init__(self, faces: FaceSet, *, steps: int, batch: int, resolution: int, width: int, lr: float, seed: int):
        self.images, self.masks = faces.images, faces.masks
        ids, self.labels = np.unique(faces.identity, return_inverse=True)
        self.classes = len(ids)
        self.steps, self.micro_batch = steps, batch
        self.resolution, self.width, self.lr, self.seed = resolution, width, lr, seed

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        enc = ConvEncoder(ID_DIM, self.width, self.resolution)
        enc.arc = ArcMargin(ID_DIM, self.classes)
        return {"identity": enc}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def schedule(self, name: str, opt: torch.optim.Optimizer, step: int) -> None:
        for g in opt.param_groups:  # cosine decay to 5 %
            g["lr"] = self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / self.steps)))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(len(self.images), (self.micro_batch,), generator=g).numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2).float() / 255.0
        x = _jitter(face_region(x, torch.from_numpy(self.masks[idx]), self.resolution), g)
        return {"x": x.to(device), "y": torch.as_tensor(self.labels[idx], device=device)}

    def loss(self, name, models, batch, cache, step):
        enc = models["identity"]
        z = enc(batch["x"])
        logits = enc.arc(z, batch["y"]) if hasattr(enc, "arc") else enc.module.arc(z, batch["y"])
        loss = F.cross_entropy(logits, batch["y"])
        return loss, {"arcface": float(loss.detach())}


class AttributeRecipe:
    """Engine recipe: the attribute regressor A on standardised labels."""

    def __init__(self, faces: FaceSet, *, steps: int, batch: int, resolution: int, width: int, lr: float, seed: int):
        self.images = faces.images
        self.targets = np.concatenate([getattr(faces, a).reshape(len(faces), -1) for a in ATTRIBUTES], 1).astype(np.float32)
        self.mean = self.targets.mean(0)
        self.std = self.targets.std(0) + 1e-3
        self.steps, self.micro_batch = steps, batch
        self.resolution, self.width, self.lr, self.seed = resolution, width, lr, seed

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed + 1)
        return {"attributes": ConvEncoder(self.targets.shape[1], self.width, self.resolution)}

    def optimizer(self, name, module):
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def schedule(self, name, opt, step):
        for g in opt.param_groups:
            g["lr"] = self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / self.steps)))

    def batch(self, step, rank, device):
        g = seeded_generator(self.seed + 7, step, rank)
        idx = torch.randint(len(self.images), (self.micro_batch,), generator=g).numpy()
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="area")
        y = (self.targets[idx] - self.mean) / self.std
        return {"x": x.to(device), "y": torch.as_tensor(y, device=device)}

    def loss(self, name, models, batch, cache, step):
        loss = F.mse_loss(models["attributes"](batch["x"]), batch["y"])
        return loss, {"mse": float(loss.detach())}


@dataclass
class EvalTools:
    """The trained identity encoder and attribute regressor, frozen, on one device."""

    identity_net: ConvEncoder
    attribute_net: ConvEncoder
    resolution: int
    mean: torch.Tensor
    std: torch.Tensor
    sizes: dict[str, int]
    threshold: float  # cosine-similarity verification threshold (best on held-out pairs; informational)
    #: the expression blendshapes A reads on held-out renders (the expression columns score only these)
    expression_dims: np.ndarray | None = None
    #: E_id's mean raw embedding over the training frames, subtracted before normalising (None: 0)
    center: torch.Tensor | None = None

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.mean.device, torch.float32)
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="area")
        return images

    def identity(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Unit identity vectors [N, 128] of images [N, 3, R, R] in [0, 1] (differentiable), read
        from the face region ``masks`` [N, 1, R', R'] (a swap: its target's face region)."""
        images = images.to(self.mean.device, torch.float32)
        z = self.identity_net(face_region(images, masks, self.resolution))
        return F.normalize(z if self.center is None else z - self.center, dim=-1)

    def attributes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Regressed labels of images [N, 3, R, R]: {expression, pose, light_dir, light_color, skin,
        hair_color, shape} in label units (differentiable)."""
        out = self.attribute_net(self._prep(images)) * self.std + self.mean
        res, i = {}, 0
        for a in ATTRIBUTES:
            res[a] = out[:, i:i + self.sizes[a]]
            i += self.sizes[a]
        return res

    def to(self, device: Any) -> "EvalTools":
        self.identity_net.to(device)
        self.attribute_net.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        if self.center is not None:
            self.center = self.center.to(device)
        return self


@torch.no_grad()
def embedding_center(identity_net: nn.Module, faces: FaceSet, resolution: int, batch: int = 128) -> np.ndarray:
    """E_id's mean raw (unnormalised) embedding over ``faces`` — the centre ``EvalTools.identity``
    subtracts. Computed once on the training frames, frozen with the tools."""
    identity_net.eval()
    total = torch.zeros(ID_DIM, dtype=torch.float64)
    for i in range(0, len(faces), batch):
        idx = np.arange(i, min(i + batch, len(faces)))
        x = face_region(_to_tensor(faces, idx, resolution), torch.from_numpy(faces.masks[idx]), resolution)
        total += identity_net(x).double().sum(0)
    return (total / len(faces)).float().numpy()


def save_tools(out: Path, identity_net: nn.Module, attribute_net: nn.Module, *, resolution: int, width: int,
               mean: np.ndarray, std: np.ndarray, sizes: dict[str, int], threshold: float, extra: dict,
               center: np.ndarray | None = None) -> None:
    """Freeze both networks under ``out``; ``center``: E_id's training-set mean embedding
    (``embedding_center``; None leaves embeddings uncentred)."""
    id_state = {k: v for k, v in identity_net.state_dict().items() if not k.startswith("arc.")}
    save_file({k: v.detach().cpu().contiguous() for k, v in id_state.items()}, str(out / "identity.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in attribute_net.state_dict().items()},
              str(out / "attributes.safetensors"))
    write_json(out / "tools.json", {"resolution": resolution, "width": width, "mean": mean.tolist(), "std": std.tolist(),
                                    "sizes": sizes, "threshold": threshold,
                                    "center": None if center is None else np.asarray(center, float).tolist(), **extra})


def load_tools(path: Path | str, device: Any = "cpu") -> EvalTools:
    """The frozen tools under ``path`` (``identity.safetensors``, ``attributes.safetensors``, ``tools.json``)."""
    path = Path(path)
    meta = read_json(path / "tools.json")
    r, w, sizes = meta["resolution"], meta["width"], meta["sizes"]
    ident = ConvEncoder(ID_DIM, w, r)
    ident.load_state_dict(load_file(str(path / "identity.safetensors")))
    attr = ConvEncoder(sum(sizes.values()), w, r)
    attr.load_state_dict(load_file(str(path / "attributes.safetensors")))
    for net in (ident, attr):
        net.eval().requires_grad_(False)
    dims = meta.get("expression_dims")
    tools = EvalTools(ident, attr, r, torch.tensor(meta["mean"]), torch.tensor(meta["std"]), sizes, meta["threshold"],
                      None if dims is None else np.asarray(dims, dtype=int),
                      None if meta.get("center") is None else torch.tensor(meta["center"], dtype=torch.float32))
    return tools.to(device)


# ------------------------------------------------------------------------------ checks


@torch.no_grad()
def embed(tools: EvalTools, faces: FaceSet, batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(faces), batch):
        idx = np.arange(i, min(i + batch, len(faces)))
        out.append(tools.identity(_to_tensor(faces, idx, tools.resolution), torch.from_numpy(faces.masks[idx])))
    return torch.cat(out)


def verification_pairs(identity: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n same-identity and n different-identity frame pairs: (i, j, same)."""
    r = np.random.default_rng(seed)
    by_id = {k: np.flatnonzero(identity == k) for k in np.unique(identity)}
    multi = [k for k, v in by_id.items() if len(v) > 1]
    i_s, j_s = [], []
    for _ in range(n):
        k = multi[r.integers(len(multi))]
        a, b = r.choice(by_id[k], 2, replace=False)
        i_s.append(a), j_s.append(b)
    i_d, j_d = [], []
    while len(i_d) < n:
        a, b = r.integers(len(identity), size=2)
        if identity[a] != identity[b]:
            i_d.append(a), j_d.append(b)
    i = np.array(i_s + i_d)
    j = np.array(j_s + j_d)
    return i, j, np.r_[np.ones(n, bool), np.zeros(n, bool)]


def best_threshold(sim: np.ndarray, same: np.ndarray) -> float:
    cands = np.unique(sim)
    accs = [((sim >= t) == same).mean() for t in cands]
    return float(cands[int(np.argmax(accs))])


def verification_accuracy(sim: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(((sim >= threshold) == same).mean())


def cross_validated_accuracy(sim: np.ndarray, same: np.ndarray, *, folds: int = 10, seed: int = 0) -> float:
    """LFW's protocol: pairs split into ``folds``; each fold scored at the threshold best on the others."""
    fold = np.random.default_rng(seed).permutation(len(sim)) % folds
    accs = [verification_accuracy(sim[fold == k], same[fold == k], best_threshold(sim[fold != k], same[fold != k]))
            for k in range(folds)]
    return float(np.mean(accs))


@torch.no_grad()
def _read_attributes(tools: EvalTools, faces: FaceSet, batch: int = 128) -> dict[str, np.ndarray]:
    preds: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES}
    for i in range(0, len(faces), batch):
        out = tools.attributes(_to_tensor(faces, np.arange(i, min(i + batch, len(faces))), tools.resolution))
        for a in ATTRIBUTES:
            preds[a].append(out[a].cpu())
    return {a: torch.cat(v).numpy() for a, v in preds.items()}


def _r2(p: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """R² of the group (1 − ΣSSE / ΣSST over dimensions that vary) and per dimension (NaN where constant)."""
    var = y.var(0)
    keep = var > 1e-8
    sse = ((p - y) ** 2).mean(0)
    group = float(1 - sse[keep].sum() / var[keep].sum()) if keep.any() else float("nan")
    return group, np.where(keep, 1 - sse / np.where(keep, var, 1.0), np.nan)


def attribute_r2(tools: EvalTools, faces: FaceSet, batch: int = 128) -> dict[str, float]:
    """R² per attribute group of the regressor on ``faces`` (1 = perfect, 0 = predicting the mean)."""
    read = _read_attributes(tools, faces, batch)
    return {a: _r2(read[a], getattr(faces, a).reshape(len(faces), -1))[0] for a in ATTRIBUTES}


def readable_expression_dims(tools: EvalTools, faces: FaceSet, min_r2: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The ARKit blendshapes the regressor reads on ``faces`` with R² ≥ ``min_r2`` (None: all), and every one's R²."""
    per_dim = _r2(_read_attributes(tools, faces)["expression"], faces.expression.reshape(len(faces), -1))[1]
    if min_r2 is None:
        return np.arange(len(per_dim)), per_dim
    return np.flatnonzero(np.nan_to_num(per_dim, nan=-np.inf) >= min_r2), per_dim
