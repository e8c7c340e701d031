"""Bridge B: each anime morph as a combination of human (ARKit) blendshapes, fitted on landmarks.

AnimeCeleb/Animo (METHODS.md §7.2) and EDTN (§4.2) both use a fixed matrix B that maps the 17
anime expression morphs into the human expression space, ``e_hat = p · B``; how it was built was
never published. Ours is fitted here, per anime morph k, as the human weight vector b_k ∈ [0, 1]^52
whose landmark motion matches the anime morph's landmark motion best:

    b_k = argmin_{0 ≤ b ≤ 1} ‖ Σ_j b_j · D_h[j] − D_a[k] ‖² + λ ‖b‖²

where D_h[j] and D_a[k] are the frontal (x, z) displacements of 20 semantic landmarks (below) caused by
human blendshape j and anime morph k at weight 1, each divided by a per-domain feature scale, so
"close the eye" means the same thing on a 37 mm anime eye and a 12 mm human eye:

* eyes (8: top and bottom lid at the inner and outer quarter column of each eye) ÷ the domain's
  neutral eye opening (mean top–bottom distance);
* brows (4: inner and outer end per side) ÷ the inter-ocular distance;
* mouth (8: both corners; upper and lower lip at the centre and quarter columns) ÷ mouth width.

Both morph models are linear in their weights, so the displacements are exact. Landmark vertices
are found once per domain from the neutral mesh and the morphs themselves (documented in
:func:`anime_landmarks` / :func:`human_landmarks`); human heads share anny's topology, so the
indices hold for every human identity. The box-constrained ridge problem is solved by projected
accelerated gradient (FISTA), which converges to the unique optimum (the objective is strongly
convex for λ > 0).

The same B, applied inversely (the box-constrained least-squares p with p·B ≈ e), is the
**linear-mapping baseline** that EDTN has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tasks.common.morphs import ANIME_MORPH_NAMES, HUMAN_MORPH_NAMES, MorphModel

SIDES = ("left", "right")  # the character's own left = +X
COLUMNS = ("inner", "outer")
LANDMARK_NAMES: list[str] = (
    [f"eye_{s}_{c}_{tb}" for s in SIDES for c in COLUMNS for tb in ("top", "bottom")]
    + [f"brow_{s}_{c}" for s in SIDES for c in COLUMNS]
    + ["mouth_corner_left", "mouth_corner_right"]
    + [f"lip_{c}_{ul}" for c in ("right", "centre", "left") for ul in ("upper", "lower")]
)
GROUP = {n: n.split("_")[0] if not n.startswith("lip") else "mouth" for n in LANDMARK_NAMES}
LMK = {n: i for i, n in enumerate(LANDMARK_NAMES)}
#: (top, bottom) landmark pairs whose vertical distance is an eye opening (EDTN's L_eye)
EYE_PAIRS: list[tuple[int, int]] = [(LMK[f"eye_{s}_{c}_top"], LMK[f"eye_{s}_{c}_bottom"]) for s in SIDES for c in COLUMNS]
#: (upper, lower) lip pairs whose vertical distance is a lip distance (EDTN's L_lip)
LIP_PAIRS: list[tuple[int, int]] = [(LMK[f"lip_{c}_upper"], LMK[f"lip_{c}_lower"]) for c in ("right", "centre", "left")]
#: EDTN's landmark weights: eyes and mouth ×5, the rest ×1
LANDMARK_WEIGHTS = np.array([5.0 if GROUP[n] in ("eye", "mouth") else 1.0 for n in LANDMARK_NAMES], np.float32)
ZX = [0, 2]  # frontal (x, z) plane, as DECA's orthographic 2D landmarks; anime parts are flat decals whose depth means nothing


@dataclass
class Landmarks:
    """Landmark vertex indices of one mesh topology and each landmark's normalising scale (metres)."""

    indices: np.ndarray  # [L] int
    scale: np.ndarray  # [L] float: eye opening / inter-ocular distance / mouth width

    def displacements(self, model: MorphModel) -> np.ndarray:
        """[K, 2L]: normalised (x, z) landmark motion of each morph at weight 1."""
        d = model.offsets[:, self.indices][:, :, ZX] / self.scale[None, :, None]
        return d.reshape(model.num_morphs, -1).astype(np.float64)


def _near_column(pts: np.ndarray, x: float, width: float) -> np.ndarray:
    return np.abs(pts[:, 0] - x) < 0.1 * width


def _scales(tmpl: np.ndarray, idx: np.ndarray) -> np.ndarray:
    p = tmpl[idx]
    eye_open = np.mean([p[t, 2] - p[b, 2] for t, b in EYE_PAIRS])
    eye_c = {s: p[[LMK[f"eye_{s}_{c}_{tb}"] for c in COLUMNS for tb in ("top", "bottom")]].mean(0) for s in SIDES}
    iod = float(np.linalg.norm(eye_c["left"] - eye_c["right"]))
    mouth_w = float(np.linalg.norm(p[LMK["mouth_corner_left"]] - p[LMK["mouth_corner_right"]]))
    if eye_open <= 0 or mouth_w <= 0:
        raise ValueError(f"degenerate landmarks: eye opening {eye_open:.4f} m, mouth width {mouth_w:.4f} m")
    return np.array([{"eye": eye_open, "brow": iod, "mouth": mouth_w}[GROUP[n]] for n in LANDMARK_NAMES])


def anime_landmarks(model: MorphModel) -> Landmarks:
    """Painted anime parts are clean outlines, so plain geometry at neutral suffices.

    Eye: columns at the eye's centre ± a quarter of its width (inner = toward the nose); top = the
    highest vertex near the column (upper lash edge), bottom = the lowest (eye outline). Brows: the
    highest vertex at each end of the stroke. Mouth: corners = extreme-x vertices; lips = highest
    and lowest vertex near the centre and quarter columns.
    """
    t = model.template
    idx: dict[str, int] = {}
    for side, sx in (("left", 1), ("right", -1)):
        r = model.region_vertices(f"eye_{side}")
        x0, x1 = t[r, 0].min(), t[r, 0].max()
        cx, w = (x0 + x1) / 2, x1 - x0
        for col, off in (("inner", -0.25 * sx), ("outer", 0.25 * sx)):
            near = r[_near_column(t[r], cx + off * w, w)]
            idx[f"eye_{side}_{col}_top"] = int(near[np.argmax(t[near, 2])])
            idx[f"eye_{side}_{col}_bottom"] = int(near[np.argmin(t[near, 2])])
        b = model.region_vertices("brows")
        b = b[np.sign(t[b, 0]) == sx]
        ax = np.abs(t[b, 0])
        span = ax.max() - ax.min()
        for col, sel in (("inner", ax < ax.min() + 0.08 * span), ("outer", ax > ax.max() - 0.08 * span)):
            c = b[sel]
            idx[f"brow_{side}_{col}"] = int(c[np.argmax(t[c, 2])])
    m = model.region_vertices("mouth")
    idx["mouth_corner_left"], idx["mouth_corner_right"] = int(m[np.argmax(t[m, 0])]), int(m[np.argmin(t[m, 0])])
    w = t[idx["mouth_corner_left"], 0] - t[idx["mouth_corner_right"], 0]
    for col, x in (("right", -0.25 * w), ("centre", 0.0), ("left", 0.25 * w)):
        near = m[_near_column(t[m], x, w)]
        idx[f"lip_{col}_upper"] = int(near[np.argmax(t[near, 2])])
        idx[f"lip_{col}_lower"] = int(near[np.argmin(t[near, 2])])
    ind = np.array([idx[n] for n in LANDMARK_NAMES])
    return Landmarks(ind, _scales(t, ind))


def human_landmarks(model: MorphModel) -> Landmarks:
    """anny's skin is one continuous surface (lids over the socket, lips meeting), so a lid or
    lip margin is found by how the morphs move it, among front-facing skin vertices:

    * upper lid = the lowest vertex near the column that ``eyeBlink{Side}`` moves down by ≥ 80 % of
      the most it moves any; lower lid = the vertex (that the blink leaves in place) nearest to
      where the closed upper lid lands;
    * brow inner / outer end = the vertex ``browInnerUp`` / ``browOuterUp{Side}`` raises most;
    * mouth corner = the vertex ``mouthSmile{Side}`` moves most; lower lip = the highest vertex
      near the column that ``jawOpen`` carries down (≥ 50 % of its largest drop), upper lip = the
      lowest vertex above it that ``jawOpen`` leaves in place (< 25 %).
    """
    t = model.template
    skin = model.region_vertices("skin")
    off = {n: model.offsets[HUMAN_MORPH_NAMES.index(n)] for n in HUMAN_MORPH_NAMES}
    idx: dict[str, int] = {}
    for side, sx, S in (("left", 1, "Left"), ("right", -1, "Right")):
        r = np.intersect1d(model.region_vertices(f"eye_{side}"), skin)
        r = r[t[r, 1] < t[r, 1].min() + 0.012]  # the front of the socket, not its inside
        dz = off[f"eyeBlink{S}"][:, 2]
        lid = r[dz[r] < 0.5 * dz[r].min()]
        x0, x1 = t[lid, 0].min(), t[lid, 0].max()
        cx, w = (x0 + x1) / 2, x1 - x0
        for col, o in (("inner", -0.25 * sx), ("outer", 0.25 * sx)):
            near = r[_near_column(t[r], cx + o * w, w)]
            moving = near[dz[near] <= 0.8 * dz[near].min()]
            top = int(moving[np.argmin(t[moving, 2])])
            closed_z = t[top, 2] + dz[top]
            still = near[(np.abs(dz[near]) < 0.2 * abs(dz[near].min())) & (t[near, 2] < t[top, 2])]
            idx[f"eye_{side}_{col}_top"] = top
            idx[f"eye_{side}_{col}_bottom"] = int(still[np.argmin(np.abs(t[still, 2] - closed_z))])
        b = np.intersect1d(model.region_vertices("brows"), skin)
        b = b[np.sign(t[b, 0]) == sx]
        idx[f"brow_{side}_inner"] = int(b[np.argmax(off["browInnerUp"][b, 2])])
        idx[f"brow_{side}_outer"] = int(b[np.argmax(off[f"browOuterUp{S}"][b, 2])])
    m = np.intersect1d(model.region_vertices("mouth"), skin)
    m = m[t[m, 1] < t[m, 1].min() + 0.012]
    for side, S in (("left", "Left"), ("right", "Right")):
        idx[f"mouth_corner_{side}"] = int(m[np.argmax(np.linalg.norm(off[f"mouthSmile{S}"][m], axis=1))])
    w = t[idx["mouth_corner_left"], 0] - t[idx["mouth_corner_right"], 0]
    jz = off["jawOpen"][:, 2]
    for col, x in (("right", -0.25 * w), ("centre", 0.0), ("left", 0.25 * w)):
        near = m[_near_column(t[m], x, w)]
        lower = near[jz[near] < 0.5 * jz[near].min()]
        lo = int(lower[np.argmax(t[lower, 2])])
        upper = near[(np.abs(jz[near]) < 0.25 * abs(jz[near].min())) & (t[near, 2] > t[lo, 2])]
        idx[f"lip_{col}_lower"] = lo
        idx[f"lip_{col}_upper"] = int(upper[np.argmin(t[upper, 2])])
    ind = np.array([idx[n] for n in LANDMARK_NAMES])
    return Landmarks(ind, _scales(t, ind))


# ------------------------------------------------------------------------------ the fit


def box_ridge(A: np.ndarray, Y: np.ndarray, lam: float, *, lo: float = 0.0, hi: float = 1.0, iters: int = 5000,
              tol: float = 1e-12) -> np.ndarray:
    """argmin_{lo ≤ X ≤ hi} ‖X A − Y‖² + λ‖X‖², row by row (FISTA). A [J, D], Y [K, D] → X [K, J]."""
    A, Y = np.asarray(A, np.float64), np.asarray(Y, np.float64)
    G = A @ A.T + lam * np.eye(len(A))  # ½ the Hessian of each row's objective
    C = Y @ A.T
    step = 1.0 / np.linalg.eigvalsh(G).max()
    X = np.clip(np.linalg.solve(G, C.T).T, lo, hi)
    Z, t = X.copy(), 1.0
    for _ in range(iters):
        X_new = np.clip(Z - step * (Z @ G - C), lo, hi)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        Z = X_new + (t - 1) / t_new * (X_new - X)
        if np.abs(X_new - X).max() < tol:
            X = X_new
            break
        X, t = X_new, t_new
    return X


def fit_bridge(human_disp: np.ndarray, anime_disp: np.ndarray, lam: float = 1e-3) -> np.ndarray:
    """B [K_anime, K_human] with anime_disp ≈ B · human_disp, every entry in [0, 1]."""
    if human_disp.shape[1] != anime_disp.shape[1]:
        raise ValueError(f"landmark dimensions differ: human {human_disp.shape[1]}, anime {anime_disp.shape[1]}")
    return box_ridge(human_disp, anime_disp, lam)


def bridge_from_models(anime: MorphModel, human: MorphModel, lam: float = 1e-3) -> tuple[np.ndarray, dict]:
    """Fit B on the canonical heads; also returns how well each anime morph is matched."""
    if anime.names != ANIME_MORPH_NAMES or human.names != HUMAN_MORPH_NAMES:
        raise ValueError(f"morph models: expected {len(ANIME_MORPH_NAMES)} anime and {len(HUMAN_MORPH_NAMES)} human "
                         f"morphs in the animeceleb order, got {anime.num_morphs} and {human.num_morphs}")
    la, lh = anime_landmarks(anime), human_landmarks(human)
    Da, Dh = la.displacements(anime), lh.displacements(human)
    B = fit_bridge(Dh, Da, lam)
    resid = B @ Dh - Da
    fit = {
        name: {
            "residual_rel": float(np.linalg.norm(resid[k]) / max(np.linalg.norm(Da[k]), 1e-12)),
            "top_human": [[HUMAN_MORPH_NAMES[j], round(float(B[k, j]), 3)] for j in np.argsort(-B[k])[:3] if B[k, j] > 0.01],
        }
        for k, name in enumerate(ANIME_MORPH_NAMES)
    }
    return B.astype(np.float32), {"morphs": fit, "anime_landmarks": la.indices.tolist(),
                                  "human_landmarks": lh.indices.tolist(), "lambda": lam}


def linear_inverse(e: torch.Tensor, B: torch.Tensor, iters: int = 500) -> torch.Tensor:
    """The baseline: p ∈ [0, 1]^17 with p·B closest to the human coefficients e (box least squares).

    e [N, K_h], B [K_a, K_h] → p [N, K_a]; batched projected FISTA on the normal equations.
    """
    e, B = e.double(), B.double()
    G = B @ B.T + 1e-6 * torch.eye(len(B), dtype=B.dtype)
    C = e @ B.T
    step = 1.0 / torch.linalg.eigvalsh(G).max()
    X = torch.linalg.solve(G, C.T).T.clamp(0, 1)
    Z, t = X.clone(), 1.0
    for _ in range(iters):
        X_new = (Z - step * (Z @ G - C)).clamp(0, 1)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        Z = X_new + (t - 1) / t_new * (X_new - X)
        X, t = X_new, t_new
    return X.float()
