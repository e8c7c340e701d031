"""The StyleGAN RobustSwap swaps inside: a StyleGAN2-style generator and its discriminator, trained here.

RobustSwap (METHODS.md §6) assumes an FFHQ-pretrained StyleGAN2 at 1024²; no such weights exist
offline, so we train a small one on the face renders (64² on CPU, 256² on a GPU). What we keep of
StyleGAN2 (Karras et al. 2020):

* **mapping network** f: z → w, ``mapping_layers`` equalised-lr linear layers with leaky ReLU on a
  pixel-normalised z; a running mean w̄ (``w_avg``) for truncation and for the W+ encoder's origin;
* **synthesis network**: a learned 4×4 constant, then per resolution two **modulated convolutions**
  (weight scaled per input channel by the affine style s = A(w), then demodulated so each output
  channel has unit expected variance), per-pixel **noise** with a learned per-channel strength,
  bias + leaky ReLU (×√2 gain), and a **toRGB skip** (modulated 1×1 conv, not demodulated) whose
  outputs are up-sampled and summed across resolutions;
* W+: each style layer reads its own w (``num_ws`` of them), so an encoder can invert to W+;
* **discriminator**: residual down-sampling blocks, minibatch standard deviation, a linear head;
* **losses**: non-saturating logistic loss, R1 gradient penalty on reals (lazy: every
  ``r1_every`` D steps, scaled by that interval), as in StyleGAN2.

What is ours: no path-length regulariser, no style mixing, bilinear up/down-sampling instead of
the FIR filters, no equalised lr in the discriminator beyond its initialisation (toy scale).

RobustSwap's target path needs one more entry point: :meth:`Generator.synthesis` can *start* at
an intermediate resolution from a given feature map and RGB skip (the paper's "F-space": the
target's spatial features replace the generator's own low-resolution features).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def channels_at(res: int, base: int, cap: int) -> int:
    """Feature channels at resolution ``res``: ``base·(64/res)``-like halving, capped (StyleGAN's
    ``channel_base / res`` rule at toy scale)."""
    return int(min(cap, max(16, base * 32 // res)))


class EqualLinear(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate (weights ~ N(0,1), scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(in_dim), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(y, 0.2) * SQRT2 if self.act else y


class MappingNetwork(nn.Module):
    """f: z [N, z_dim] → w [N, w_dim]; lr multiplier 0.01 as in StyleGAN."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, w_avg_beta: float = 0.995):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[EqualLinear(a, b, lr_mul=0.01, act=True) for a, b in zip(dims[:-1], dims[1:])])
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.beta = w_avg_beta

    def forward(self, z: torch.Tensor, *, update_avg: bool = False) -> torch.Tensor:
        z = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)  # pixel norm
        w = self.net(z)
        if update_avg:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.beta))
        return w


def modulated_conv2d(x: torch.Tensor,       # [N, I, H, W]
                     weight: torch.Tensor,  # [O, I, k, k], already lr-equalised
                     styles: torch.Tensor,  # s [N, I]
                     *, demodulate: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation, as one grouped convolution.

    w'_{n,o,i,k} = s_{n,i} · w_{o,i,k};  with demodulation w''_{n,o,i,k} = w'_{n,o,i,k} / sqrt(Σ_{i,k} w'²_{n,o,i,k} + ε).
    """
    n, i, h, w_ = x.shape
    o, _, kh, kw = weight.shape
    wgt = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if demodulate:
        wgt = wgt * torch.rsqrt(wgt.square().sum(dim=(2, 3, 4), keepdim=True) + eps)
    out = F.conv2d(x.reshape(1, n * i, h, w_), wgt.reshape(n * o, i, kh, kw), padding=kh // 2, groups=n)
    return out.reshape(n, o, h, w_)


class ModulatedConv(nn.Module):
    """Style-modulated k×k convolution: affine A(w) → s, (de)modulated weights, optional 2× up-sampling."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, kernel: int = 3, *, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)  # s starts near 1: an unmodulated conv
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.up = demodulate, up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return modulated_conv2d(x, self.weight * self.scale, self.affine(w), demodulate=self.demodulate)


class StyledLayer(nn.Module):
    """Modulated conv → + noise·strength → + bias → leaky ReLU·√2."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(in_ch, out_ch, w_dim, 3, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x, w)
        if noise is None:
            noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        x = x + noise * self.noise_strength + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * SQRT2


class ToRGB(nn.Module):
    """Modulated 1×1 conv to RGB, no demodulation (StyleGAN2's skip output)."""

    def __init__(self, in_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_ch, 3, w_dim, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class Generator(nn.Module):
    """StyleGAN2 generator (skip architecture): z or W+ → image [N, 3, R, R] in about [-1, 1].

    Style layers in order: conv@4, then (conv_up, conv) per resolution 8..R; toRGB layers share the
    w of the conv before them, so ``num_ws = 2·log2(R) − 2`` (as StyleGAN2 counts them).
    """

    def __init__(self, resolution: int = 64, z_dim: int = 128, w_dim: int = 128, mapping_layers: int = 4,
                 channel_base: int = 256, channel_max: int = 256):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution: {resolution} is not a power of two >= 8")
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.log_res = int(math.log2(resolution))
        self.resolutions = [2**k for k in range(2, self.log_res + 1)]  # 4, 8, ..., R
        ch = {r: channels_at(r, channel_base, channel_max) for r in self.resolutions}
        self.channels = ch
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.const = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        self.conv4 = StyledLayer(ch[4], ch[4], w_dim)
        self.rgb4 = ToRGB(ch[4], w_dim)
        self.blocks = nn.ModuleDict()
        for r in self.resolutions[1:]:
            self.blocks[str(r)] = nn.ModuleList([StyledLayer(ch[r // 2], ch[r], w_dim, up=True),
                                                 StyledLayer(ch[r], ch[r], w_dim), ToRGB(ch[r], w_dim)])
        self.num_ws = 2 * self.log_res - 2

    def ws_index(self, res: int) -> int:
        """Index of the first w that the block *producing* resolution ``res`` reads."""
        return 0 if res == 4 else 2 * int(math.log2(res)) - 5

    def mean_latent(self) -> torch.Tensor:
        """w̄ broadcast to W+: [1, num_ws, w_dim]."""
        return self.mapping.w_avg[None, None].expand(1, self.num_ws, self.w_dim)

    def map(self, z: torch.Tensor, *, truncation: float = 1.0, update_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] → W+ [N, num_ws, w_dim] (the same w in every layer)."""
        w = self.mapping(z, update_avg=update_avg)
        if truncation != 1.0:
            w = self.mapping.w_avg.lerp(w, truncation)
        return w[:, None].expand(-1, self.num_ws, -1)

    def synthesis(self, ws: torch.Tensor, *, start: tuple[int, torch.Tensor, torch.Tensor] | None = None,
                  noise: str = "random", return_features: int | None = None):
        """W+ [N, num_ws, w_dim] → image [N, 3, R, R].

        ``start=(res, features, rgb)`` skips every layer below ``res`` and continues from the given
        features ``[N, C_res, res, res]`` and RGB skip ``[N, 3, res, res]`` (RobustSwap's F-space
        entry). ``noise``: "random" or "const" (zeros: deterministic output, used in evaluation).
        ``return_features=res`` also returns (features, rgb) as they leave resolution ``res``.
        """
        grab = None
        if start is None:
            x = self.const.expand(ws.shape[0], -1, -1, -1)
            x = self.conv4(x, ws[:, 0], None if noise == "random" else torch.zeros_like(x[:, :1]))
            img = self.rgb4(x, ws[:, 1])
            first = 8
            if return_features == 4:
                grab = (x, img)
        else:
            res0, x, img = start
            first = res0 * 2
        for r in self.resolutions:
            if r < first:
                continue
            up, conv, rgb = self.blocks[str(r)]
            i = self.ws_index(r)
            zeros = None if noise == "random" else torch.zeros(x.shape[0], 1, r, r, device=x.device, dtype=x.dtype)
            x = up(x, ws[:, i], zeros)
            x = conv(x, ws[:, i + 1], zeros)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + rgb(x, ws[:, i + 2])
            if return_features == r:
                grab = (x, img)
        return (img, grab) if return_features is not None else img

    def forward(self, z: torch.Tensor, *, truncation: float = 1.0, noise: str = "random", update_avg: bool = False) -> torch.Tensor:
        return self.synthesis(self.map(z, truncation=truncation, update_avg=update_avg), noise=noise)


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / SQRT2


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: image [N, 3, R, R] → logit [N]."""

    def __init__(self, resolution: int = 64, channel_base: int = 256, channel_max: int = 256, mbstd_group: int = 4):
        super().__init__()
        ch = lambda r: channels_at(r, channel_base, channel_max)  # noqa: E731
        self.from_rgb = nn.Conv2d(3, ch(resolution), 1)
        blocks, r = [], resolution
        while r > 4:
            blocks.append(DiscriminatorBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd_group = mbstd_group
        self.conv = nn.Conv2d(ch(4) + 1, ch(4), 3, 1, 1)
        self.fc = nn.Linear(ch(4) * 16, ch(4))
        self.out = nn.Linear(ch(4), 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_rgb(img), 0.2)
        x = self.blocks(x)
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        while n % g:
            g -= 1
        # minibatch standard deviation: one extra feature map with the group's mean std
        y = x.reshape(g, -1, c, h, w).float()
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [N/g]
        y = y.to(x.dtype).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = F.leaky_relu(self.conv(torch.cat([x, y], 1)), 0.2)
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2)
        return self.out(x).squeeze(1)


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(G(z)) = softplus(−D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(disc: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """R1 = E ‖∇_x D(x)‖² on reals (Mescheder et al. 2018); the caller weights it by γ/2."""
    real = real.detach().requires_grad_(True)
    logits = disc(real)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()
