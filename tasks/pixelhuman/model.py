"""The PixelHuman field and its two baselines, one module with parts switched off.

For a query point ``x`` in the target pose (``canonical=True``, ours):

1. inverse skinning to the canonical (rest) space with anny's weights of the nearest posed
   vertices, ``x_c = (Σ w_j T_j^tgt)⁻¹ x`` (:mod:`tasks.pixelhuman.skinning`);
2. a learned residual deformation ``δ(x_c, pose)`` (tanh-bounded, zero at initialisation) gives
   the canonical coordinate the MLP sees, ``x̂_c = x_c + δ``;
3. ``x_c`` is skinned forward into each input view's pose, ``x_v = (Σ w_j T_j^v) x_c``, projected
   with that view's camera, and the CNN feature map and colour are sampled bilinearly there
   (pose-aware pixel-aligned features);
4. per-view features go through a shared layer and are fused by mean and variance over the
   views that see the point (pixelNeRF/IBRNet-style pooling; with one view the variance is 0);
5. an MLP of ``[PE(x̂_c), fused]`` gives density (softplus) and colour (sigmoid).

Ours where the paper is silent (its text could not be read): the residual is used for the
canonical query coordinate only (the features are sampled at the skinning-only ``x_v``, so an
input view in the target pose samples exactly the pixel the ray came from); density is zero
farther than ``shell`` from the posed body-model surface, for every method.

Baselines: ``pixel_posed`` (``canonical=False``) samples the input views at ``x`` itself and
feeds ``PE(x)`` — pixel-aligned but pose-unaware; ``anerf_subject`` (``pixel=False``) is the
canonical field alone, trained per subject from its input views (animatable-NeRF style).
Everything is plain torch (no PyTorch3D) and runs on whatever device its tensors are on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cameras import Cameras, project
from .skinning import forward_lbs, inverse_lbs, knn_weights

#: the body's vertical extent is ≈ [0, 1.9] m: coordinates are centred and scaled to ≈ [−1, 1]
COORD_CENTER = (0.0, 0.0, 0.9)
COORD_SCALE = 1.0


def posenc(x: Tensor, freqs: int) -> Tensor:
    if freqs == 0:
        return x
    f = (2.0 ** torch.arange(freqs, device=x.device, dtype=x.dtype)) * math.pi
    xf = x[..., None] * f
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], -1)


class Encoder(nn.Module):
    """A small U-Net-like CNN: image [V, 3, H, W] → feature map [V, C, H, W] (same resolution)."""

    def __init__(self, dim: int):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(16 + 32 + 64, dim, 1)

    def forward(self, img: Tensor) -> Tensor:
        a = self.c1(img * 2 - 1)
        b = self.c2(a)
        c = self.c3(b)
        size = a.shape[-2:]
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        return self.out(torch.cat([a, up(b), up(c)], 1))


@dataclass
class Context:
    """What a render of one target frame knows: the input views and the body-model fits."""

    images: Tensor  # [V, 3, H, W] input images in [0, 1]
    cams: Cameras  # the V input cameras
    in_transforms: Tensor  # [V, J, 4, 4] skinning transforms of each input view's pose
    tgt_transforms: Tensor  # [J, 4, 4] of the target pose
    tgt_verts: Tensor  # [K, 3] posed body-model vertices (the lookup subsample) in the target pose
    vert_weights: Tensor  # [K, J] their skinning weights
    tgt_pose: Tensor  # [P] pose code of the target pose
    features: Tensor | None = None  # [V, C, H, W], filled by the model

    def to(self, device) -> "Context":
        f = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Context(f(self.images), self.cams.to(device), f(self.in_transforms), f(self.tgt_transforms),
                       f(self.tgt_verts), f(self.vert_weights), f(self.tgt_pose), f(self.features))


class HumanField(nn.Module):
    def __init__(self, *, canonical: bool, pixel: bool, feature_dim: int = 32, hidden: int = 96, pos_freqs: int = 6,
                 pose_dim: int = 60, shell: float = 0.08, knn: int = 4, residual_scale: float = 0.05):
        super().__init__()
        self.canonical, self.pixel = canonical, pixel
        self.freqs, self.shell, self.knn, self.residual_scale = pos_freqs, shell, knn, residual_scale
        pe = 3 + 6 * pos_freqs
        self.encoder = Encoder(feature_dim) if pixel else None
        self.view_fc = nn.Sequential(nn.Linear(feature_dim + 3, 64), nn.ReLU()) if pixel else None
        if canonical:
            self.deform = nn.Sequential(nn.Linear(pe + pose_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                        nn.Linear(64, 3))
            nn.init.zeros_(self.deform[-1].weight)
            nn.init.zeros_(self.deform[-1].bias)
        else:
            self.deform = None
        fused = 128 if pixel else 0
        self.trunk = nn.Sequential(nn.Linear(pe + fused, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                   nn.Linear(hidden, hidden), nn.ReLU())
        self.sigma = nn.Linear(hidden, 1)
        self.color = nn.Sequential(nn.Linear(hidden + (67 if pixel else 0), hidden // 2), nn.ReLU(),
                                   nn.Linear(hidden // 2, 3))

    def encode(self, ctx: Context) -> Context:
        if self.pixel:
            ctx.features = self.encoder(ctx.images)
        return ctx

    def _coord(self, x: Tensor) -> Tensor:
        return (x - x.new_tensor(COORD_CENTER)) / COORD_SCALE

    def forward(self, x: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        """Density [N] and colour [N, 3] at target-pose points ``x`` [N, 3] (zero density, background-free
        grey colour outside the shell; only points inside it are evaluated)."""
        with torch.autocast(x.device.type, enabled=False):  # skinning in fp32 (a 3×3 solve per point)
            x = x.float()
            w, dist = knn_weights(x.detach(), ctx.tgt_verts.float(), ctx.vert_weights.float(), self.knn)
        inside = (dist < self.shell).nonzero()[:, 0]
        sigma = x.new_zeros(len(x))
        rgb = x.new_full((len(x), 3), 0.5)
        if len(inside) == 0:
            return sigma + 0.0 * sum(p.sum() for p in self.parameters()), rgb  # keeps the graph for backward
        s_in, c_in = self._field(x[inside], w[inside], ctx)
        return sigma.index_put((inside,), s_in.float()), rgb.index_put((inside,), c_in.float())

    def _field(self, x: Tensor, w: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        if self.canonical:
            with torch.autocast(x.device.type, enabled=False):
                xc = inverse_lbs(x, w, ctx.tgt_transforms.float())
            pe = posenc(self._coord(xc), self.freqs)
            pose = ctx.tgt_pose.expand(len(x), -1)
            delta = self.residual_scale * torch.tanh(self.deform(torch.cat([pe, pose], -1)))
            coord = posenc(self._coord(xc + delta), self.freqs)
            x_in = torch.stack([forward_lbs(xc, w, T) for T in ctx.in_transforms]) if self.pixel else None
        else:
            coord = posenc(self._coord(x), self.freqs)
            x_in = x.expand(len(ctx.cams), -1, -1) if self.pixel else None
        parts, extra = [coord], None
        if self.pixel:
            fused, mean_rgb = self._pixel_features(x_in, ctx)
            parts.append(fused)
            extra = torch.cat([fused[:, :64], mean_rgb], -1)
        h = self.trunk(torch.cat(parts, -1))
        sigma = F.softplus(self.sigma(h)[:, 0] - 1.0) * 20.0
        rgb = torch.sigmoid(self.color(h if extra is None else torch.cat([h, extra], -1)))
        return sigma, rgb

    def _pixel_features(self, x_in: Tensor, ctx: Context) -> tuple[Tensor, Tensor]:
        uv, z = project(x_in, ctx.cams)  # [V, N, 2], [V, N]
        res = ctx.cams.resolution
        grid = (uv / res) * 2 - 1  # align_corners=False: pixel centres at (i + 0.5) / res
        feats = torch.cat([ctx.features, ctx.images], 1)  # [V, C + 3, H, W]
        s = F.grid_sample(feats, grid[:, :, None], mode="bilinear", padding_mode="border", align_corners=False)
        s = s[..., 0].permute(0, 2, 1)  # [V, N, C + 3]
        valid = ((grid.abs() <= 1).all(-1) & (z > 0)).to(s)[..., None]  # [V, N, 1]
        v = self.view_fc(s) * valid
        n = valid.sum(0).clamp_min(1.0)
        mean = v.sum(0) / n
        var = ((v - mean) ** 2 * valid).sum(0) / n
        mean_rgb = (s[..., -3:] * valid).sum(0) / n
        return torch.cat([mean, var], -1), mean_rgb


def build_field(method: str, m, pose_dim: int) -> HumanField:
    """The field of ``method`` (pixelhuman / pixel_posed / anerf_subject) from a ModelConfig ``m``."""
    flags = {"pixelhuman": (True, True), "pixel_posed": (False, True), "anerf_subject": (True, False)}[method]
    return HumanField(canonical=flags[0], pixel=flags[1], feature_dim=m.feature_dim, hidden=m.hidden,
                      pos_freqs=m.pos_freqs, pose_dim=pose_dim, shell=m.shell, knn=m.skin_knn,
                      residual_scale=m.residual_scale)
