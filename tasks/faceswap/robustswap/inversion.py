"""Inversion into W+: an encoder E(x) → W+ trained with reconstruction losses against a frozen G.

RobustSwap takes the source's identity latents from a frozen inverter (StyleFeatureEditor's
encoder in the unofficial code, 256² input). Ours is a pSp-style (Richardson et al. 2021) encoder
at toy scale: a conv pyramid whose 16², 8² and 4² features each predict a group of W+ layers
(fine, middle, coarse), as offsets from the generator's mean latent w̄ (e4e's convention, so an
untrained encoder already returns the average face). Losses on renders x:

    L = λ_l1 |G(E(x)) − x|₁ + λ_l2 ‖G(E(x)) − x‖² + λ_p P(G(E(x)), x) + λ_w ‖E(x) − w̄‖²

with P the L1 distance of the trunk features of our frozen :class:`.face3d.Face3DNet` (our LPIPS
stand-in; no VGG weights exist offline) and the last term e4e's pull toward the well-trained
region of W. The generator runs with zero noise so that an inversion is a deterministic function.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .stylegan import Generator


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.GroupNorm(8, c_out), nn.LeakyReLU(0.2),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.GroupNorm(8, c_out), nn.LeakyReLU(0.2))


class WPlusEncoder(nn.Module):
    """image [N, 3, R, R] in [-1, 1] → W+ [N, num_ws, w_dim] = w̄ + Δ(x)."""

    def __init__(self, resolution: int, num_ws: int, w_dim: int, *, channels: int = 32):
        super().__init__()
        levels = int(math.log2(resolution)) - 2  # down to 4×4
        chans = [channels * min(2**i, 8) for i in range(levels)]
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(_block(a, b) for a, b in zip([channels] + chans[:-1], chans))
        # the last three pyramid levels (16², 8², 4²) feed fine / middle / coarse W+ groups
        self.taps = [len(chans) - 3, len(chans) - 2, len(chans) - 1] if len(chans) >= 3 else [len(chans) - 1] * 3
        coarse = min(4, num_ws)
        middle = min(4, num_ws - coarse)
        self.groups = [(0, coarse), (coarse, coarse + middle), (coarse + middle, num_ws)]  # [start, end) per tap
        self.groups = [(tap, a, b) for tap, (a, b) in zip(reversed(self.taps), self.groups) if b > a]
        self.heads = nn.ModuleList()
        for tap, a, b in self.groups:
            n = b - a
            self.heads.append(nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(chans[tap] * 4, 256),
                                            nn.LeakyReLU(0.2), nn.Linear(256, n * w_dim)))
        for h in self.heads:  # start at w̄: the first reconstruction is the average face, not noise
            nn.init.zeros_(h[-1].weight)
            nn.init.zeros_(h[-1].bias)
        self.num_ws, self.w_dim = num_ws, w_dim
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], self.stem(x)
        for blk in self.down:
            h = blk(h)
            feats.append(h)
        parts = []
        for head, (tap, a, b) in zip(self.heads, self.groups):
            parts.append(head(feats[tap]).reshape(x.shape[0], b - a, self.w_dim))
        return self.w_avg[None, None] + torch.cat(parts, 1)


def perceptual_distance(judge: nn.Module | None, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the frozen judge's trunk features, normalised by the reference's scale."""
    if judge is None:
        return a.new_zeros(())
    fa, fb = judge.features(a), judge.features(b).detach()
    return (fa - fb).abs().mean() / fb.abs().mean().clamp_min(1e-6)


class EncoderRecipe:
    """Trains :class:`WPlusEncoder` against a frozen generator on render images [N, 3, R, R]."""

    def __init__(self, images: torch.Tensor, generator: Generator, judge: nn.Module | None, *, steps: int, batch: int,
                 lr: float, channels: int, seed: int, l1: float = 1.0, l2: float = 1.0, perceptual: float = 0.5,
                 w_reg: float = 0.01):
        self.images, self.generator, self.judge = images, generator, judge
        self.steps, self.micro_batch, self.lr, self.channels, self.seed = steps, batch, lr, channels, seed
        self.weights = dict(l1=l1, l2=l2, perceptual=perceptual, w_reg=w_reg)
        for m in (generator, judge):
            if m is not None:
                m.eval().requires_grad_(False)

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        enc = WPlusEncoder(self.generator.resolution, self.generator.num_ws, self.generator.w_dim, channels=self.channels)
        enc.w_avg.copy_(self.generator.mapping.w_avg)
        return {"encoder": enc}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr)

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(0, len(self.images), (self.micro_batch,), generator=g)
        return {"image": self.images[idx].to(device)}

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        x = batch["image"]
        self.generator.to(x.device)
        if self.judge is not None:
            self.judge.to(x.device)
        ws = models["encoder"](x)
        return reconstruction_loss(self.generator, self.judge, ws, x, **self.weights)


def reconstruction_loss(generator: Generator, judge: nn.Module | None, ws: torch.Tensor, x: torch.Tensor, *,
                        l1: float, l2: float, perceptual: float, w_reg: float) -> tuple[torch.Tensor, dict[str, float]]:
    y = generator.synthesis(ws, noise="const")
    t_l1 = (y - x).abs().mean()
    t_l2 = (y - x).square().mean()
    t_p = perceptual_distance(judge, y, x) if perceptual > 0 else y.new_zeros(())
    t_w = (ws - generator.mapping.w_avg).square().mean()
    loss = l1 * t_l1 + l2 * t_l2 + perceptual * t_p + w_reg * t_w
    return loss, {"l1": float(t_l1.detach()), "mse": float(t_l2.detach()), "perceptual": float(t_p.detach()),
                  "w_reg": float(t_w.detach())}


@torch.no_grad()
def invert(encoder: WPlusEncoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(images[i : i + batch]) for i in range(0, len(images), batch)])
