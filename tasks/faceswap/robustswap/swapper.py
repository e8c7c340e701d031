"""The RobustSwap swapper (METHODS.md §6): source latents + 3D guidance, target through F-space.

For a source image x_s and a target image x_t (the unofficial code's reading of the paper):

1. **Identity latents** w_id = E(x_s) ∈ W+ from the frozen W+ encoder (:mod:`.inversion`); E already
   adds w̄ (its origin), the code's ``w = w_id + MLP(α) + w_avg`` with w̄ folded into E.
2. **Implicit 3D guidance**: w = w_id + MLP(α_s), α_s the source's shape coefficients as our
   regressor (:mod:`.face3d`, the DECA stand-in) reads them; the MLP's output is added to every
   W+ layer. Off (``implicit_3d=False``): w = w_id.
3. **Target in F-space**: a small conv encoder turns x_t into a feature map and an RGB skip at
   ``feature_res`` (the paper: 32² of 1024²; ours: 16² of 64²), which *replace* the generator's own
   features there; the generator's layers above ``feature_res`` run on w. Spatial layout (pose,
   expression, hair, background) comes from the target's features, so the source's own pose and
   expression — which live in W+'s coarse layers — are never used: that is the latent combination
   the paper argues stops source attributes from leaking.
4. **Losses** on the swap y = G(w; F_t):
   * identity ``λ_id (1 − cos(E_id(y), E_id(x_s)))`` with the flow's identity encoder E_id;
   * reconstruction ``λ_rec P(y, x_t)`` (P: our perceptual distance, LPIPS's stand-in) and, on the
     self-swap steps (every ``self_swap_every``-th step x_t := x_s), ``+ λ_mse ‖y − x_s‖²``;
   * explicit 3D loss ``λ_3d L1(V(α_s, e_t, θ_t), V(R(y)))`` (:func:`.geometry.explicit_3d_loss`),
     with R our frozen regressor. Off (``explicit_3d=False``): the term is absent;
   * adversarial non-saturating ``λ_adv softplus(−D(y))``; D is updated every ``d_every`` steps
     with the logistic loss and a lazy R1 penalty (γ = 10).
   Targets of the 3D loss (α_s, e_t, θ_t) are read off the images by the same regressor, as the
   paper reads them with DECA (images only, no labels).

What is ours: the target encoder's architecture, the toy sizes and intervals, and that the
generator's layers above ``feature_res`` are fine-tuned (``train_G=True`` in the code) while its
mapping network is not used at all (W+ comes from E).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .inversion import perceptual_distance
from .stylegan import Discriminator, EqualLinear, Generator, d_logistic_loss, g_nonsaturating_loss, r1_penalty


class ShapeMLP(nn.Module):
    """MLP(α): shape coefficients [N, P] → W offset [N, w_dim] (5 EqualLinear layers in the code)."""

    def __init__(self, n_shape: int, w_dim: int, layers: int = 4, hidden: int = 128):
        super().__init__()
        dims = [n_shape] + [hidden] * (layers - 1)
        self.net = nn.Sequential(*[EqualLinear(a, b, act=True) for a, b in zip(dims[:-1], dims[1:])],
                                 EqualLinear(dims[-1], w_dim))
        # start as a no-op: the swapper begins from the encoder's identity latents
        with torch.no_grad():
            self.net[-1].weight.mul_(0.01)

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        return self.net(alpha)


class TargetEncoder(nn.Module):
    """x_t [N, 3, R, R] → (features [N, C, f, f], rgb [N, 3, f, f]) at f = ``feature_res``."""

    def __init__(self, resolution: int, feature_res: int, out_ch: int, channels: int = 32):
        super().__init__()
        levels = int(math.log2(resolution // feature_res))
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, 1, 1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(levels):
            c2 = min(c * 2, 256)
            layers += [nn.Conv2d(c, c2, 4, 2, 1), nn.GroupNorm(8, c2), nn.LeakyReLU(0.2),
                       nn.Conv2d(c2, c2, 3, 1, 1), nn.GroupNorm(8, c2), nn.LeakyReLU(0.2)]
            c = c2
        self.body = nn.Sequential(*layers)
        self.to_feat = nn.Conv2d(c, out_ch, 3, 1, 1)
        self.to_rgb = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.to_feat(h), self.to_rgb(h)


class RobustSwapper(nn.Module):
    """(x_s, α_s, x_t) → swapped image [N, 3, R, R] in [-1, 1]; the trainable part of RobustSwap."""

    def __init__(self, generator: Generator, n_shape: int, *, feature_res: int = 16, channels: int = 32,
                 implicit_3d: bool = True):
        super().__init__()
        if feature_res >= generator.resolution or feature_res < 4:
            raise ValueError(f"feature_res: {feature_res} must be in [4, {generator.resolution // 2}]")
        g = copy.deepcopy(generator).train().requires_grad_(True)
        # a swap never runs f (W+ comes from E) nor G's layers at or below feature_res (F-space
        # replaces them): drop them, so every parameter the optimiser holds gets a gradient
        g.mapping = g.const = g.conv4 = g.rgb4 = None
        for r in [k for k in g.blocks if int(k) <= feature_res]:
            del g.blocks[r]
        self.generator = g
        self.feature_res, self.implicit_3d = feature_res, implicit_3d
        self.shape_mlp = ShapeMLP(n_shape, generator.w_dim)
        self.target_encoder = TargetEncoder(generator.resolution, feature_res, generator.channels[feature_res], channels)

    def latents(self, w_id: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """w = w_id + MLP(α) in every W+ layer (implicit 3D guidance), or w_id alone when it is off."""
        if not self.implicit_3d:
            return w_id
        return w_id + self.shape_mlp(alpha)[:, None, :]

    def forward(self, w_id: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor, *, noise: str = "random") -> torch.Tensor:
        feat, rgb = self.target_encoder(target)
        return self.generator.synthesis(self.latents(w_id, alpha), start=(self.feature_res, feat, rgb), noise=noise)


class SwapLossWeights:
    """λ's of the swapper's losses (the unofficial code's, with the toy-scale adversarial weight)."""

    def __init__(self, identity: float = 1.0, reconstruction: float = 1.0, mse: float = 1.0, explicit_3d: float = 100.0,
                 adversarial: float = 0.01, r1_gamma: float = 10.0):
        self.identity, self.reconstruction, self.mse = identity, reconstruction, mse
        self.explicit_3d, self.adversarial, self.r1_gamma = explicit_3d, adversarial, r1_gamma


def swapper_terms(swapper: nn.Module, frozen: dict[str, Any], batch: dict[str, torch.Tensor], *, self_swap: bool,
                  explicit_3d: bool, disc: nn.Module | None, noise: str = "random") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The swap of one batch and each (unweighted) loss term, keyed by name.

    ``frozen`` holds ``encoder`` (W+), ``face3d`` (regressor), ``face_model`` (vertices),
    ``identity`` (callable: images in [0, 1], face masks → unit vectors) and ``judge`` (perceptual
    features). ``batch`` holds ``source`` and ``target`` images in [-1, 1] and their face masks
    ``source_mask`` / ``target_mask`` (the swap is read where the target's face is).
    """
    from .geometry import explicit_3d_loss

    src = batch["source"]
    tgt = src if self_swap else batch["target"]
    with torch.no_grad():
        w_id = frozen["encoder"](src)
        src_3d = frozen["face3d"](src)
        tgt_3d = src_3d if self_swap else frozen["face3d"](tgt)
        id_src = frozen["identity"]((src + 1) / 2, batch.get("source_mask"))
    y = swapper(w_id, src_3d["shape"], tgt, noise=noise)
    terms: dict[str, torch.Tensor] = {}
    id_y = frozen["identity"]((y.clamp(-1, 1) + 1) / 2, batch.get("source_mask" if self_swap else "target_mask"))
    terms["identity"] = (1 - (id_y * id_src).sum(-1)).mean()
    terms["reconstruction"] = perceptual_distance(frozen["judge"], y, tgt)
    if self_swap:
        terms["mse"] = (y - src).square().mean()
    if explicit_3d:
        pred = frozen["face3d"](y)
        terms["explicit_3d"] = explicit_3d_loss(frozen["face_model"], pred, src_3d["shape"], tgt_3d["expression"], tgt_3d["pose"])
    if disc is not None:
        terms["adversarial"] = g_nonsaturating_loss(disc(y))
    return y, terms


def total_loss(terms: dict[str, torch.Tensor], lam: SwapLossWeights) -> torch.Tensor:
    weight = {"identity": lam.identity, "reconstruction": lam.reconstruction, "mse": lam.mse,
              "explicit_3d": lam.explicit_3d, "adversarial": lam.adversarial}
    return sum(weight[k] * v for k, v in terms.items())


class SwapperRecipe:
    """Trains :class:`RobustSwapper` (+ its discriminator) on pairs of training renders.

    ``images`` float [N, 3, R, R] in [-1, 1], ``masks`` their face masks [N, 1, R', R']. Each step
    draws ``batch`` sources and targets with different identities (``identity`` [N]); every
    ``self_swap_every``-th step is a self-swap.
    """

    def __init__(self, images: torch.Tensor, identity: torch.Tensor, generator: Generator, discriminator: Discriminator,
                 frozen: dict[str, Any], *, masks: torch.Tensor, n_shape: int, steps: int, batch: int, lr: float, seed: int,
                 feature_res: int = 16, channels: int = 32, implicit_3d: bool = True, explicit_3d: bool = True,
                 self_swap_every: int = 3, d_every: int = 2, r1_every: int = 4, weights: SwapLossWeights | None = None):
        self.images, self.identity, self.masks = images, identity, masks
        self.generator, self.discriminator, self.frozen = generator, discriminator, frozen
        self.n_shape, self.steps, self.micro_batch, self.lr, self.seed = n_shape, steps, batch, lr, seed
        self.feature_res, self.channels = feature_res, channels
        self.implicit_3d, self.explicit_3d = implicit_3d, explicit_3d
        self.self_swap_every, self.d_every, self.r1_every = self_swap_every, d_every, r1_every
        self.lam = weights or SwapLossWeights()

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        models: dict[str, nn.Module] = {"swapper": RobustSwapper(self.generator, self.n_shape, feature_res=self.feature_res,
                                                                 channels=self.channels, implicit_3d=self.implicit_3d)}
        if self.lam.adversarial > 0:
            models["discriminator"] = copy.deepcopy(self.discriminator).train().requires_grad_(True)
        return models

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.lr, betas=(0.0, 0.99))

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        from tasks.common.training import seeded_generator

        g = seeded_generator(self.seed, step, rank)
        n = len(self.images)
        src = torch.randint(0, n, (self.micro_batch,), generator=g)
        tgt = torch.randint(0, n, (self.micro_batch,), generator=g)
        same = self.identity[src] == self.identity[tgt]
        tgt[same] = (tgt[same] + torch.randint(1, n, (int(same.sum()),), generator=g)) % n  # cross-identity pairs
        return {"source": self.images[src].to(device), "target": self.images[tgt].to(device),
                "source_mask": self.masks[src].to(device), "target_mask": self.masks[tgt].to(device)}

    def _frozen_on(self, device: torch.device) -> dict[str, Any]:
        for k, m in self.frozen.items():
            if isinstance(m, nn.Module):
                m.to(device)
        return self.frozen

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        disc = models.get("discriminator")
        if name == "swapper":
            self_swap = self.self_swap_every > 0 and step % self.self_swap_every == 0
            y, terms = swapper_terms(models["swapper"], self._frozen_on(batch["source"].device), batch, self_swap=self_swap,
                                     explicit_3d=self.explicit_3d, disc=disc)
            cache["fake"] = y.detach()
            return total_loss(terms, self.lam), {k: float(v.detach()) for k, v in terms.items()}
        if step % self.d_every:
            return None, {}
        real = batch["target"]
        loss = d_logistic_loss(disc(real), disc(cache["fake"]))
        logs = {"d": float(loss.detach())}
        if (step // self.d_every) % self.r1_every == 0:
            r1 = r1_penalty(disc, real)
            loss = loss + self.lam.r1_gamma / 2 * r1 * self.r1_every
            logs["r1"] = float(r1.detach())
        return loss, logs
