"""Adaptive density control (ADC) of 3DGS and erank-GS's absolute-gradient variant (METHODS.md §2.3).

Written as gsplat's strategies are (a small dataclass with hooks, chosen by name), but operating
in place on :class:`~tasks.erank_gs.gaussians.GaussianModel` and the one Adam optimiser the
shared training engine gives a model: gsplat's ``DefaultStrategy`` swaps in new ``Parameter``
objects under a one-optimiser-per-tensor layout, which the engine (one optimiser per model,
checkpointed by parameter name) does not have.

* ``default`` — 3DGS: accumulate the norm of the view-space positional gradient (in NDC units,
  as gsplat normalises it); every ``every`` steps Gaussians whose mean gradient ≥ τ (2e-4) are
  cloned if small (max scale ≤ 1 % of the scene extent) or split in two if large; prune opacity
  < 0.005 and world size > 0.1·extent; reset opacities periodically.
* ``absgrad`` — erank-GS ("improved ADC"): also accumulate Σ_pixels |∂L/∂μ2d|; ratio = share of
  Gaussians with grad ≥ τ, Q = the (1 − ratio) quantile of the abs-grad statistic; a Gaussian
  qualifies if grad ≥ τ or abs-grad ≥ Q; clones are placed at a sample of N(μ, Σ) rather than
  in place; split children have scale / (0.8·N), N = 2; prune opacity < 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tasks.common.registry import Registry

from .gaussians import PARAMS, GaussianModel

STRATEGIES: Registry[type["ADCStrategy"]] = Registry("densification strategy")


@dataclass
class ADCStrategy:
    start: int = 100  # first refinement step (after a warm-up the gradients mean something)
    stop: int = 600  # no refinement after this step (the rest of training only optimises)
    every: int = 50
    reset_every: int = 1000  # opacity reset period (0 = never)
    grad_threshold: float = 2e-4  # τ, 3DGS's default in NDC units
    dense_fraction: float = 0.01  # clone/split boundary as a share of the scene extent
    prune_opacity: float = 0.005
    max_world_size: float = 0.1  # prune Gaussians larger than this share of the extent
    max_gaussians: int = 200_000  # a hard cap: a small machine must not run out of memory
    extent: float = 1.0
    stats: dict[str, Tensor] = field(default_factory=dict)

    uses_absgrad = False

    def reset_stats(self, n: int, device: torch.device) -> None:
        self.stats = {k: torch.zeros(n, device=device) for k in ("grad", "absgrad", "count")}

    @torch.no_grad()
    def accumulate(self, means2d_grad: Tensor, absgrad: Tensor | None, visible: Tensor, width: int, height: int) -> None:
        """After a backward: add this view's gradient norms (pixel → NDC units) for visible Gaussians."""
        n = visible.shape[0]
        if not self.stats or self.stats["count"].shape[0] != n:
            self.reset_stats(n, visible.device)
        scale = torch.tensor([width / 2.0, height / 2.0], device=visible.device)
        g = (means2d_grad * scale).norm(dim=-1)
        self.stats["grad"] += torch.where(visible, g, torch.zeros_like(g))
        if absgrad is not None:
            ag = (absgrad * scale).norm(dim=-1)
            self.stats["absgrad"] += torch.where(visible, ag, torch.zeros_like(ag))
        self.stats["count"] += visible.float()

    def qualifies(self) -> Tensor:
        c = self.stats["count"].clamp_min(1)
        return self.stats["grad"] / c >= self.grad_threshold

    def place_clones(self, model: GaussianModel, idx: Tensor, gen: torch.Generator) -> Tensor:
        return model.means.data[idx].clone()

    def split_scale(self) -> float:
        return 1.0 / 1.6  # 3DGS: children at scale / (0.8·2)

    @torch.no_grad()
    def step(self, step: int, model: GaussianModel, opt: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, int]:
        """Refine at the configured steps; return what changed (for the training history)."""
        out: dict[str, int] = {}
        if self.start <= step < self.stop and step % self.every == 0 and self.stats:
            out = self.refine(model, opt, gen)
            self.reset_stats(len(model), model.means.device)
        if self.reset_every and step > 0 and step % self.reset_every == 0 and step < self.stop:
            reset_opacity(model, opt, 2 * self.prune_opacity if self.prune_opacity > 0.01 else 0.01)
        return out

    @torch.no_grad()
    def refine(self, model: GaussianModel, opt: torch.optim.Optimizer, gen: torch.Generator) -> dict[str, int]:
        n = len(model)
        grow = self.qualifies()
        big = model.scales.max(-1).values > self.dense_fraction * self.extent
        room = max(0, self.max_gaussians - n)
        clone_idx = (grow & ~big).nonzero().squeeze(-1)[:room]
        split_idx = (grow & big).nonzero().squeeze(-1)[: max(0, room - len(clone_idx))]
        # split: two children sampled from the parent Gaussian, scales shrunk; parent removed
        values: dict[str, list[Tensor]] = {k: [] for k in PARAMS}
        if len(clone_idx):
            new_means = self.place_clones(model, clone_idx, gen)
            for k in PARAMS:
                values[k].append(new_means if k == "means" else getattr(model, k).data[clone_idx].clone())
        if len(split_idx):
            for _ in range(2):
                values["means"].append(_sample_in(model, split_idx, gen))
                values["log_scales"].append(model.log_scales.data[split_idx] + torch.log(torch.tensor(self.split_scale())))
                for k in ("quats", "opacity_logits", "f_dc"):
                    values[k].append(getattr(model, k).data[split_idx].clone())
        keep = torch.ones(n, dtype=torch.bool, device=model.means.device)
        keep[split_idx] = False
        added = {k: torch.cat(v) if v else None for k, v in values.items()}
        n_added = 0 if added["means"] is None else len(added["means"])
        _edit(model, opt, keep=keep, added=added)
        # prune after growth: transparent or huge Gaussians (new ones are never pruned here)
        prune = (model.opacities < self.prune_opacity) | (model.scales.max(-1).values > self.max_world_size * self.extent)
        prune &= ~torch.cat([torch.zeros(int(keep.sum()), dtype=torch.bool, device=keep.device),
                             torch.ones(n_added, dtype=torch.bool, device=keep.device)])
        if prune.all():  # never remove every Gaussian: keep the most opaque
            prune[model.opacities.argmax()] = False
        _edit(model, opt, keep=~prune, added=None)
        return {"cloned": len(clone_idx), "split": len(split_idx), "pruned": int(prune.sum()), "n": len(model)}


@STRATEGIES.register("default")
@dataclass
class DefaultADC(ADCStrategy):
    """3DGS's original densification."""


@STRATEGIES.register("absgrad")
@dataclass
class AbsGradADC(ADCStrategy):
    """erank-GS's improved ADC (§2.3): abs-gradient quantile rule, sampled clones, opacity 0.05."""

    prune_opacity: float = 0.05
    uses_absgrad = True

    def qualifies(self) -> Tensor:
        c = self.stats["count"].clamp_min(1)
        grad, absgrad = self.stats["grad"] / c, self.stats["absgrad"] / c
        base = grad >= self.grad_threshold
        ratio = float(base.float().mean())
        if ratio <= 0:
            return base
        q = torch.quantile(absgrad, 1.0 - ratio)
        return base | (absgrad >= q)

    def place_clones(self, model: GaussianModel, idx: Tensor, gen: torch.Generator) -> Tensor:
        return _sample_in(model, idx, gen)

    def split_scale(self) -> float:
        return 1.0 / (0.8 * 2)


def _sample_in(model: GaussianModel, idx: Tensor, gen: torch.Generator) -> Tensor:
    """A sample of N(μ, Σ) for each Gaussian in ``idx`` (Σ = R S Sᵀ Rᵀ)."""
    from gsplat.cuda._torch_impl import _quat_to_rotmat

    R = _quat_to_rotmat(model.unit_quats.data[idx])
    z = torch.randn(len(idx), 3, generator=gen).to(model.means.device) * model.scales.data[idx]
    return model.means.data[idx] + torch.einsum("nij,nj->ni", R, z)


def _edit(model: GaussianModel, opt: torch.optim.Optimizer, *, keep: Tensor, added: dict[str, Tensor | None] | None) -> None:
    """Keep rows ``keep`` of every parameter, append ``added`` rows; Adam moments follow (zeros
    for new rows). Each parameter becomes a new ``Parameter`` put in its optimiser group in place
    of the old one (autograd caches a leaf's shape, so resizing ``.data`` would break backward)."""
    for name in PARAMS:
        p = getattr(model, name)
        extra = added.get(name) if added else None
        new = p.data[keep]
        if extra is not None:
            new = torch.cat([new, extra.to(new)])
        newp = torch.nn.Parameter(new, requires_grad=p.requires_grad)
        state = opt.state.pop(p, {})
        for key, v in list(state.items()):
            if torch.is_tensor(v) and v.dim() > 0 and v.shape == p.shape:
                nv = v[keep]
                if extra is not None:
                    nv = torch.cat([nv, torch.zeros((len(extra), *v.shape[1:]), dtype=v.dtype, device=v.device)])
                state[key] = nv
        for g in opt.param_groups:
            g["params"] = [newp if q is p else q for q in g["params"]]
        if state:
            opt.state[newp] = state
        setattr(model, name, newp)


@torch.no_grad()
def reset_opacity(model: GaussianModel, opt: torch.optim.Optimizer, value: float) -> None:
    """3DGS's opacity reset: clamp opacities to ``value`` and clear their Adam moments."""
    p = model.opacity_logits
    p.data = torch.minimum(p.data, torch.logit(torch.tensor(value)).to(p))
    for key, v in opt.state.get(p, {}).items():
        if torch.is_tensor(v) and v.shape == p.shape:
            v.zero_()


def make_strategy(name: str, **kw) -> ADCStrategy:
    return STRATEGIES.get(name)(**kw)
