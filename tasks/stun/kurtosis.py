"""STUN's mechanism check (ACL 2025, METHODS.md §1.1): the kurtosis of the remaining expert weights.

The paper explains why structured-then-unstructured works: expert pruning keeps (or raises) the
kurtosis of the weights that remain — their outliers survive, so a later unstructured pass still
has a heavy tail to keep — whereas unstructured pruning first removes the small weights, lowering
the kurtosis the structured stage would then see (Arctic: 14,248 → 15,623 after expert pruning).
Here kurtosis is Pearson's β₂ = E[(w − μ)⁴] / σ⁴ (3 for a Gaussian, not the excess), pooled over
every *remaining* (nonzero) routed-expert weight of the model: a zeroed weight has been removed,
so it is not part of the distribution the next stage prunes.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn


class MomentAccumulator:
    """Streaming sums for β₂ over many tensors in float64 (shifted by a pilot mean for stability)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: float | None = None
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0

    def add(self, x: torch.Tensor) -> None:
        v = x.detach().reshape(-1).to(torch.float64).cpu()
        if v.numel() == 0:
            return
        if self.shift is None:
            self.shift = float(v.mean())
        d = v - self.shift
        d2 = d * d
        self.n += v.numel()
        self.s1 += float(d.sum())
        self.s2 += float(d2.sum())
        self.s3 += float((d2 * d).sum())
        self.s4 += float((d2 * d2).sum())

    def kurtosis(self) -> float:
        if self.n < 2:
            return float("nan")
        n = self.n
        m1 = self.s1 / n
        # central moments from raw moments about the shift
        m2 = self.s2 / n - m1**2
        m4 = self.s4 / n - 4 * m1 * self.s3 / n + 6 * m1**2 * self.s2 / n - 3 * m1**4
        return float(m4 / m2**2) if m2 > 0 else float("nan")


def kurtosis(x: torch.Tensor | Iterable[torch.Tensor]) -> float:
    """Pearson's β₂ of all values of ``x`` (a tensor or several, pooled)."""
    acc = MomentAccumulator()
    for t in [x] if isinstance(x, torch.Tensor) else x:
        acc.add(t)
    return acc.kurtosis()


@torch.no_grad()
def expert_weight_kurtosis(model: nn.Module) -> dict[str, Any]:
    """β₂ of the nonzero routed-expert weights, pooled over all MoE layers, and per layer."""
    from .adapters import adapter_for

    ad = adapter_for(model)
    pooled = MomentAccumulator()
    per_layer: list[float] = []
    for block in ad.moe_blocks(model):
        layer = MomentAccumulator()
        for t in ad.expert_tensors(block):  # gate_up [E, 2I, H], down [E, H, I]
            w = t.detach().reshape(-1)
            w = w[w != 0]
            pooled.add(w)
            layer.add(w)
        per_layer.append(layer.kurtosis())
    return {"kurtosis": pooled.kurtosis(), "kurtosis_per_layer": per_layer, "weights": pooled.n}
