"""The small convolutional networks every learned part of the ``faceswap`` flow is built from.

* :class:`ConvEncoder` — image → vector (the identity encoder, the attribute regressor, the
  discriminator's trunk).
* :class:`SwapGenerator` — the one generator backbone SAMAE and the target-oriented baseline
  share (same size, same budget): a U-Net whose bottleneck residual blocks are modulated by the
  identity vector through adaptive instance normalisation (SimSwap's ID-injection module). The
  paper gives no architecture for SAMAE; this one is ours, chosen so the two training schemes
  differ only in their inputs and losses.
* :class:`PatchDiscriminator` — a PatchGAN with spectral norm, returning its intermediate
  features too (the baseline's weak feature-matching attribute loss reads them).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _down(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 4, 2, 1)]
    if norm:
        layers.append(nn.GroupNorm(min(8, cout // 4) or 1, cout))
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """[N, C, R, R] → [N, out]; R a power of two ≥ 16 (down to 4×4, then a linear layer)."""

    def __init__(self, out: int, width: int = 32, resolution: int = 64, in_ch: int = 3):
        super().__init__()
        chans, layers, r, c = [], [nn.Conv2d(in_ch, width, 3, 1, 1), nn.LeakyReLU(0.2)], resolution, width
        while r > 4:
            nc = min(c * 2, width * 8)
            layers.append(_down(c, nc))
            chans.append(nc)
            c, r = nc, r // 2
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 16, 256), nn.LeakyReLU(0.2), nn.Linear(256, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x * 2 - 1))


class AdaINBlock(nn.Module):
    """Residual block whose two norms take scale and shift from the identity vector."""

    def __init__(self, ch: int, id_dim: int):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(ch, ch, 3, 1, 1), nn.Conv2d(ch, ch, 3, 1, 1)
        self.s1, self.s2 = nn.Linear(id_dim, 2 * ch), nn.Linear(id_dim, 2 * ch)

    @staticmethod
    def _adain(x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = style[:, :, None, None].chunk(2, 1)
        return F.instance_norm(x) * (1 + gamma) + beta

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self._adain(self.c1(x), self.s1(z)), 0.2)
        h = self._adain(self.c2(h), self.s2(z))
        return x + h


class SwapGenerator(nn.Module):
    """(target context [N, in_ch, R, R], identity z [N, D]) → image [N, 3, R, R] in [0, 1].

    U-Net: three stride-2 encoder stages, ``blocks`` AdaIN residual blocks at R/8 carrying the
    identity, three decoder stages with skip connections from the encoder.
    """

    def __init__(self, id_dim: int, width: int = 32, in_ch: int = 4, blocks: int = 4):
        super().__init__()
        w = width
        self.inp = nn.Sequential(nn.Conv2d(in_ch, w, 3, 1, 1), nn.LeakyReLU(0.2))
        self.d1, self.d2, self.d3 = _down(w, 2 * w), _down(2 * w, 4 * w), _down(4 * w, 8 * w)
        self.mid = nn.ModuleList(AdaINBlock(8 * w, id_dim) for _ in range(blocks))
        self.u3 = self._up(8 * w, 4 * w)
        self.u2 = self._up(8 * w, 2 * w)
        self.u1 = self._up(4 * w, w)
        self.out = nn.Sequential(nn.Conv2d(2 * w, w, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, 3, 3, 1, 1))

    @staticmethod
    def _up(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1),
                             nn.GroupNorm(min(8, cout // 4) or 1, cout), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        e0 = self.inp(x * 2 - 1)
        e1 = self.d1(e0)
        e2 = self.d2(e1)
        h = self.d3(e2)
        for blk in self.mid:
            h = blk(h, z)
        h = self.u3(h)
        h = self.u2(torch.cat([h, e2], 1))
        h = self.u1(torch.cat([h, e1], 1))
        return torch.sigmoid(self.out(torch.cat([h, e0], 1)))


class PatchDiscriminator(nn.Module):
    """Image [N, 3, R, R] → (patch logits [N, 1, R/8, R/8], features of every stage)."""

    def __init__(self, width: int = 32, in_ch: int = 3):
        super().__init__()
        sn = nn.utils.spectral_norm
        w = width
        self.stages = nn.ModuleList([
            nn.Sequential(sn(nn.Conv2d(in_ch, w, 4, 2, 1)), nn.LeakyReLU(0.2)),
            nn.Sequential(sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2)),
            nn.Sequential(sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2)),
        ])
        self.logit = sn(nn.Conv2d(4 * w, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats, h = [], x * 2 - 1
        for s in self.stages:
            h = s(h)
            feats.append(h)
        return self.logit(h), feats
