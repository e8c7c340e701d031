"""RobustSwap's explicit 3D guidance: anny face geometry and the 3D ("PL") loss.

The paper (unofficial code) takes FLAME vertices of (source shape, target expression, target
pose) and DECA's reconstruction of the swapped image, and penalises their L1 distance (λ = 100).
Here the 3D face model is ``anny``'s head (the renders' own model), in the dataset's conventions
(``tasks/faceswap/dataset.py``): identity vector α = anny phenotype + our face-basis
coefficients, 52 ARKit expression weights, and the head pose R = Rz(yaw)·Rx(−pitch)·Ry(roll)
about the neck pivot.

**Fast exact anny (ours).** Calling anny with gradients costs ≈0.7 s per batch of 8 on this CPU,
more than the rest of a swapper step. With the head at rest (the pose is applied afterwards as a
rigid turn about the neck pivot, as the dataset does), anny is a blendshape model: rest vertices
V = T + Σ_b c_b(α) S_b with c = [phenotype coefficients c_φ(α) (74), expression weights e (52)],
and the bone heads follow the same coefficients. anny's skinning at rest only translates the
whole head, which the shared frame (eye midpoint → fixed point) removes. So :class:`AnnyFace`
keeps T, S and the bone-head blendshapes as buffers, calls anny only for c_φ(α) (its own,
differentiable phenotype interpolation), and is exact: a test checks it against
:func:`tasks.faceswap.heads.face_vertices` to float precision.
"""
from __future__ import annotations

import torch
from torch import nn


def rotation(pose: torch.Tensor) -> torch.Tensor:
    """pose [N, 3] = (yaw, pitch, roll) radians → R [N, 3, 3] = Rz(yaw) · Rx(−pitch) · Ry(roll)."""
    yaw, pitch, roll = pose.unbind(-1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def mat(rows):
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    cz, sz = torch.cos(yaw), torch.sin(yaw)
    cx, sx = torch.cos(-pitch), torch.sin(-pitch)
    cy, sy = torch.cos(roll), torch.sin(roll)
    rz = mat([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    rx = mat([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    return rz @ rx @ ry


def pose_vertices(verts: torch.Tensor, pivot: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """V' = (V − c)·Rᵀ + c: verts [N, V, 3], pivot [N, 3] or [3], pose [N, 3]."""
    c = pivot[:, None] if pivot.dim() == 2 else pivot
    return (verts - c) @ rotation(pose).transpose(-1, -2).to(verts.dtype) + c


class AnnyFace(nn.Module):
    """anny's head in the dataset's conventions: (α [N, P], e [N, 52], θ [N, 3]) → vertices [N, V, 3], metres.

    ``region="face"`` keeps the face-region vertices only (forehead to chin, ear to ear: what a swap
    changes, and a third of the cost); ``"all"`` keeps all 4,538.
    """

    def __init__(self, region: str = "face"):
        super().__init__()
        from tasks.faceswap import heads
        from tasks.faceswap.dataset import ANNY_PHENOTYPES

        m = heads.anny_head()
        nv = m.template_vertices.shape[0]
        if region == "face":
            keep = torch.as_tensor(heads.face_region(heads.canonical_neutral()[0]).nonzero()[0])
        elif region == "all":
            keep = torch.arange(nv)
        else:
            raise ValueError(f"region: {region!r} is not 'face' or 'all'")
        self.register_buffer("vertex_ids", keep)
        cols = (keep[:, None] * 3 + torch.arange(3)).reshape(-1)  # flattened [V*3] columns kept
        n_face = len(m.facial_action_labels)
        n_pheno = m.blendshapes.shape[0] - n_face
        lab = list(m.bone_labels)
        bones = [lab.index("eye.L"), lab.index("eye.R"), lab.index("head")]
        self.n_anny = len(ANNY_PHENOTYPES)
        self.register_buffer("template", m.template_vertices.reshape(1, -1)[:, cols].float())                # T
        self.register_buffer("pheno_shapes", m.blendshapes[:n_pheno].reshape(n_pheno, -1)[:, cols].float())  # S_φ
        self.register_buffer("expr_shapes", m.blendshapes[n_pheno:].reshape(n_face, -1)[:, cols].float())    # S_e
        self.register_buffer("bone_template", m.template_bone_heads[bones].reshape(1, -1).float())
        self.register_buffer("bone_pheno", m.bone_heads_blendshapes[:n_pheno, bones].reshape(n_pheno, -1).float())
        self.register_buffer("bone_expr", m.bone_heads_blendshapes[n_pheno:, bones].reshape(n_face, -1).float())
        self.register_buffer("face_basis", torch.as_tensor(heads.face_basis()).reshape(-1, nv * 3)[:, cols].float())
        self.register_buffer("eye_mid", torch.as_tensor(heads.EYE_MID).float())
        self.n_pheno, self.n_face = n_pheno, n_face

    def phenotype_coefficients(self, phenotype: torch.Tensor) -> torch.Tensor:
        """c_φ(α_anny) [N, 74]: anny's own (piecewise multilinear, differentiable) interpolation."""
        from tasks.faceswap import heads

        m = heads.anny_head()
        n = len(phenotype)
        c = m._get_phenotype_blendshape_coefficients(phenotype.double().cpu(), torch.zeros(n, 0, dtype=torch.float64),
                                                      torch.zeros(n, self.n_face, dtype=torch.float64))
        return c[:, : self.n_pheno].to(self.template.device, torch.float32)

    def rest(self, shape: torch.Tensor, expression: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unposed vertices [N, V, 3] in the shared frame, and the neck pivot [N, 3]."""
        shape, expression = shape.float(), expression.float()
        c = self.phenotype_coefficients(shape[:, : self.n_anny])
        v = self.template + c @ self.pheno_shapes + expression @ self.expr_shapes + shape[:, self.n_anny:] @ self.face_basis
        b = (self.bone_template + c @ self.bone_pheno + expression @ self.bone_expr).reshape(-1, 3, 3)
        shift = self.eye_mid - (b[:, 0] + b[:, 1]) / 2
        return v.reshape(len(shape), -1, 3) + shift[:, None], b[:, 2] + shift

    def forward(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        v, pivot = self.rest(shape, expression)
        return pose_vertices(v, pivot, pose.float())


def explicit_3d_loss(face_model: nn.Module, pred: dict[str, torch.Tensor], source_shape: torch.Tensor,
                     target_expression: torch.Tensor, target_pose: torch.Tensor) -> torch.Tensor:
    """L_3D = mean |V(α_src, e_tgt, θ_tgt) − V(α̂, ê, θ̂)|₁ over vertices and coordinates (metres), where
    (α̂, ê, θ̂) = ``pred`` are regressed off the swapped image. Zero iff the geometry is the ground-truth swap's."""
    want = face_model(source_shape, target_expression, target_pose).detach()
    got = face_model(pred["shape"], pred["expression"], pred["pose"])
    return (got - want).abs().mean()
