"""The target-oriented baseline SAMAE argues against: a SimSwap-style identity-injection swapper.

Same generator backbone and budget as SAMAE (:class:`~.networks.SwapGenerator`, the identity
entering through AdaIN in the bottleneck), but trained the target-oriented way, with **no
ground truth**: random (source, target) frames of *different* identities, and

    L = λ_id·(1 − cos(E_id(ŷ), E_id(x_s)))          identity of the source
      + λ_fm·Σ_l |D_l(ŷ) − D_l(x_t)|₁  (last stages) SimSwap's weak feature matching: target attributes
      + λ_bg·|(ŷ − x_t) ⊙ (1 − M_t)|₁               the non-face region stays the target's (ours)
      + λ_adv·hinge-GAN(ŷ)

— the "seesaw" between identity and attribute terms. The generator sees the whole target
(image + mask channel). Swap: ŷ composited into the target with its dilated mask, as for SAMAE.
SimSwap's own reconstruction term for same-identity pairs is left out on purpose: the issue
defines this baseline as having no ground truth.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from tasks.common.artifacts import read_json
from tasks.common.config import ConfigSection
from tasks.common.training import seeded_generator

from .dataset import FaceBatch
from .samae import GeneratorMethod, SwapRecipe, dilate, hinge_d, load_generator
from .tools import load_tools


class SimSwapOptions(ConfigSection):
    w_id: float = Field(2.0, ge=0)
    """λ_id (SimSwap: 10 against its λ_adv 1)."""
    w_fm: float = Field(2.0, ge=0)
    """λ_fm, weak feature matching on the discriminator's last two stages."""
    w_bg: float = Field(1.0, ge=0)
    """λ_bg, L1 to the target outside its face mask."""
    w_adv: float = Field(0.05, ge=0)
    """λ_adv (hinge GAN)."""
    dilate: int = Field(2, ge=0, le=64)
    """Dilation of the target's mask when compositing, pixels."""


class SimSwapRecipe(SwapRecipe):
    def batch(self, step, rank, device):
        g = seeded_generator(self.run.seed, step, rank)
        r = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
        ident = self.frames.identity
        t = r.integers(len(ident), size=self.micro_batch)
        s = np.array([int(r.choice(np.flatnonzero(ident != ident[i]))) for i in t])
        xt, mt = self.frames.tensors(t, device)
        xs, ms = self.frames.tensors(s, device)
        self.tools.to(device)
        with torch.no_grad():
            z = self.tools.identity(xs, ms)
        return {"xt": xt, "mt": mt, "z": z}

    def loss(self, name, models, batch, cache, step):
        xt, mt, z = batch["xt"], batch["mt"], batch["z"]
        o = self.opts
        if name == "generator":
            out = models["generator"](torch.cat([xt, mt], 1), z)
            cache["fake"] = out.detach()
            ident = (1 - (self.tools.identity(out, mt) * z).sum(-1)).mean()
            logit, f_fake = models["discriminator"](out)
            with torch.no_grad():
                _, f_real = models["discriminator"](xt)
            fm = sum((a - b).abs().mean() for a, b in zip(f_fake[-2:], f_real[-2:]))
            bg = ((out - xt).abs() * (1 - mt)).mean()
            adv = -logit.mean()
            loss = o.w_id * ident + o.w_fm * fm + o.w_bg * bg + o.w_adv * adv
            return loss, {"id": float(ident), "fm": float(fm), "bg": float(bg), "adv": float(adv)}
        real, _ = models["discriminator"](xt)
        fake, _ = models["discriminator"](cache["fake"])
        loss = hinge_d(real, fake)
        return loss, {"d": float(loss)}


class SimSwapLike(GeneratorMethod):
    Options = SimSwapOptions
    Recipe = SimSwapRecipe

    @torch.no_grad()
    def swap(self, out_dir: Path, source: FaceBatch, target: FaceBatch, device: str) -> torch.Tensor:
        meta = read_json(Path(out_dir) / "method.json")
        tools = load_tools(meta["tools_dir"], device)
        g = load_generator(out_dir, meta["width"]).to(device)
        xt = target.images
        m = dilate((target.masks > 0.5).float(), self.opts.dilate)
        out = g(torch.cat([xt, (target.masks > 0.5).float()], 1), tools.identity(source.images, source.masks))
        return (m * out + (1 - m) * xt).clamp(0, 1)
