"""RobustSwap's stand-ins for DECA and ArcFace: one small network, trained here on the renders.

The paper reads FLAME coefficients off images with DECA, for the source's shape α (implicit 3D
guidance) and for the explicit 3D loss on the swapped image. DECA does not exist offline, so a
convolutional regressor is trained here on the renders with three heads:

* ``shape``      — the identity vector α (anny phenotype + face-basis coefficients; MSE on
  labels standardised with the training set's mean/std),
* ``expression`` — the 52 ARKit blendshape weights (sigmoid; cross-entropy against the soft
  weights, whose optimum is the mean, where L1's is the median "neutral" answer),
* ``pose``       — yaw, pitch, roll (radians, L1 scaled by ``POSE_SCALE``).

It is deliberately *not* the flow's evaluation regressor (``tasks.faceswap.tools``): a swapper
trained through the judge's own network could satisfy it without carrying the geometry.
Its trunk's 256-d features are also the feature space of our FID-like score (:mod:`.fid`).
What is ours: the architecture and the loss weights.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

POSE_SCALE = 0.5  # radians: the pose head predicts angle / POSE_SCALE


class Face3DNet(nn.Module):
    """image [N, 3, S, S] in [-1, 1] → dict(shape, expression, pose, features)."""

    def __init__(self, n_shape: int, n_expr: int, *, size: int = 64, channels: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c, s = 3, size
        for i in range(4):
            c2 = channels * min(2**i, 8)
            layers += [nn.Conv2d(c, c2, 3, 2, 1), nn.GroupNorm(8, c2), nn.LeakyReLU(0.2),
                       nn.Conv2d(c2, c2, 3, 1, 1), nn.GroupNorm(8, c2), nn.LeakyReLU(0.2)]
            c, s = c2, (s + 1) // 2
        self.trunk = nn.Sequential(*layers)
        self.flat = nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, 256), nn.LeakyReLU(0.2))
        self.shape_head = nn.Linear(256, n_shape)
        self.expr_head = nn.Linear(256, n_expr)
        self.pose_head = nn.Linear(256, 3)
        # label standardisation of the shape head (set from the training set before training)
        self.register_buffer("shape_mean", torch.zeros(n_shape))
        self.register_buffer("shape_std", torch.ones(n_shape))
        self.n_shape, self.n_expr, self.size = n_shape, n_expr, size

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """The 256-d shared feature (FID-like score space)."""
        if img.shape[-1] != self.size:
            img = F.interpolate(img, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.flat(self.trunk(img))

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(img)
        z = self.shape_head(f)
        e = self.expr_head(f)
        return {"shape_z": z, "shape": z * self.shape_std + self.shape_mean, "expression_logit": e,
                "expression": torch.sigmoid(e), "pose": self.pose_head(f) * POSE_SCALE, "features": f}


class Face3DRecipe:
    """Trains :class:`Face3DNet` on render arrays, for :func:`tasks.common.training.train`.

    ``images`` float [N, 3, S, S] in [-1, 1]; ``shape`` [N, n_shape] in [0, 1]; ``expression`` [N, 52] in [0, 1];
    ``pose`` [N, 3] radians (tensors).
    """

    def __init__(self, images, shape, expression, pose, *, steps: int, batch: int, lr: float,
                 channels: int, size: int, seed: int):
        self.images, self.shape, self.expression, self.pose = images, shape, expression, pose
        self.steps, self.micro_batch, self.lr, self.channels, self.size, self.seed = steps, batch, lr, channels, size, seed

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        net = Face3DNet(self.shape.shape[1], self.expression.shape[1], size=self.size, channels=self.channels)
        net.shape_mean.copy_(self.shape.float().mean(0))
        net.shape_std.copy_(self.shape.float().std(0) + 1e-3)
        return {"face3d": net}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def schedule(self, name: str, opt: torch.optim.Optimizer, step: int) -> None:
        for g in opt.param_groups:  # cosine decay: the judge should end settled, not mid-step
            g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * step / max(self.steps, 1)))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        
        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(0, len(self.shape), (self.micro_batch,), generator=g)
        img = self.images[idx]
        # small brightness jitter: generated images are never pixel-exact renders
        img = (img + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5)).clamp(-1, 1)
        return {"image": img.to(device), "shape": self.shape[idx].to(device), "expression": self.expression[idx].to(device),
                "pose": self.pose[idx].to(device)}

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        net = models["face3d"]
        inner = net.module if hasattr(net, "module") else net
        out = net(batch["image"])
        l_shape = F.mse_loss(out["shape_z"].float(), ((batch["shape"] - inner.shape_mean) / inner.shape_std).float())
        l_expr = F.binary_cross_entropy_with_logits(out["expression_logit"].float(), batch["expression"].float())
        l_pose = F.l1_loss(out["pose"].float(), batch["pose"].float()) / POSE_SCALE
        loss = l_shape + l_expr + l_pose
        with torch.no_grad():
            shape_mae = (out["shape"] - batch["shape"]).abs().mean()
            expr_mae = (out["expression"] - batch["expression"]).abs().mean()
        return loss, {"shape_mae": float(shape_mae), "expr_mae": float(expr_mae),
                      "pose_mae_deg": float(l_pose.detach()) * POSE_SCALE * 57.2958}


@torch.no_grad()
def predict(net: Face3DNet, images: torch.Tensor, batch: int = 64) -> dict[str, torch.Tensor]:
    """Run the network on model-space images [N, 3, S, S] in batches (eval mode)."""
    net.eval()
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(images), batch):
        for k, v in net(images[i : i + batch]).items():
            outs.setdefault(k, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in outs.items()}
