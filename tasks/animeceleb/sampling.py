"""The render plan: identities, their frames and labels, the split, and the shards.

Everything a frame needs to be rendered again is in its row: identity (and the seed its head is
built from), style, the morph weights, yaw/pitch/roll, the camera, resolution, samples and the
Cycles seed. Per identity: one neutral frontal ``basis`` frame, ``frames_per_identity`` random
frames (a sparse set of morphs with weights in [0, 1]; anime morphs that contradict each other —
two shapes of the same eye, two vowels — are never combined) and smooth ``sequence`` frames
(keyframes every few frames, eased between). Identities are split train/test per domain,
disjointly; a shard holds consecutive frames of one identity so a worker builds each head once.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.common.morphs import MORPHS_BY_DOMAIN

from .camera import CameraSpec
from .config import AnimeCelebConfig

#: anime morphs of which a frame activates at most one (they shape the same feature)
EXCLUSIVE = [
    {"eye_close_left", "eye_smile_left", "eye_wide_left"},
    {"eye_close_right", "eye_smile_right", "eye_wide_right"},
    {"brow_raise", "brow_angry", "brow_sad"},
    {"mouth_a", "mouth_i", "mouth_u", "mouth_e", "mouth_o"},
    {"mouth_smile", "mouth_frown"},
]
KEYFRAME_EVERY = 4
DOMAIN_INDEX = {"anime": 0, "human": 1}


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def identity_id(domain: str, i: int) -> str:
    return f"{domain}_{i:05d}"


def identity_seed(cfg: AnimeCelebConfig, domain: str, i: int) -> int:
    return _seed(cfg.seed, DOMAIN_INDEX[domain], i)


def sample_expression(rng: np.random.Generator, names: list[str], allowed: list[str], max_active: int, domain: str) -> np.ndarray:
    """A sparse weight vector: 0..max_active allowed morphs, weights ~ U(0, 1)."""
    w = np.zeros(len(names), np.float32)
    k = int(rng.integers(0, max_active + 1)) if allowed else 0
    chosen: list[str] = []
    for m in rng.permutation(allowed):
        if len(chosen) >= k:
            break
        if domain == "anime" and any(m in g and g & set(chosen) for g in EXCLUSIVE):
            continue
        chosen.append(str(m))
    for m in chosen:
        w[names.index(m)] = rng.uniform(0.0, 1.0)
    return w


def sample_pose(rng: np.random.Generator, cfg: AnimeCelebConfig) -> tuple[float, float, float]:
    p = cfg.pose
    return tuple(float(rng.uniform(*getattr(p, a))) for a in ("yaw", "pitch", "roll"))  # type: ignore[return-value]


def _ease(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def sequence_frames(rng: np.random.Generator, cfg: AnimeCelebConfig, names: list[str], allowed: list[str], domain: str):
    """A smooth driving sequence: random keyframes, eased in between (weights stay in [0, 1])."""
    n = cfg.sequence_length
    n_keys = max(2, -(-(n - 1) // KEYFRAME_EVERY) + 1)
    keys_w = np.stack([sample_expression(rng, names, allowed, cfg.max_active_morphs, domain) for _ in range(n_keys)])
    keys_p = np.array([sample_pose(rng, cfg) for _ in range(n_keys)])
    pos = np.linspace(0, n_keys - 1, n)
    i0 = np.minimum(pos.astype(int), n_keys - 2)
    a = _ease(pos - i0)[:, None]
    weights = (1 - a) * keys_w[i0] + a * keys_w[i0 + 1]
    poses = (1 - a) * keys_p[i0] + a * keys_p[i0 + 1]
    return weights.astype(np.float32), poses


def split_identities(cfg: AnimeCelebConfig, domain: str) -> dict[int, str]:
    rng = np.random.default_rng(_seed(cfg.seed, 99, DOMAIN_INDEX[domain]))
    n_test = int(round(cfg.identities * cfg.test_fraction))
    if cfg.test_fraction > 0:
        n_test = min(max(n_test, 1), cfg.identities - 1)
    order = rng.permutation(cfg.identities)
    test = set(order[:n_test].tolist())
    return {i: ("test" if i in test else "train") for i in range(cfg.identities)}


def build_plan(cfg: AnimeCelebConfig, camera: CameraSpec = CameraSpec()) -> tuple[pd.DataFrame, dict[str, dict]]:
    """All frames to render (one row per render) and the identities they belong to."""
    rows: list[dict] = []
    identities: dict[str, dict] = {}
    cam = {f"camera_{k}": v for k, v in camera.as_label().items()}
    for domain in cfg.domains:
        names = MORPHS_BY_DOMAIN[domain]
        allowed = cfg.morphs_for(domain)
        split = split_identities(cfg, domain)
        for i in range(cfg.identities):
            ident = identity_id(domain, i)
            iseed = identity_seed(cfg, domain, i)
            identities[ident] = {"domain": domain, "seed": iseed, "split": split[i]}
            rng = np.random.default_rng(_seed(iseed, 1))
            frames: list[tuple[str, int, int, np.ndarray, tuple]] = [("basis", -1, 0, np.zeros(len(names), np.float32), (0.0, 0.0, 0.0))]
            for f in range(cfg.frames_per_identity):
                frames.append(("random", -1, f, sample_expression(rng, names, allowed, cfg.max_active_morphs, domain), sample_pose(rng, cfg)))
            for s in range(cfg.sequences_per_identity):
                w, p = sequence_frames(rng, cfg, names, allowed, domain)
                frames += [("sequence", s, t, w[t], tuple(p[t])) for t in range(len(w))]
            # Style outermost, so a shard (consecutive rows) needs one scene per style.
            for style in cfg.styles_for(domain):
                for j, (kind, seq, t, w, pose) in enumerate(frames):
                    pose_id = f"{ident}/{kind}{'' if seq < 0 else seq}_{t:04d}"
                    rows.append({
                        "frame_id": f"{pose_id}/{style}", "pose_id": pose_id, "domain": domain, "identity": ident,
                        "identity_seed": iseed, "split": split[i], "style": style, "kind": kind, "sequence": seq, "t": t,
                        "weights": w.astype(np.float32), "active": [names[k] for k in np.flatnonzero(w > 0)],
                        "yaw": float(pose[0]), "pitch": float(pose[1]), "roll": float(pose[2]),
                        "resolution": cfg.resolution, "samples": cfg.samples,
                        # flat toon shading has no lighting noise to remove, only edges to anti-alias
                        "denoise": cfg.denoise and style == "default",
                        "render_seed": _seed(iseed, 2, j), **cam,
                    })
    plan = pd.DataFrame(rows)
    plan["shard"] = _assign_shards(plan, cfg.frames_per_shard)
    plan["member"] = plan["frame_id"].str.replace("/", "__") + ".png"
    return plan, identities


def _assign_shards(plan: pd.DataFrame, per_shard: int) -> list[str]:
    out = []
    for (domain, ident), group in plan.groupby(["domain", "identity"], sort=False):
        for j in range(len(group)):
            out.append(f"{ident}-{j // per_shard:03d}")
    # groupby(sort=False) visits identities in first-appearance order and rows stay contiguous
    return out
