"""Source-attribute leakage: how much of the *source's* pose, expression, lighting and hair shows up
in a swap (the failure RobustSwap's latent choice is meant to prevent).

A swap should carry every non-identity attribute of the target. For each attribute group g and
each pair i, the flow's attribute regressor A reads â_i = A(swap_i); with the target's labels t_i
and the source's s_i (standardised by A's training mean/std, so every dimension counts alike) the
**leakage coefficient** is the share of the way from target to source that the reading went:

    λ_g = Σ_i ⟨â_i − t_i, s_i − t_i⟩ / Σ_i ‖s_i − t_i‖²

(a ratio of sums, so pairs whose source and target nearly agree add little weight instead of
noise). λ = 0: no leakage (the reading sits at the target's labels, or off the source–target
line); λ = 1: the attribute is the source's. Alongside: the share of pairs whose reading is
closer to the source's label than to the target's, and a bootstrap 95 % interval of λ over pairs.
Reading the ground-truth swaps the same way gives the regressor's own floor (≈ 0); reading the
source images gives ≈ 1. Ours: the coefficient and the groups (the paper names the attributes,
not a measure).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: attribute groups and the regressor outputs / label fields that make them up
LEAK_GROUPS: dict[str, tuple[str, ...]] = {
    "pose": ("pose",),
    "expression": ("expression",),
    "lighting": ("light_dir", "light_color"),
    "hair": ("hair_color",),
    "skin": ("skin",),
}


def _standardised(values: dict[str, torch.Tensor], tools: Any, fields: tuple[str, ...]) -> np.ndarray:
    """Concatenate ``fields`` of ``values`` and standardise them with the regressor's label mean/std."""
    from tasks.faceswap.tools import ATTRIBUTES

    offsets, i = {}, 0
    for a in ATTRIBUTES:
        offsets[a] = (i, i + tools.sizes[a])
        i += tools.sizes[a]
    mean, std = tools.mean.cpu().numpy(), tools.std.cpu().numpy()
    cols = []
    for f in fields:
        a, b = offsets[f]
        v = np.asarray(values[f].detach().cpu() if torch.is_tensor(values[f]) else values[f], dtype=np.float64)
        z = (v.reshape(len(v), -1) - mean[a:b]) / std[a:b]
        dims = getattr(tools, "expression_dims", None) if f == "expression" else None
        cols.append(z if dims is None else z[:, dims])  # only the blendshapes the regressor reads
    return np.concatenate(cols, 1)


def leakage_coefficients(read: np.ndarray, source: np.ndarray, target: np.ndarray, *, boot: int = 1000,
                         seed: int = 0) -> dict[str, float]:
    """λ (ratio of sums), its bootstrap 95 % interval over pairs, and the closer-to-source share."""
    d = source - target
    num = ((read - target) * d).sum(1)
    den = (d * d).sum(1)
    lam = float(num.sum() / max(den.sum(), 1e-12))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(boot, len(num)))
    bs = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    closer = (np.linalg.norm(read - source, axis=1) < np.linalg.norm(read - target, axis=1)).mean()
    return {"leak": lam, "leak_lo": float(np.percentile(bs, 2.5)), "leak_hi": float(np.percentile(bs, 97.5)),
            "closer_to_source": float(closer)}


@torch.no_grad()
def source_leakage(tools: Any, swapped: torch.Tensor, source: dict[str, Any], target: dict[str, Any], *,
                   groups: dict[str, tuple[str, ...]] = LEAK_GROUPS, batch: int = 128, seed: int = 0) -> dict[str, dict[str, float]]:
    """Leakage per attribute group of swaps ``swapped`` [N, 3, R, R] in [0, 1].

    ``tools`` is the flow's :class:`tasks.faceswap.tools.EvalTools`; ``source`` / ``target`` map
    label names (``pose``, ``expression``, ``light_dir``, ``light_color``, ``hair_color``, ``skin``)
    to arrays [N, ...] of the pair's source and target frames (a FaceBatch's fields, or FaceSet rows).
    """
    reads: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(swapped), batch):
        for k, v in tools.attributes(swapped[i : i + batch]).items():
            reads.setdefault(k, []).append(v.cpu())
    read = {k: torch.cat(v) for k, v in reads.items()}
    out = {}
    for g, fields in groups.items():
        out[g] = leakage_coefficients(_standardised(read, tools, fields), _standardised(source, tools, fields),
                                      _standardised(target, tools, fields), seed=seed)
    return out


def labels_of(batch: Any, fields: tuple[str, ...] = ("pose", "expression", "light_dir", "light_color", "hair_color", "skin")) -> dict[str, Any]:
    """The label fields of a FaceBatch (or FaceSet rows) as a dict for :func:`source_leakage`."""
    return {f: getattr(batch, f) for f in fields}


@torch.no_grad()
def per_pair_leakage(tools: Any, swapped: torch.Tensor, source: dict[str, Any], target: dict[str, Any], *,
                     groups: dict[str, tuple[str, ...]] = LEAK_GROUPS, batch: int = 128) -> dict[str, np.ndarray]:
    """Per-pair columns for the flow's per-pair table (``Judge.score``): ``leak_<group>`` = 1 where the
    swap's regressed attribute is closer to the source's label than to the target's, else 0 (its mean
    over pairs is the closer-to-source share; bootstrap it like any other column)."""
    reads: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(swapped), batch):
        for k, v in tools.attributes(swapped[i : i + batch]).items():
            reads.setdefault(k, []).append(v.cpu())
    read = {k: torch.cat(v) for k, v in reads.items()}
    out = {}
    for g, fields in groups.items():
        a, s, t = (_standardised(x, tools, fields) for x in (read, source, target))
        out[f"leak_{g}"] = ((np.linalg.norm(a - s, axis=1) < np.linalg.norm(a - t, axis=1)).astype(float) if a.shape[1]
                            else np.full(len(a), np.nan))  # n/a: nothing of the group is readable
    return out
