"""The fair test of expression translation: scored on the anime side, against known answers.

Human expressions with ground-truth anime weights (:mod:`tasks.reenact.expressions`) are
translated by every method; errors are measured against the true anime weights:

* ``morph_mae`` — mean |p − p*| over the 17 anime morphs (and per morph, in its own table);
* ``eye_open_mm`` / ``mouth_open_mm`` — the error of the 4 eye openings (top–bottom lid) and 3 lip
  distances (upper–lower lip) **on the anime heads' geometry** (the landmarks of
  :func:`tasks.reenact.bridge.anime_landmarks`), mean |Δ| in mm over the test anime identities;
* ``anime_lmk_mm`` — mean landmark (frontal x, z) distance between the anime face for p and p*;
* ``leak_mm`` / ``leak_weight`` — on the distractor-only expressions (answer: neutral), how far
  the anime landmarks move (mm) and the summed morph weight the translator emits;
* secondary, in human space (what EDTN optimises): vertex error (mm) of p·B against the human
  expression on the test human heads.

The anime heads are linear in p, so every geometric error is a matrix product
(:class:`AnimeGeometry`). Methods: EDTN (one per training seed), **neutral** (p = 0),
**B⁻¹** (box least squares through the geometric bridge) and **Animo-style** (a bridge B_a fitted
by ridge least squares from a small subset of (human, anime) expression pairs — Animo's pose
mapping, one human expression per anime morph, covering some of the correspondences — applied
inversely the same way; ``animo_all_units``: the same fitted on pairs of every correspondence).

Uncertainty: 95 % intervals of each mean over **test expressions** (bootstrap of the
seed-averaged per-expression errors) and over **training seeds** (t-interval of the per-seed
means, for the methods a seed changes: EDTN's init and batches, Animo's fitting pairs), and the
same two intervals for the paired difference EDTN − baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.common.morphs import ANIME_MORPH_NAMES, MorphModel

from .bridge import EYE_PAIRS, LIP_PAIRS, ZX, anime_landmarks, linear_inverse

MM = 1000.0


@dataclass
class AnimeGeometry:
    """Per anime head: landmark motion per morph [K, L, 2], eye-opening [K, 4] and lip-distance
    [K, 3] change per unit morph weight (metres)."""

    lmk: np.ndarray  # [M, K, L, 2]
    eye: np.ndarray  # [M, K, 4]
    lip: np.ndarray  # [M, K, 3]

    @classmethod
    def from_models(cls, models: list[MorphModel]) -> "AnimeGeometry":
        lmk, eye, lip = [], [], []
        for m in models:
            idx = anime_landmarks(m).indices
            d = m.offsets[:, idx][:, :, ZX].astype(np.float64)  # [K, L, 2]: (x, z)
            lmk.append(d)
            eye.append(np.stack([d[:, t, 1] - d[:, b, 1] for t, b in EYE_PAIRS], 1))
            lip.append(np.stack([d[:, u, 1] - d[:, lo, 1] for u, lo in LIP_PAIRS], 1))
        return cls(np.stack(lmk), np.stack(eye), np.stack(lip))

    def errors(self, p: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
        """Per-expression errors [N] of predictions p [N, 17] against truth [N, 17], mean over heads."""
        d = np.asarray(p, np.float64) - np.asarray(truth, np.float64)
        lm = np.einsum("nk,mklc->mnlc", d, self.lmk)
        return {
            "morph_mae": np.abs(d).mean(1),
            "eye_open_mm": np.abs(np.einsum("nk,mkj->mnj", d, self.eye)).mean((0, 2)) * MM,
            "mouth_open_mm": np.abs(np.einsum("nk,mkj->mnj", d, self.lip)).mean((0, 2)) * MM,
            "anime_lmk_mm": np.linalg.norm(lm, axis=-1).mean((0, 2)) * MM,
        }


def fit_animo_bridge(human: np.ndarray, anime: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """B_a [17, 52] with human ≈ anime · B_a (ridge least squares over the fitting pairs); a morph
    no pair activates keeps a zero row (Animo cannot map what its subset never showed)."""
    P, E = np.asarray(anime, np.float64), np.asarray(human, np.float64)
    G = P.T @ P + ridge * np.eye(P.shape[1])
    Ba = np.linalg.solve(G, P.T @ E)
    Ba[~(P > 0).any(0)] = 0.0
    return Ba.astype(np.float32)


def translations(e: np.ndarray, edtn_preds: list[np.ndarray], B: np.ndarray,
                 animo_bridges: list[np.ndarray], animo_all: list[np.ndarray] | None = None) -> dict[str, list[np.ndarray]]:
    """method → predictions per seed ([N, 17] each); deterministic methods have one."""
    et = torch.as_tensor(e, dtype=torch.float32)
    out = {
        "edtn": list(edtn_preds),
        "neutral": [np.zeros((len(e), len(ANIME_MORPH_NAMES)), np.float32)],
        "B_inverse": [linear_inverse(et, torch.as_tensor(B)).numpy()],
        "animo_style": [linear_inverse(et, torch.as_tensor(Ba)).numpy() for Ba in animo_bridges],
    }
    if animo_all:
        out["animo_all_units"] = [linear_inverse(et, torch.as_tensor(Ba)).numpy() for Ba in animo_all]
    return out


def _boot(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of per-expression values [N]."""
    idx = rng.integers(0, len(values), (n_boot, len(values)))
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _seed_ci(per_seed: np.ndarray) -> tuple[float, float] | None:
    """95 % t-interval of the mean over seeds (None with one seed)."""
    from scipy import stats

    if len(per_seed) < 2:
        return None
    m, se = per_seed.mean(), per_seed.std(ddof=1) / np.sqrt(len(per_seed))
    h = float(stats.t.ppf(0.975, len(per_seed) - 1) * se)
    return float(m - h), float(m + h)


def summarise(per_method: dict[str, list[dict[str, np.ndarray]]], seed: int, n_boot: int = 2000) -> dict:
    """{method: {metric: {mean, expr_ci, seed_ci}}} plus paired differences EDTN − baseline."""
    rng = np.random.default_rng([seed, 303])
    out: dict = {"methods": {}, "edtn_minus": {}}
    for method, seeds in per_method.items():
        out["methods"][method] = {}
        for metric in seeds[0]:
            v = np.stack([s[metric] for s in seeds])  # [S, N]
            out["methods"][method][metric] = {"mean": float(v.mean()), "expr_ci": _boot(v.mean(0), rng, n_boot),
                                              "seed_ci": _seed_ci(v.mean(1)), "seeds": len(v)}
    edtn = per_method["edtn"]
    for method, seeds in per_method.items():
        if method == "edtn":
            continue
        out["edtn_minus"][method] = {}
        for metric in edtn[0]:
            ve = np.stack([s[metric] for s in edtn])
            vb = np.stack([s[metric] for s in seeds])
            # per-seed pairing when both vary with the seed (Animo's pairs), else each EDTN seed
            # against the one deterministic baseline
            per_seed = ve.mean(1) - (vb.mean(1) if len(vb) == len(ve) else vb.mean())
            d = ve.mean(0) - vb.mean(0)
            out["edtn_minus"][method][metric] = {"mean": float(d.mean()), "expr_ci": _boot(d, rng, n_boot),
                                                 "seed_ci": _seed_ci(per_seed)}
    return out


def per_morph_mae(per_method_preds: dict[str, list[np.ndarray]], truth: np.ndarray) -> dict[str, list[float]]:
    """method → mean |p − p*| per anime morph (averaged over seeds)."""
    return {m: np.mean([np.abs(p - truth).mean(0) for p in preds], 0).tolist() for m, preds in per_method_preds.items()}


def evaluate(e: np.ndarray, truth: np.ndarray, distractor_only: np.ndarray, preds: dict[str, list[np.ndarray]],
             geom: AnimeGeometry, seed: int, n_boot: int = 2000) -> dict:
    """Scores every method on the unit combinations (errors) and on the distractor-only
    expressions (leakage); returns the summaries, the per-morph table and raw means."""
    combos, dis = ~distractor_only, distractor_only
    errs = {m: [geom.errors(p[combos], truth[combos]) for p in ps] for m, ps in preds.items()}
    leaks = {}
    for m, ps in preds.items():
        leaks[m] = []
        for p in ps:
            g = geom.errors(p[dis], np.zeros_like(p[dis]))
            leaks[m].append({"leak_mm": g["anime_lmk_mm"], "leak_weight": p[dis].sum(1).astype(np.float64)})
    return {
        "combinations": summarise(errs, seed, n_boot),
        "distractors": summarise(leaks, seed, n_boot) if dis.any() else None,
        "per_morph_mae": per_morph_mae({m: [p[combos] for p in ps] for m, ps in preds.items()}, truth[combos]),
        "n_combinations": int(combos.sum()), "n_distractor_only": int(dis.sum()),
    }
