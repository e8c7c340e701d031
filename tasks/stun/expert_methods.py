"""The expert-level pruners of the STUN comparison, chosen by name from one registry.

STUN's structured stage (router-similarity clustering, :mod:`tasks.stun.expert_pruning`), NAEE's
layer-wise subset enumeration and frequency-based Expert Drop (:mod:`tasks.stun.baselines`) all
turn a dense MoE into one with ``keep`` experts per layer (on average, for STUN's global budget).
Each is an :class:`ExpertPruningMethod` in ``EXPERT_PRUNING_METHODS`` — the same timm-style
registry the unstructured methods use (``PRUNING_METHODS``) — so the flow, the step and the
benchmarks name a method instead of branching on it. :func:`prune_checkpoint_experts` is what
the pipeline's expert step runs: load a checkpoint, prune its experts, save the result with a
JSON record of the plan.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from tasks.common.registry import Registry

from .adapters import adapter_for
from .profiling import PROFILE_BATCH, RouterProfile


@dataclass(frozen=True)
class ExpertPruningSettings:
    """The knobs of the expert-level methods (the fields of ``StunConfig`` they read)."""

    lambda1: float = 1.0  # λ1: weight of the router-row distance
    lambda2: float = 0.0  # λ2: weight of the co-activation term a_ij
    coactivation: str = "raw"  # a_ij: raw counts or normalised (lift)
    reconstruction: str = "none"
    kappa: int = 3  # κ of selective reconstruction
    naee_max_combinations: int = 200_000
    batch_size: int = PROFILE_BATCH  # calibration sequences per forward pass (NAEE's catch pass)

    @classmethod
    def of(cls, cfg: Any) -> "ExpertPruningSettings":
        return cls(lambda1=cfg.lambda1, lambda2=cfg.lambda2, coactivation=cfg.coactivation,
                   reconstruction=cfg.reconstruction, kappa=cfg.kappa, naee_max_combinations=cfg.naee_max_combinations)


#: a pruner: (model, keep, budget, profile, calibration ids [N, T], settings) → record; prunes in place
Pruner = Callable[[nn.Module, int, str, RouterProfile, torch.Tensor, ExpertPruningSettings], dict[str, Any]]


@dataclass(frozen=True)
class ExpertPruningMethod:
    name: str
    prune: Pruner
    #: honours budget="global" (one τ over all layers); the others always keep ``keep`` per layer
    global_budget: bool
    description: str = ""

    def budget(self, requested: str) -> str:
        """The budget this method really runs with."""
        return requested if self.global_budget else "uniform"


EXPERT_PRUNING_METHODS: Registry[ExpertPruningMethod] = Registry("expert pruning method")


def _stun(model: nn.Module, keep: int, budget: str, profile: RouterProfile, ids: torch.Tensor,
          s: ExpertPruningSettings) -> dict[str, Any]:
    from .expert_pruning import apply_plan, plan_expert_pruning, plan_to_json

    n_layers = len(adapter_for(model).moe_blocks(model))
    budget_kw = {"keep_per_layer": keep} if budget == "uniform" else {"expert_budget": keep * n_layers}
    plan = plan_expert_pruning(model, **budget_kw, profile=profile, lambda1=s.lambda1, lambda2=s.lambda2,
                               coactivation=s.coactivation, reconstruction=s.reconstruction, kappa=s.kappa, merge_max_clusters=s.kappa)
    apply_plan(model, plan)
    return {"plan": plan_to_json(plan), "forward_passes": profile.forward_passes}


def _frequency(model: nn.Module, keep: int, budget: str, profile: RouterProfile, ids: torch.Tensor,
               s: ExpertPruningSettings) -> dict[str, Any]:
    from .baselines import frequency_drop_plan
    from .expert_pruning import apply_plan, plan_to_json

    plan = frequency_drop_plan(profile, keep)
    apply_plan(model, plan)
    return {"plan": plan_to_json(plan), "forward_passes": profile.forward_passes}


def _naee(model: nn.Module, keep: int, budget: str, profile: RouterProfile, ids: torch.Tensor,
          s: ExpertPruningSettings) -> dict[str, Any]:
    from .baselines import naee_prune
    from .expert_pruning import plan_to_json

    batches = [ids[i : i + s.batch_size] for i in range(0, len(ids), s.batch_size)]
    result = naee_prune(model, batches, keep, s.naee_max_combinations)
    return {"plan": plan_to_json(result.plan), "losses": result.losses, "block_evaluations": result.evaluations,
            "forward_passes": result.forward_passes}


for _m in (
    ExpertPruningMethod("stun", _stun, True,
                        "STUN: greedy clustering on λ1‖W_i−W_j‖ − λ2·a_ij, one representative per cluster (Lee et al. 2025)"),
    ExpertPruningMethod("naee", _naee, False,
                        "NAEE: per layer, the C(n, r) expert subset with the least block-output error (Lu et al. 2024)"),
    ExpertPruningMethod("frequency", _frequency, False,
                        "Expert Drop: keep the experts the calibration set routes to most often"),
):
    EXPERT_PRUNING_METHODS.register(_m.name)(_m)


def prune_experts(model: nn.Module, method: str, keep_per_layer: int, *, budget: str, profile: RouterProfile,
                  calib_ids: torch.Tensor, settings: ExpertPruningSettings) -> dict[str, Any]:
    """Prune ``model``'s experts in place with ``method``; return its record (the plan, costs)."""
    spec = EXPERT_PRUNING_METHODS.get(method)
    ad = adapter_for(model)
    n, k = ad.num_experts(model.config), ad.top_k(model.config)
    if keep_per_layer > n:
        raise ValueError(f"keep_experts={keep_per_layer} is larger than the model's {n} experts per layer")
    if keep_per_layer < k:
        raise ValueError(f"keep_experts={keep_per_layer} is below the model's top-k={k}")
    return spec.prune(model, keep_per_layer, spec.budget(budget), profile, calib_ids, settings)


def prune_checkpoint_experts(src: Path | str, dst: Path | str, method: str, keep_per_layer: int, *, budget: str,
                             profile_dir: Path | str, calib_dir: Path | str,
                             settings: ExpertPruningSettings) -> dict[str, Any]:
    """Load the checkpoint ``src``, prune its experts, save it to ``dst`` with ``plan.json``."""
    from tasks.common.artifacts import write_json

    from .calibration import load_calibration
    from .checkpoint import load_checkpoint, save_checkpoint

    t0 = time.perf_counter()
    model, tok = load_checkpoint(src)
    info = prune_experts(model, method, keep_per_layer, budget=budget,
                         profile=RouterProfile.load(Path(profile_dir) / "profile"),
                         calib_ids=load_calibration(calib_dir), settings=settings)
    save_checkpoint(model, dst, tok)
    record = {**info, "method": method, "keep": keep_per_layer,
              "budget": EXPERT_PRUNING_METHODS.get(method).budget(budget), "seconds": time.perf_counter() - t0}
    write_json(Path(dst) / "plan.json", record)
    return record
