"""Human expressions with known anime answers, and the natural expressions EDTN trains on.

EDTN (METHODS.md §4) is judged here on the *anime* side, which needs human driving expressions
whose correct anime morphs are known. They are built from **semantic correspondences**
(:data:`UNITS`): a unit is one anime morph and the ARKit recipe that means the same thing on a
human face (``eyeBlinkLeft`` ↔ ``eye_close_left``; ``jawOpen`` + ``mouthFunnel`` ↔ ``mouth_o``; …).
A test expression is 1–3 compatible units at random intensities s ∈ [s_min, 1] — human side
Σ s·recipe, anime side Σ s·label — plus, in part of the set, **distractors** (:data:`DISTRACTORS`:
gaze, cheek puff, sideways jaw and mouth, tongue), ARKit shapes no anime morph can express, which
a good translator ignores; a separate set is distractors only (anime answer: neutral).

:func:`oracle` reads the units back out of any human vector (non-negative least squares on the
recipes' coordinates, which no distractor touches) and returns their anime labels: it is the
ground truth as a function, and the tests pin it (a blink gives ``eye_close_*`` and nothing else;
a distractor moves no anime morph).

What EDTN trains on never comes from here: :func:`sample_natural` draws **natural** expressions —
correlated actions as faces move (both eyes blink together, a smile raises the cheeks and squints
the eyes, vowels open the jaw, brows move as a pair, gaze and head-driven shapes wander freely),
each with its own random co-activation weights and a sparse uniform residue on every other
shape — and anime labels are never used by EDTN. The test set is drawn from its own seed stream
(:func:`scored_set`); :func:`animo_pairs` draws the few (human, anime) pairs the Animo-style
baseline is fitted on from a third stream, so the pairs scored are never the pairs fitted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.common.morphs import ANIME_MORPH_NAMES, HUMAN_MORPH_NAMES

H = {n: i for i, n in enumerate(HUMAN_MORPH_NAMES)}
A = {n: i for i, n in enumerate(ANIME_MORPH_NAMES)}

#: unit → (anime label at intensity 1, human ARKit recipe at intensity 1)
UNITS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "blink_left": ({"eye_close_left": 1}, {"eyeBlinkLeft": 1}),
    "blink_right": ({"eye_close_right": 1}, {"eyeBlinkRight": 1}),
    "happy_eye_left": ({"eye_smile_left": 1}, {"eyeSquintLeft": 1, "cheekSquintLeft": 1}),
    "happy_eye_right": ({"eye_smile_right": 1}, {"eyeSquintRight": 1, "cheekSquintRight": 1}),
    "wide_left": ({"eye_wide_left": 1}, {"eyeWideLeft": 1}),
    "wide_right": ({"eye_wide_right": 1}, {"eyeWideRight": 1}),
    "brow_raise": ({"brow_raise": 1}, {"browInnerUp": 1, "browOuterUpLeft": 1, "browOuterUpRight": 1}),
    "brow_angry": ({"brow_angry": 1}, {"browDownLeft": 1, "browDownRight": 1}),
    "brow_sad": ({"brow_sad": 1}, {"browInnerUp": 1}),
    "smile": ({"mouth_smile": 1}, {"mouthSmileLeft": 1, "mouthSmileRight": 1}),
    "frown": ({"mouth_frown": 1}, {"mouthFrownLeft": 1, "mouthFrownRight": 1}),
    "vowel_a": ({"mouth_a": 1}, {"jawOpen": 1}),
    "vowel_i": ({"mouth_i": 1}, {"mouthStretchLeft": 1, "mouthStretchRight": 1, "jawOpen": 0.1}),
    "vowel_u": ({"mouth_u": 1}, {"mouthPucker": 1}),
    "vowel_e": ({"mouth_e": 1}, {"jawOpen": 0.3, "mouthLowerDownLeft": 0.7, "mouthLowerDownRight": 0.7,
                                 "mouthStretchLeft": 0.3, "mouthStretchRight": 0.3}),
    "vowel_o": ({"mouth_o": 1}, {"jawOpen": 0.5, "mouthFunnel": 1}),
}
UNIT_NAMES = list(UNITS)
#: ARKit shapes no anime morph expresses: gaze, cheek puff, sideways / forward jaw and mouth, tongue
DISTRACTORS: list[str] = [n for n in HUMAN_MORPH_NAMES if n.startswith("eyeLook")] + [
    "cheekPuff", "jawLeft", "jawRight", "jawForward", "mouthLeft", "mouthRight", "tongueOut"]
#: units of which an expression holds at most one (they shape the same anime feature: the
#: animeceleb sampler's exclusive groups, by the units' anime labels)
EXCLUSIVE_UNITS: list[set[str]] = [
    {"blink_left", "happy_eye_left", "wide_left"},
    {"blink_right", "happy_eye_right", "wide_right"},
    {"brow_raise", "brow_angry", "brow_sad"},
    {"smile", "frown"},
    {"vowel_a", "vowel_i", "vowel_u", "vowel_e", "vowel_o"},
]


def unit_matrices() -> tuple[np.ndarray, np.ndarray]:
    """(labels L [U, 17], recipes R [U, 52]) of the units at intensity 1."""
    L = np.zeros((len(UNITS), len(A)), np.float32)
    R = np.zeros((len(UNITS), len(H)), np.float32)
    for u, (anime, human) in enumerate(UNITS.values()):
        for k, v in anime.items():
            L[u, A[k]] = v
        for k, v in human.items():
            R[u, H[k]] = v
    return L, R


def recipe_columns() -> np.ndarray:
    """The ARKit coordinates some recipe uses (none of them is a distractor)."""
    return np.flatnonzero(unit_matrices()[1].any(0))


def oracle(e: np.ndarray | torch.Tensor, iters: int = 3000) -> np.ndarray:
    """Ground-truth anime weights [N, 17] of human expressions [N, 52]: unit intensities by
    non-negative least squares on the recipe coordinates (distractor coordinates are ignored:
    no recipe uses them), mapped through the units' labels and clipped to [0, 1]."""
    from .bridge import box_ridge

    e = np.asarray(e, np.float64).reshape(-1, len(H))
    L, R = unit_matrices()
    cols = recipe_columns()
    s = box_ridge(R[:, cols], e[:, cols], 1e-12, lo=0.0, hi=np.inf, iters=iters)  # s [N, U]
    return np.clip(s @ L, 0.0, 1.0).astype(np.float32)


def _compatible(rng: np.random.Generator, k: int) -> list[str]:
    chosen: list[str] = []
    for u in rng.permutation(UNIT_NAMES):
        if len(chosen) >= k:
            break
        if any(u in g and g & set(chosen) for g in EXCLUSIVE_UNITS):
            continue
        chosen.append(str(u))
    return chosen


@dataclass
class ExpressionSet:
    """Human expressions, their true anime weights, and which are distractor-only."""

    human: np.ndarray  # [N, 52]
    anime: np.ndarray  # [N, 17]
    distractor_only: np.ndarray  # [N] bool
    units: list[list[str]]

    def __len__(self) -> int:
        return len(self.human)


def compose(rng: np.random.Generator, n: int, *, max_units: int = 3, distractor_share: float = 0.5,
            max_distractors: int = 2, s_min: float = 0.2, only_distractors: bool = False) -> ExpressionSet:
    """``n`` expressions: 1..max_units compatible units at U(s_min, 1) each (none when
    ``only_distractors``), and in ``distractor_share`` of them 1..max_distractors distractors."""
    L, R = unit_matrices()
    e = np.zeros((n, len(H)), np.float32)
    p = np.zeros((n, len(A)), np.float32)
    names: list[list[str]] = []
    for i in range(n):
        units = [] if only_distractors else _compatible(rng, int(rng.integers(1, max_units + 1)))
        for u in units:
            s = rng.uniform(s_min, 1.0)
            e[i] += s * R[UNIT_NAMES.index(u)]
            p[i] += s * L[UNIT_NAMES.index(u)]
        if only_distractors or rng.random() < distractor_share:
            for d in rng.choice(DISTRACTORS, size=int(rng.integers(1, max_distractors + 1)), replace=False):
                e[i, H[str(d)]] = rng.uniform(s_min, 1.0)
        names.append(units)
    return ExpressionSet(np.clip(e, 0, 1), np.clip(p, 0, 1), np.full(n, only_distractors), names)


#: seed streams: test expressions, Animo's fitting pairs and EDTN's natural samples never share draws
TEST_STREAM, ANIMO_STREAM = 101, 202


def scored_set(n: int, n_distractor_only: int, seed: int) -> ExpressionSet:
    """The scored set: ``n`` unit combinations (half with distractors) + distractor-only ones."""
    rng = np.random.default_rng([seed, TEST_STREAM])
    a = compose(rng, n)
    b = compose(rng, n_distractor_only, only_distractors=True, max_distractors=3)
    return ExpressionSet(np.concatenate([a.human, b.human]), np.concatenate([a.anime, b.anime]),
                         np.concatenate([a.distractor_only, b.distractor_only]), a.units + b.units)


def animo_pairs(n: int, seed: int, units: int | None = None) -> ExpressionSet:
    """The subset of (human, anime) expression pairs the Animo-style mapping is fitted on: single
    units (Animo's pose mapping gives each anime morph one 3DMM expression) at random intensity,
    each performed with a little co-activation noise on the other shapes, as a person would.
    ``units``: how many of the correspondences the subset covers (a random choice per seed; None =
    all) — Animo's mapping "relies on a subset of expressions, which limits what can be mapped"."""
    rng = np.random.default_rng([seed, ANIMO_STREAM])
    L, R = unit_matrices()
    shown = rng.permutation(len(UNITS))[: units or len(UNITS)]
    order = np.concatenate([rng.permutation(shown) for _ in range(-(-n // len(shown)))])[:n]  # each shown unit
    s = rng.uniform(0.5, 1.0, (n, 1))  # once n >= 16
    noise = rng.uniform(0, 0.05, (n, len(H))) * (rng.random((n, len(H))) < 0.2)
    return ExpressionSet(np.clip(s * R[order] + noise, 0, 1).astype(np.float32), (s * L[order]).astype(np.float32),
                         np.zeros(n, bool), [[UNIT_NAMES[u]] for u in order])


# ------------------------------------------------------------------------ natural training expressions

#: natural actions: (ARKit shapes moved together, their relative weight ranges)
ACTIONS: list[dict[str, tuple[float, float]]] = [
    {"eyeBlinkLeft": (0.9, 1.0), "eyeBlinkRight": (0.9, 1.0), "eyeSquintLeft": (0.0, 0.3), "eyeSquintRight": (0.0, 0.3)},
    {"eyeBlinkLeft": (0.8, 1.0), "eyeSquintLeft": (0.0, 0.4), "cheekSquintLeft": (0.0, 0.3)},  # wink
    {"eyeBlinkRight": (0.8, 1.0), "eyeSquintRight": (0.0, 0.4), "cheekSquintRight": (0.0, 0.3)},
    {"mouthSmileLeft": (0.7, 1.0), "mouthSmileRight": (0.7, 1.0), "cheekSquintLeft": (0.3, 0.9),
     "cheekSquintRight": (0.3, 0.9), "eyeSquintLeft": (0.1, 0.7), "eyeSquintRight": (0.1, 0.7), "mouthDimpleLeft": (0.0, 0.4),
     "mouthDimpleRight": (0.0, 0.4)},
    {"mouthSmileLeft": (0.6, 1.0), "mouthDimpleLeft": (0.0, 0.5), "cheekSquintLeft": (0.0, 0.5)},  # smirk
    {"mouthFrownLeft": (0.7, 1.0), "mouthFrownRight": (0.7, 1.0), "mouthShrugLower": (0.0, 0.6), "browDownLeft": (0.0, 0.3),
     "browDownRight": (0.0, 0.3)},
    {"browInnerUp": (0.6, 1.0), "browOuterUpLeft": (0.5, 1.0), "browOuterUpRight": (0.5, 1.0), "eyeWideLeft": (0.0, 0.6),
     "eyeWideRight": (0.0, 0.6)},  # surprise
    {"browDownLeft": (0.7, 1.0), "browDownRight": (0.7, 1.0), "noseSneerLeft": (0.0, 0.5), "noseSneerRight": (0.0, 0.5),
     "eyeSquintLeft": (0.0, 0.4), "eyeSquintRight": (0.0, 0.4)},  # anger
    {"browInnerUp": (0.7, 1.0), "mouthFrownLeft": (0.0, 0.5), "mouthFrownRight": (0.0, 0.5)},  # sadness
    {"eyeWideLeft": (0.7, 1.0), "eyeWideRight": (0.7, 1.0), "browInnerUp": (0.0, 0.5)},
    {"jawOpen": (0.5, 1.0), "mouthLowerDownLeft": (0.0, 0.5), "mouthLowerDownRight": (0.0, 0.5), "mouthUpperUpLeft": (0.0, 0.3),
     "mouthUpperUpRight": (0.0, 0.3)},  # "ah"
    {"jawOpen": (0.2, 0.6), "mouthFunnel": (0.5, 1.0), "mouthPucker": (0.0, 0.4)},  # "oh"
    {"mouthPucker": (0.6, 1.0), "mouthFunnel": (0.0, 0.4), "jawOpen": (0.0, 0.15)},  # "oo"
    {"mouthStretchLeft": (0.5, 1.0), "mouthStretchRight": (0.5, 1.0), "jawOpen": (0.0, 0.25), "mouthSmileLeft": (0.0, 0.3),
     "mouthSmileRight": (0.0, 0.3)},  # "ee"
    {"jawOpen": (0.2, 0.5), "mouthStretchLeft": (0.1, 0.5), "mouthStretchRight": (0.1, 0.5), "mouthLowerDownLeft": (0.3, 0.9),
     "mouthLowerDownRight": (0.3, 0.9)},  # "eh"
    {"mouthClose": (0.3, 1.0), "mouthPressLeft": (0.2, 0.8), "mouthPressRight": (0.2, 0.8), "mouthRollLower": (0.0, 0.5),
     "mouthRollUpper": (0.0, 0.5)},  # "m", pressed lips
    {"eyeLookUpLeft": (0.5, 1.0), "eyeLookUpRight": (0.5, 1.0)},  # gaze moves both eyes together
    {"eyeLookDownLeft": (0.5, 1.0), "eyeLookDownRight": (0.5, 1.0)},
    {"eyeLookInLeft": (0.5, 1.0), "eyeLookOutRight": (0.5, 1.0)},
    {"eyeLookOutLeft": (0.5, 1.0), "eyeLookInRight": (0.5, 1.0)},
    {"cheekPuff": (0.5, 1.0), "mouthClose": (0.0, 0.5)},
    {"jawLeft": (0.3, 1.0), "mouthLeft": (0.0, 0.6)},
    {"jawRight": (0.3, 1.0), "mouthRight": (0.0, 0.6)},
    {"jawForward": (0.3, 1.0)},
    {"tongueOut": (0.5, 1.0), "jawOpen": (0.3, 0.6)},
]


def sample_natural(n: int, generator: torch.Generator, *, max_actions: int = 3, residue: float = 0.1) -> torch.Tensor:
    """[n, 52] natural expressions: 0..max_actions actions at intensity U(0, 1), each shape of an
    action at its own weight from the action's range, summed and clipped; then a sparse residue
    (each other shape with probability ``residue`` at U(0, 0.3)) so no coordinate is ever dead."""
    idx = [torch.tensor([H[k] for k in a]) for a in ACTIONS]
    lo = [torch.tensor([r[0] for r in a.values()]) for a in ACTIONS]
    hi = [torch.tensor([r[1] for r in a.values()]) for a in ACTIONS]
    e = torch.zeros(n, len(H))
    k = torch.randint(0, max_actions + 1, (n,), generator=generator)
    which = torch.randint(0, len(ACTIONS), (n, max_actions), generator=generator)
    level = torch.rand(n, max_actions, generator=generator)
    for i in range(n):
        for j in range(int(k[i])):
            a = int(which[i, j])
            w = lo[a] + (hi[a] - lo[a]) * torch.rand(len(idx[a]), generator=generator)
            e[i, idx[a]] += level[i, j] * w
    res = (torch.rand(n, len(H), generator=generator) < residue) * 0.3 * torch.rand(n, len(H), generator=generator)
    return (e + res).clamp(0, 1)
