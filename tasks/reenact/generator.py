"""The anime head generator (Animo's anime branch, PIRenderer-style; METHODS.md §7.3 and §4.2).

* **MappingNet**: the 20-d AnimeCeleb pose (17 morph weights + yaw, pitch, roll / 30°) → a latent
  motion descriptor z (PIRenderer maps a window of 3DMM coefficients with 1-D convs; our driving
  frames are single poses, so an MLP).
* **WarpingNet**: an encoder–decoder over the source image (at half resolution, ``flow_down``)
  whose decoder is modulated by z (AdaIN) and predicts a dense flow field, upsampled; the source
  is resampled with it (``grid_sample``).
* **EditingNet**: refines the warped image with the source's own features, again modulated by z,
  and paints what warping cannot (closed eyes, an opened mouth are new pixels, not moved ones)
  through a mask that starts near 0, so the warped image stays sharp wherever the warp was right.

No pretrained VGG exists here, so the perceptual loss is replaced by what can be computed from
the pixels and trained here: multi-scale L1 (scales 1, ½, ¼, like Animo's multi-scale VGG) +
(1 − SSIM) + ``w_perceptual`` × a perceptual term on the features of the morph regressor trained
here on the renders (:func:`tasks.reenact.regressor.perceptual_loss`, frozen) on the edited image
(``w_final``, Animo's 4, after ``edit_start``); the warped image (``w_warp``, Animo's 2.5) is
scored by multi-scale L1 at 1/``warp_pool`` resolution (see :meth:`GeneratorRecipe._warp_loss`);
plus a least-squares PatchGAN discriminator on the edited image, conditioned on the driving pose,
with a small weight ``w_adv`` from ``adv_start`` on.

What made it draw faces at the CPU budget (1,000 steps of batch 4; 2026-12-03, 600-step probes on
the default data, held-out identities): the basis-frame source
(:class:`~tasks.reenact.data.PairSampler`), the coarse warp loss, the masked editing net and
lr 1e-3 — at our former 2e-4 (Animo's is 1e-4, for ~10⁵ steps) every variant stayed a blur with
erased eyes; the README's reenact section has the probe table.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import GeneratorConfig
from .data import POSE_DIM


# ------------------------------------------------------------------------------ losses


def _gauss(size: int = 7, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM of images in [0, 1], [N, C, H, W] (Gaussian window, the usual C1/C2)."""
    c = a.shape[1]
    g = _gauss(window, 1.5, a.device, a.dtype)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    pad = window // 2

    def blur(x):
        return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a**2
    s_bb = blur(b * b) - mu_b**2
    s_ab = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return m.mean()


def multiscale_l1(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    loss = a.new_zeros(())
    for i in range(scales):
        if i:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        loss = loss + (a - b).abs().mean()
    return loss / scales


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return multiscale_l1(pred, target) + (1 - ssim(pred, target))


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, images in [0, 1]."""
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


# ------------------------------------------------------------------------------ networks


class AdaIN(nn.Module):
    def __init__(self, channels: int, descriptor: int):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(descriptor, 2 * channels)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(z).chunk(2, -1)
        return self.norm(x) * (1 + gamma[..., None, None]) + beta[..., None, None]


class ConvBlock(nn.Module):
    """conv → (AdaIN with z | instance norm) → LeakyReLU."""

    def __init__(self, cin: int, cout: int, descriptor: int | None = None, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.norm = AdaIN(cout, descriptor) if descriptor else nn.InstanceNorm2d(cout, affine=True)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x)
        x = self.norm(x, z) if isinstance(self.norm, AdaIN) else self.norm(x)
        return F.leaky_relu(x, 0.2)


class MappingNet(nn.Module):
    def __init__(self, pose_dim: int = POSE_DIM, descriptor: int = 128, layers: int = 3):
        super().__init__()
        dims = [pose_dim] + [descriptor] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*mods)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        return self.net(pose)


class UNet(nn.Module):
    """Encoder (instance norm) → decoder modulated by z, skip connections at every scale."""

    def __init__(self, cin: int, cout: int, ch: int, depth: int, descriptor: int):
        super().__init__()
        chans = [ch * min(2**i, 4) for i in range(depth + 1)]
        self.inp = ConvBlock(cin, chans[0])
        self.down = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], stride=2) for i in range(depth))
        self.mid = ConvBlock(chans[-1], chans[-1], descriptor)
        self.up = nn.ModuleList(ConvBlock(chans[i + 1] + chans[i], chans[i], descriptor) for i in reversed(range(depth)))
        self.out = nn.Conv2d(chans[0], cout, 3, 1, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        skips = [self.inp(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        h = self.mid(skips.pop(), z)
        for u in self.up:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = u(torch.cat([h, skips.pop()], 1), z)
        return self.out(h)


class AnimeGenerator(nn.Module):
    """source image [N, 3, H, W] in [0, 1] + driving pose [N, 20] → (warped, edited, flow).

    ``flow_down``: the warping net reads the source at 1/flow_down resolution and its flow is
    upsampled (bilinear) — a head's motion is smooth, and PIRenderer's flow is coarser than its image
    too; at 2 it costs 0.73× the step time for the same PSNR (measured on the default data)."""

    def __init__(self, channels: int = 32, descriptor: int = 128, depth: int = 3, flow_down: int = 1):
        super().__init__()
        if flow_down not in (1, 2):
            raise ValueError(f"flow_down must be 1 or 2, got {flow_down}")
        self.flow_down = flow_down
        self.mapping = MappingNet(POSE_DIM, descriptor)
        self.warping = UNet(3, 2, channels, depth - (flow_down > 1), descriptor)
        self.editing = UNet(6, 4, channels, depth, descriptor)  # RGB to paint + where to paint it
        # start from the identity warp and an editing net that changes nothing: the first output is
        # the sharp source, not the blur an editing net painting from scratch converges through
        for out in (self.warping.out, self.editing.out):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    @classmethod
    def of(cls, cfg: GeneratorConfig) -> "AnimeGenerator":
        return cls(cfg.channels, cfg.descriptor, cfg.depth, cfg.flow_down)

    def forward(self, source: torch.Tensor, pose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.mapping(pose)
        n, _, h, w = source.shape
        coarse = F.avg_pool2d(source, self.flow_down) if self.flow_down > 1 else source
        flow = torch.tanh(self.warping(coarse * 2 - 1, z))  # offsets in [-1, 1] grid units
        if self.flow_down > 1:
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
        flow = flow.permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=source.device, dtype=source.dtype),
                                torch.linspace(-1, 1, w, device=source.device, dtype=source.dtype), indexing="ij")
        grid = torch.stack([xs, ys], -1)[None] + flow
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
        # the editing net paints what warping cannot (closed eyes, an opened mouth are new pixels, not
        # moved ones) and only where it must: a mask, near 0 at initialisation, blends its paint over
        # the warped image, which stays sharp wherever the warp was right
        e = self.editing(torch.cat([warped, source], 1) * 2 - 1, z)
        mask = torch.sigmoid(e[:, 3:] - 4.0)
        edited = warped * (1 - mask) + mask * torch.sigmoid(4 * e[:, :3])
        return warped, edited, flow


class PatchDiscriminator(nn.Module):
    """LSGAN PatchGAN over (image, pose broadcast): one real/fake score per ~16-pixel patch."""

    def __init__(self, channels: int = 32, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = []
        c = 3 + POSE_DIM
        for i in range(layers):
            c2 = channels * 2**i
            mods += [nn.utils.spectral_norm(nn.Conv2d(c, c2, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c = c2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        p = pose[..., None, None].expand(-1, -1, *image.shape[-2:])
        return self.net(torch.cat([image * 2 - 1, p], 1))


# ------------------------------------------------------------------------------ recipe


class GeneratorRecipe:
    """Self-reenactment pairs of one identity and style: source frame + the driving frame's pose →
    the driving frame. ``pairs`` draws them (see :mod:`tasks.reenact.data`); ``cfg`` is the flow's
    :class:`~tasks.reenact.config.GeneratorConfig`; ``judge`` the frozen morph regressor whose
    features are the perceptual term."""

    def __init__(self, pairs, cfg: GeneratorConfig, *, seed: int, judge: nn.Module | None = None):
        self.pairs, self.cfg, self.seed = pairs, cfg, seed
        self.steps, self.micro_batch, self.lr = cfg.steps, cfg.batch, cfg.lr
        self.edit_start, self.adv_start = int(cfg.edit_start * cfg.steps), int(cfg.adv_start * cfg.steps)
        self.judge = judge if cfg.w_perceptual > 0 else None
        if self.judge is not None:
            self.judge.eval().requires_grad_(False)

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        models: dict[str, nn.Module] = {"generator": AnimeGenerator.of(self.cfg)}
        if self.cfg.w_adv > 0:
            models["discriminator"] = PatchDiscriminator(self.cfg.channels)
        return models

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=(0.5, 0.999))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        b = self.pairs.sample(self.micro_batch, seeded_generator(self.seed, step, rank))
        return {k: v.to(device) for k, v in b.items()}

    def _recon(self, pred: torch.Tensor, target: torch.Tensor, logs: dict, tag: str) -> torch.Tensor:
        loss = reconstruction_loss(pred, target)
        if self.judge is not None:
            from .regressor import perceptual_loss

            self.judge.to(pred.device)
            lp = perceptual_loss(self.judge, pred, target)
            logs[f"perc_{tag}"] = float(lp.detach())
            loss = loss + self.cfg.w_perceptual * lp
        return loss

    def _warp_loss(self, warped: torch.Tensor, target: torch.Tensor, logs: dict) -> torch.Tensor:
        """The warp moves the head; painting the expression is the editing net's job. Scored at full
        resolution, a warp that cannot line the eyes up learns to smear skin over them (the cheaper
        L1 guess) and the editing net inherits eyeless faces; scored at 1/``warp_pool`` (L1 only, where
        an eye is a pixel or two) it keeps them."""
        k = self.cfg.warp_pool
        if k > 1:
            return multiscale_l1(F.avg_pool2d(warped, k), F.avg_pool2d(target, k))
        return self._recon(warped, target, logs, "warp")

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        src, tgt, pose = batch["source"], batch["target"], batch["pose"]
        if name == "generator":
            warped, edited, _ = models["generator"](src, pose)
            warped, edited, tgt32 = warped.float(), edited.float(), tgt.float()
            logs: dict[str, float] = {}
            l_warp = self._warp_loss(warped, tgt32, logs)
            loss = self.cfg.w_warp * l_warp
            logs["warp"] = float(l_warp.detach())
            if step >= self.edit_start:
                l_final = self._recon(edited, tgt32, logs, "final")
                loss = loss + self.cfg.w_final * l_final
                logs["final"] = float(l_final.detach())
                logs["l1"] = float((edited - tgt32).abs().mean().detach())
            if "discriminator" in models and step >= self.adv_start:
                l_adv = ((models["discriminator"](edited.to(src.dtype), pose).float() - 1) ** 2).mean()
                loss = loss + self.cfg.w_adv * l_adv
                logs["adv"] = float(l_adv.detach())
            cache["fake"] = edited.detach().to(src.dtype)
            return loss, logs
        if step < self.adv_start:
            return None, {}
        d_real = models["discriminator"](tgt, pose).float()
        d_fake = models["discriminator"](cache["fake"], pose).float()
        loss = ((d_real - 1) ** 2).mean() + (d_fake**2).mean()
        return loss, {"d": float(loss.detach())}
