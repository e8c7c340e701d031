"""3DGS training as a recipe of the shared engine (``tasks.common.training``), ± erank-GS.

One model ("gaussians"), one Adam with 3DGS's per-parameter learning rates (the mean's decays
exponentially, set by the ``schedule`` hook as a pure function of the step). Each step renders
one training view (chosen by ``seeded_generator(seed, step)``, so both variants of a seed see the
same views in the same order) and minimises (1 − λ_dssim)·L1 + λ_dssim·(1 − SSIM), plus — for
the erank variants, from ``erank.from_step`` — the effective-rank barrier and thin term
(:mod:`tasks.erank_gs.erank`). Densification needs the previous step's gradients: the engine
calls ``loss`` right after the previous optimiser step, so the strategy accumulates there, then
refines in place (:mod:`tasks.erank_gs.densify`) before the new render.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from tasks.common.training import seeded_generator

from .config import VARIANTS, ErankGSConfig
from .densify import make_strategy
from .erank import erank_loss
from .gaussians import GaussianModel
from .metrics import ssim
from .render import render
from .scene_io import SceneSplit, load_split

BACKGROUND = (1.0, 1.0, 1.0)  # NeRF-synthetic convention: RGBA composited on white


def scene_frame(cameras: list) -> tuple[torch.Tensor, float]:
    """3DGS's scene normalisation: centre of the cameras and 1.1 × their largest distance to it."""
    centers = torch.stack([c.center for c in cameras])
    mid = centers.mean(0)
    return mid, 1.1 * float((centers - mid).norm(dim=-1).max())


def scene_bounds(cameras: list) -> tuple[torch.Tensor, float]:
    """Where to scatter the random initial Gaussians: the cube the cameras look into (half side
    = ⅓ of the mean camera distance from their centre, a loose box for object-centric scenes)."""
    centers = torch.stack([c.center for c in cameras])
    mid = centers.mean(0)
    return mid, float((centers - mid).norm(dim=-1).mean()) / 3.0


class GSRecipe:
    micro_batch = 1

    def __init__(self, cfg: ErankGSConfig, scene_dir: Path | str, variant: str, seed: int, *, renderer: str,
                 resolution: int):
        self.cfg, self.scene_dir, self.variant, self.seed = cfg, str(scene_dir), variant, seed
        self.renderer, self.resolution = renderer, resolution
        self.steps = cfg.train.steps
        self.regularise, self.strategy_name = VARIANTS[variant]
        self._data: SceneSplit | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._last: Any = None
        self._gen = torch.Generator().manual_seed(seed + 12345)
        self.events: list[dict[str, Any]] = []

    @property
    def data(self) -> SceneSplit:
        if self._data is None:
            self._data = load_split(self.scene_dir, "train", self.resolution)
        return self._data

    def build(self) -> dict[str, torch.nn.Module]:
        _, extent = scene_frame(self.data.cameras)
        mid, half = scene_bounds(self.data.cameras)
        d = self.cfg.train.densify
        self.strategy = make_strategy(self.strategy_name, start=d.start, stop=d.stop, every=d.every,
                                      reset_every=d.reset_every, grad_threshold=d.grad_threshold,
                                      max_gaussians=d.max_gaussians, extent=extent)
        self.extent = extent
        # the same initial Gaussians for every variant of a seed
        model = GaussianModel.random_init(self.cfg.train.init_points, mid, half, torch.Generator().manual_seed(self.seed))
        return {"gaussians": model}

    def optimizer(self, name: str, module: GaussianModel) -> torch.optim.Optimizer:
        t = self.cfg.train
        groups = [("means", t.lr_means * self.extent), ("f_dc", t.lr_color), ("opacity_logits", t.lr_opacity),
                  ("log_scales", t.lr_scales), ("quats", t.lr_quats)]
        self._opt = torch.optim.Adam([{"params": [getattr(module, k)], "lr": lr, "name": k} for k, lr in groups],
                                     lr=0.0, eps=1e-15)
        return self._opt

    def schedule(self, name: str, opt: torch.optim.Optimizer, step: int) -> None:
        t = self.cfg.train
        frac = min(1.0, step / max(1, self.steps))
        lr = math.exp((1 - frac) * math.log(t.lr_means) + frac * math.log(t.lr_means_final)) * self.extent
        for g in opt.param_groups:
            if g.get("name") == "means":
                g["lr"] = lr

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = seeded_generator(self.seed, step, rank)
        return {"index": torch.randint(len(self.data), (1,), generator=g)}

    def loss(self, name: str, models: dict[str, Callable], batch: dict[str, torch.Tensor], cache: dict[str, Any],
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        model: GaussianModel = models[name]
        dev = model.means.device
        logs: dict[str, float] = {}
        if self._last is not None:  # the previous step's backward is done: its gradients are final
            out, w, h = self._last
            if out.means2d.grad is not None:
                self.strategy.accumulate(out.means2d.grad.detach(),
                                         out.absgrad() if self.strategy.uses_absgrad else None, out.visible, w, h)
            self._last = None
        changed = self.strategy.step(step, model, self._opt, self._gen)
        if changed:
            self.events.append({"step": step, **changed})
        i = int(batch["index"])
        cam = self.data.cameras[i]
        gt = self.data.images[i].to(dev)
        out = render(self.renderer, model, cam, torch.tensor(BACKGROUND, device=dev),
                     track_absgrad=self.strategy.uses_absgrad)
        l1 = (out.rgb - gt).abs().mean()
        s = ssim(out.rgb, gt)
        lam = self.cfg.train.lambda_dssim
        loss = (1 - lam) * l1 + lam * (1 - s)
        if self.regularise and step >= self.cfg.erank.from_step:
            reg, info = erank_loss(model.scales, self.cfg.erank.lambda_erank, self.cfg.erank.lambda_thin)
            loss = loss + reg
            logs.update(info)
        self._last = (out, cam.width, cam.height)
        logs.update(l1=float(l1.detach()), ssim=float(s.detach()), n=float(len(model)))
        return loss, logs
