"""EDTN (METHODS.md §4.2): human expression coefficients → 17 anime morph weights, trained in
human mesh space through the bridge B.

``Generator2ani`` is the released MLP (input → 512 → 512 → 512 → 17, LeakyReLU 0.2, sigmoid). The
input is the 52 ARKit coefficients of anny's face; the jaw lives inside them (``jawOpen``,
``jawLeft/Right/Forward``), where FLAME keeps 3 separate jaw-pose numbers, so there is no extra
jaw input and the "fake" side carries whatever jaw B gives it (the released code sets the fake
jaw to 0 because FLAME's jaw is outside B's 50 dimensions).

The geometric loss is the released one, in DECA's normalised image units (metres times 10, the
scale of DECA's orthographic camera; landmarks are frontal (x, z) coordinates):

    L = 100·MSE(V_real, V_fake) + L1_w(lmk) + L1(eye openings) + L1(lip distances)

with V = the human head's skin vertices for the real coefficients e and for e_hat = p·B, landmark
weights 5 on eyes and mouth, eye openings = the 4 top–bottom lid distances, lip distances = the 3
upper–lower lip distances (:mod:`tasks.reenact.bridge`). One deviation: the released code takes
the vertex MSE in metres, where 100·MSE is ~10⁻⁴ of the total and inert; here vertices are in
the landmarks' units, so the "3D geometry-aware" term actually acts. The human head is linear in e, so the
whole loss is exact and cheap: V(e) − V(e_hat) = (e − e_hat) · offsets.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tasks.common.morphs import MorphModel

from .bridge import EYE_PAIRS, LANDMARK_WEIGHTS, LIP_PAIRS, Landmarks, human_landmarks

LANDMARK_SCALE = 10.0  # DECA's orthographic camera scale: landmarks ≈ normalised image units


class EDTN(nn.Module):
    """``Generator2ani``: MLP with LeakyReLU(0.2) and a sigmoid head (weights in [0, 1])."""

    def __init__(self, n_in: int = 52, n_out: int = 17, hidden: int = 512, layers: int = 3, init_logit: float = -3.0):
        super().__init__()
        dims = [n_in] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        head = nn.Linear(dims[-1], n_out)
        # Start at (nearly) the neutral face, not at 0.5 everywhere: a morph the bridge cannot see
        # (B's row is zero: iris_small) gets no gradient and keeps its initial value, and the
        # others, pushed from 0.5 to 0 first, end in the sigmoid's flat tail and stop learning.
        nn.init.constant_(head.bias, init_logit)
        self.net = nn.Sequential(*blocks, head, nn.Sigmoid())
        self.n_in, self.n_out = n_in, n_out

    def forward(self, e: torch.Tensor) -> torch.Tensor:  # [N, 52] → [N, 17]
        return self.net(e)


class HumanGeometry(nn.Module):
    """Human heads (one or several identities of one topology) as a differentiable decoder."""

    def __init__(self, models: list[MorphModel], landmarks: Landmarks, bridge: np.ndarray):
        super().__init__()
        n_skin = min(len(m.region_vertices("skin")) for m in models)
        K = models[0].num_morphs
        for m in models:
            if m.num_morphs != K:
                raise ValueError(f"human morph models disagree on the morph count: {K} vs {m.num_morphs}")
        if bridge.shape[1] != K:
            raise ValueError(f"bridge B maps into {bridge.shape[1]} human morphs, the human head has {K}")
        # Skin only: eyeballs never move and a hair shell only exists on some identities. Of the
        # skin, only vertices some morph moves can differ between two expressions; the rest (back
        # of the head, ears) add zeros, so they are dropped from the sums but kept in the means.
        moving = np.flatnonzero(np.abs(np.stack([m.offsets[:, :n_skin] for m in models])).max(axis=(0, 1, 3)) > 0)
        lmk_local = np.searchsorted(moving, landmarks.indices)
        if not np.array_equal(moving[lmk_local], landmarks.indices):
            raise ValueError("a landmark vertex is never moved by any morph: the landmarks are wrong")
        self.register_buffer("offsets", torch.as_tensor(np.stack([m.offsets[:, moving] for m in models]), dtype=torch.float32))
        self.register_buffer("template", torch.as_tensor(np.stack([m.template[moving] for m in models]), dtype=torch.float32))
        self.register_buffer("bridge", torch.as_tensor(bridge, dtype=torch.float32))
        self.register_buffer("lmk", torch.as_tensor(lmk_local, dtype=torch.long))
        self.register_buffer("lmk_w", torch.as_tensor(LANDMARK_WEIGHTS))
        # The loss needs the vertices only through Σ‖Δv‖² = Δe·(O Oᵀ)·Δeᵀ (O: offsets flattened) and
        # the landmarks' own offsets, so it is computed from a K×K Gram matrix per head — exact, and
        # ~100× cheaper than decoding every vertex of a 4,500-vertex skin per sample.
        flat = self.offsets.double().flatten(2)  # [I, K, 3V']
        self.register_buffer("gram", (flat @ flat.transpose(1, 2)).float())
        self.register_buffer("lmk_offsets", self.offsets[:, :, lmk_local].clone())  # [I, K, L, 3]
        self.eye_pairs, self.lip_pairs = EYE_PAIRS, LIP_PAIRS
        self.n_identities, self.n_vertices, self.n_moving = len(models), n_skin, len(moving)

    @classmethod
    def from_morph_models(cls, models_dir: Path | str, identities: list[str], bridge: np.ndarray) -> "HumanGeometry":
        """The heads of ``identities`` from an animeceleb ``morph_models/`` folder, landmarks from
        its canonical human head."""
        models_dir = Path(models_dir)
        heads = [MorphModel.load(models_dir / "human" / f"{i}.npz") for i in identities]
        return cls(heads, human_landmarks(MorphModel.load(models_dir / "human.npz")), bridge)

    def vertices(self, e: torch.Tensor, identity: int = 0) -> torch.Tensor:
        """[N, K] coefficients on one identity's head → the moving skin vertices [N, V', 3], metres."""
        off = self.offsets[identity]
        return self.template[identity] + (e @ off.reshape(len(off), -1)).reshape(len(e), -1, 3)

    def differences(self, e: torch.Tensor, p: torch.Tensor, identity: int = 0) -> dict[str, torch.Tensor]:
        """Real minus fake, exactly and cheaply: the head is linear, so V(e) − V(p·B) = (e − p·B)·O."""
        off = self.offsets[identity]
        de = e.float() - self.to_human(p.float())
        dv = (de @ off.reshape(len(off), -1)).reshape(len(e), -1, 3)
        dl = dv[:, self.lmk]
        dz = dl[..., 2]
        return {
            "vertices": dv,
            "landmarks": dl,
            "eye": torch.stack([dz[:, t] - dz[:, b] for t, b in self.eye_pairs], 1),
            "lip": torch.stack([dz[:, u] - dz[:, lo] for u, lo in self.lip_pairs], 1),
        }

    def to_human(self, p: torch.Tensor) -> torch.Tensor:
        """e_hat = p · B."""
        return p @ self.bridge

    def edtn_loss(self, e: torch.Tensor, p: torch.Tensor, identity: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        de = e.float() - self.to_human(p.float())
        s = LANDMARK_SCALE
        # Σ over samples and vertices of ‖Δv‖² through the Gram matrix (see __init__)
        vert = (de @ self.gram[identity] * de).sum() * s**2 / (len(e) * self.n_vertices * 3)
        dl = torch.einsum("nk,klc->nlc", de, self.lmk_offsets[identity])
        dz = dl[..., 2]
        lmk = (dl[..., [0, 2]].abs() * s * self.lmk_w[None, :, None]).mean()
        eye = (torch.stack([dz[:, t] - dz[:, b] for t, b in self.eye_pairs], 1).abs() * s).mean()
        lip = (torch.stack([dz[:, u] - dz[:, lo] for u, lo in self.lip_pairs], 1).abs() * s).mean()
        total = 100 * vert + lmk + eye + lip
        logs = {"loss": total, "vert": vert, "lmk": lmk, "eye": eye, "lip": lip}
        return total, {k: float(v.detach()) for k, v in logs.items()}

    @torch.no_grad()
    def errors_mm(self, e: torch.Tensor, p: torch.Tensor, identity: int = 0) -> dict[str, float]:
        """Evaluation in millimetres: mean vertex / landmark distance, eye-opening and lip-distance errors."""
        d, mm = self.differences(e, p, identity), 1000.0
        return {
            "vertex_mm": float(d["vertices"].norm(dim=-1).sum() / (len(e) * self.n_vertices) * mm),
            "landmark_mm": float(d["landmarks"][..., [0, 2]].norm(dim=-1).mean() * mm),
            "eye_opening_mm": float(d["eye"].abs().mean() * mm),
            "lip_distance_mm": float(d["lip"].abs().mean() * mm),
        }


def sample_human_expressions(n: int, n_morphs: int, max_active: int, generator: torch.Generator) -> torch.Tensor:
    """Sparse random ARKit vectors like the animeceleb sampler: 0..max_active morphs, each U(0, 1)."""
    k = torch.randint(0, max_active + 1, (n, 1), generator=generator)
    rank = torch.rand(n, n_morphs, generator=generator).argsort(1).argsort(1)
    w = torch.rand(n, n_morphs, generator=generator)
    return torch.where(rank < k, w, torch.zeros_like(w))


class EDTNRecipe:
    """Training recipe for :func:`tasks.common.training.train`: sampled + manifest human expressions,
    one training identity's head per step, Adam(β (0.5, 0.999)) as released.

    ``sampler``: ``natural`` — correlated actions as faces move
    (:func:`tasks.reenact.expressions.sample_natural`; never the test set's correspondences) — or
    ``uniform`` — 0..max_active independent shapes at U(0, 1) (the animeceleb sampler)."""

    def __init__(self, geometry: HumanGeometry, manifest_expressions: np.ndarray, *, steps: int, batch: int,
                 lr: float, max_active: int, hidden: int, seed: int, manifest_fraction: float = 0.25,
                 sampler: str = "natural"):
        if sampler not in ("natural", "uniform"):
            raise ValueError(f"edtn.sampler: natural or uniform, got {sampler!r}")
        self.geom, self.steps, self.micro_batch, self.lr = geometry, steps, batch, lr
        self.max_active, self.hidden, self.seed, self.manifest_fraction = max_active, hidden, seed, manifest_fraction
        self.sampler = sampler
        self.manifest = torch.as_tensor(np.asarray(manifest_expressions, np.float32).reshape(-1, geometry.offsets.shape[1]))
        self._dev_geom: dict[str, HumanGeometry] = {}

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        return {"edtn": EDTN(self.geom.offsets.shape[1], self.geom.bridge.shape[0], self.hidden)}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        g = seeded_generator(self.seed, step, rank)
        if self.sampler == "natural":
            from .expressions import sample_natural

            e = sample_natural(self.micro_batch, g, max_actions=self.max_active)
        else:
            e = sample_human_expressions(self.micro_batch, self.geom.offsets.shape[1], self.max_active, g)
        if len(self.manifest):  # part of each batch: expressions the dataset actually rendered
            n = int(round(self.micro_batch * self.manifest_fraction))
            e[:n] = self.manifest[torch.randint(0, len(self.manifest), (n,), generator=g)]
        # One training identity's head per step (a per-sample head would gather [N, K, V, 3]).
        ident = int(torch.randint(0, self.geom.n_identities, (1,), generator=g))
        return {"e": e.to(device), "identity": torch.tensor(ident, device=device)}

    def geometry_on(self, device: torch.device) -> HumanGeometry:
        key = str(device)
        if key not in self._dev_geom:
            self._dev_geom[key] = self.geom.to(device)
        return self._dev_geom[key]

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        p = models["edtn"](batch["e"])
        return self.geometry_on(batch["e"].device).edtn_loss(batch["e"], p, int(batch["identity"]))
