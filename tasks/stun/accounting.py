"""Weight accounting for STUN: how many MoE expert weights a (pruned) model still holds.

Total sparsity is measured against the dense model: 1 − nonzero expert weights now / expert
weights of the dense model. This counts removed experts (structured stage) and zeroed
weights (unstructured stage) on the same scale.
"""
from __future__ import annotations

import torch
from torch import nn

from .adapters import adapter_for


@torch.no_grad()
def expert_weight_counts(model: nn.Module) -> list[dict[str, int]]:
    """Per layer: total and nonzero weights of the routed experts (+ shared expert)."""
    ad = adapter_for(model)
    rows = []
    for block in ad.moe_blocks(model):
        tensors = list(ad.expert_tensors(block))
        shared = getattr(block, "shared_expert", None)
        if shared is not None:
            tensors += [p for n, p in shared.named_parameters() if n.endswith("weight")]
        rows.append(
            {
                "experts": int(block.experts.num_experts),
                "total": int(sum(t.numel() for t in tensors)),
                "nonzero": int(sum(int((t != 0).sum()) for t in tensors)),
            }
        )
    return rows


def total_sparsity(model: nn.Module, dense_total: int) -> float:
    nonzero = sum(r["nonzero"] for r in expert_weight_counts(model))
    return 1.0 - nonzero / dense_total
