"""The decoder of the soft-edge video codec (METHODS.md §9): a pix2pix-style conditional GAN
trained per video on (soft-edge map → key frame) pairs, as a recipe on the shared training
engine (``tasks/common/training.py``).

* Generator G: a U-Net (Ronneberger 2015 / pix2pix): ``depth`` stride-2 4×4 conv levels with
  LeakyReLU and instance norm down, transposed convs with ReLU up, skip connections at every
  level, tanh output. Input: the edge map's levels scaled to [0, 1] and up-sampled (nearest) to
  frame size, padded (replicate) to a multiple of 2**depth; output: RGB in [-1, 1].
* Discriminator D: a PatchGAN (pix2pix) on the pair (edge map, frame): ``d_layers`` stride-2 conv
  layers, then two stride-1 layers to one logit per patch.
* Losses (pix2pix): G minimises BCE(D(x, G(x)), 1) · adv_weight + λ · |G(x) − y|₁; D minimises
  ½ [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]. Adam, lr 2e-4, betas (0.5, 0.999).

Batches are pairs drawn with replacement from the key frames and flipped left-right at random,
a pure function of (seed, step) as the engine requires, so an encoder and a decoder that train
the same recipe on the same decoded key frames get the same generator.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def edge_input(maps: np.ndarray | torch.Tensor, levels: int, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [N,h,w]`` levels → ``float [N,1,H,W]`` in [0, 1], up-sampled (nearest) to ``size``."""
    m = torch.as_tensor(np.asarray(maps), dtype=torch.float32)[:, None] / max(levels - 1, 1)
    return F.interpolate(m, size=size, mode="nearest")


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``uint8 [N,H,W,3]`` → ``float [N,3,H,W]`` in [-1, 1]."""
    return torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """``float [N,3,H,W]`` in [-1, 1] → ``uint8 [N,H,W,3]`` (rounded, clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class UNetGenerator(nn.Module):
    def __init__(self, in_ch: int = 1, out_ch: int = 3, channels: int = 32, depth: int = 4):
        super().__init__()
        self.depth = depth
        widths = [min(channels * 2**i, channels * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        prev = in_ch
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(prev, w, 4, 2, 1)]
            if i > 0:
                layers.append(nn.InstanceNorm2d(w, affine=True))
            layers.append(nn.LeakyReLU(0.2))
            self.down.append(nn.Sequential(*layers))
            prev = w
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            out = widths[i - 1] if i > 0 else channels
            # the deepest level has no skip input; every other level concatenates its encoder twin
            inp = widths[i] if i == depth - 1 else widths[i] * 2
            self.up.append(nn.Sequential(nn.ConvTranspose2d(inp, out, 4, 2, 1), nn.InstanceNorm2d(out, affine=True),
                                         nn.ReLU()))
        self.head = nn.Sequential(nn.Conv2d(channels + in_ch, out_ch, 3, 1, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [N,1,H,W] -> [N,3,H,W]
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips, y = [], xp
        for layer in self.down:
            y = layer(y)
            skips.append(y)
        y = skips.pop()
        for i, layer in enumerate(self.up):
            if i > 0:
                y = torch.cat([y, skips.pop()], 1)
            y = layer(y)
        y = self.head(torch.cat([y, xp], 1))
        return y[..., :h, :w]


class PatchDiscriminator(nn.Module):
    def __init__(self, in_ch: int = 4, channels: int = 32, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_ch, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        prev = channels
        for i in range(1, layers):
            w = min(channels * 2**i, channels * 8)
            mods += [nn.Conv2d(prev, w, 4, 2, 1), nn.InstanceNorm2d(w, affine=True), nn.LeakyReLU(0.2)]
            prev = w
        w = min(prev * 2, channels * 8)
        mods += [nn.Conv2d(prev, w, 3, 1, 1), nn.InstanceNorm2d(w, affine=True), nn.LeakyReLU(0.2),
                 nn.Conv2d(w, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, edge: torch.Tensor, img: torch.Tensor) -> torch.Tensor:  # -> [N,1,h',w'] logits
        return self.net(torch.cat([edge, img], 1))


class Pix2PixRecipe:
    """pix2pix on one video's key-frame pairs, for :func:`tasks.common.training.train`."""

    def __init__(self, edges: torch.Tensor, frames: torch.Tensor, *, steps: int, batch: int, lr: float,
                 channels: int, depth: int, d_channels: int, d_layers: int, l1_weight: float, adv_weight: float,
                 seed: int):
        self.edges, self.frames = edges, frames  # [K,1,H,W] in [0,1], [K,3,H,W] in [-1,1]
        self.steps, self.micro_batch, self.lr = steps, batch, lr
        self.arch = dict(channels=channels, depth=depth)
        self.d_arch = dict(channels=d_channels, layers=d_layers)
        self.l1_weight, self.adv_weight, self.seed = l1_weight, adv_weight, seed

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        models: dict[str, nn.Module] = {"generator": UNetGenerator(**self.arch)}
        if self.adv_weight > 0:
            models["discriminator"] = PatchDiscriminator(**self.d_arch)
        return models

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(len(self.frames), (self.micro_batch,), generator=g)
        flip = torch.rand(self.micro_batch, generator=g) < 0.5
        e, y = self.edges[idx].clone(), self.frames[idx].clone()
        e[flip], y[flip] = e[flip].flip(-1), y[flip].flip(-1)
        return {"edge": e.to(device), "frame": y.to(device)}

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        e, y = batch["edge"], batch["frame"]
        if name == "generator":
            fake = models["generator"](e)
            l1 = (fake.float() - y.float()).abs().mean()
            loss = self.l1_weight * l1
            logs = {"l1": float(l1.detach())}
            if "discriminator" in models:
                logits = models["discriminator"](e, fake).float()
                adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                loss = loss + self.adv_weight * adv
                logs["adv"] = float(adv.detach())
            cache["fake"] = fake.detach()
            return loss, logs
        real = models["discriminator"](e, y).float()
        fake = models["discriminator"](e, cache["fake"]).float()
        loss = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return loss, {"d": float(loss.detach())}


@torch.no_grad()
def generate(gen: nn.Module, maps: np.ndarray, levels: int, size: tuple[int, int], batch: int = 16) -> np.ndarray:
    """Every frame from its edge map: ``uint8 [T,h,w]`` → ``uint8 [T,H,W,3]``."""
    gen.eval()
    out = [tensor_to_frames(gen(edge_input(maps[i : i + batch], levels, size))) for i in range(0, len(maps), batch)]
    return np.concatenate(out)
