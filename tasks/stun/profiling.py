"""STUN stage 1, expert-behaviour profiling: the one calibration sweep behind the co-activation term.

STUN's behaviour similarity b_ij = −λ1·‖W_i − W_j‖ + λ2·a_ij (ACL 2025, §1.2 of METHODS.md) needs
the co-activation counts a_ij only when λ2 > 0. The released code gets them by running the
model forward once over the calibration set, softmaxing every layer's router logits and
counting, per token, the pair of experts in its top-2 (``assemble_logit_patterns.py``). This
module does the same in one streaming sweep: a forward hook on every MoE router folds each
batch's logits into an [E, E] count matrix on the fly, so nothing but the counts is kept and the
cost is one forward pass per batch whatever the number of experts n — STUN's "O(1)" claim.
Profiles of disjoint shards (one Ray actor each) add up with :meth:`RouterProfile.merge`.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from tasks.common.artifacts import atomic_path

from .adapters import adapter_for

TENSORS_FILE = "router_profile.safetensors"
META_FILE = "router_profile.json"


@dataclass
class RouterProfile:
    """Co-activation statistics of every MoE layer over a calibration set (a_ij of the paper)."""

    #: per layer, C [E, E] float64, symmetric, zero diagonal: C[e1, e2] = #tokens with e1, e2 both in the top-pair_k
    coactivation: list[torch.Tensor]
    #: per layer, f [E] float64: #tokens with expert e in the top-pair_k (Expert-Drop's score)
    frequency: list[torch.Tensor]
    #: calibration tokens seen (padding excluded)
    tokens: int = 0
    #: model forward calls made to collect the counts (one per batch, independent of E)
    forward_passes: int = 0
    #: how many top experts per token form the counted pairs (the released code hard-codes 2)
    pair_k: int = 2
    #: free-form provenance (model path, dataset, shard id ...); must be JSON-serialisable
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, experts_per_layer: list[int], pair_k: int = 2) -> RouterProfile:
        return cls(
            coactivation=[torch.zeros(e, e, dtype=torch.float64) for e in experts_per_layer],
            frequency=[torch.zeros(e, dtype=torch.float64) for e in experts_per_layer],
            pair_k=pair_k,
        )

    @property
    def num_layers(self) -> int:
        return len(self.coactivation)

    @property
    def experts_per_layer(self) -> list[int]:
        return [int(c.shape[0]) for c in self.coactivation]

    def merge(self, other: RouterProfile) -> RouterProfile:
        """Sum of two profiles of disjoint calibration shards (counts are additive)."""
        if self.pair_k != other.pair_k:
            raise ValueError(f"pair_k: cannot merge profiles counted with pair_k={self.pair_k} and {other.pair_k}")
        if self.experts_per_layer != other.experts_per_layer:
            raise ValueError(
                f"coactivation: shapes differ between shards ({self.experts_per_layer} vs {other.experts_per_layer})"
            )
        return RouterProfile(
            coactivation=[a + b for a, b in zip(self.coactivation, other.coactivation)],
            frequency=[a + b for a, b in zip(self.frequency, other.frequency)],
            tokens=self.tokens + other.tokens,
            forward_passes=self.forward_passes + other.forward_passes,
            pair_k=self.pair_k,
            meta={**self.meta, **other.meta},
        )

    # ------------------------------------------------------------------ IO
    def save(self, path: Path | str) -> Path:
        """Write a folder with ``router_profile.safetensors`` (the counts) + ``router_profile.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for i, (c, f) in enumerate(zip(self.coactivation, self.frequency)):
            tensors[f"coactivation.{i}"] = c.detach().to(torch.float64).contiguous().cpu()
            tensors[f"frequency.{i}"] = f.detach().to(torch.float64).contiguous().cpu()
        meta = {
            "num_layers": self.num_layers,
            "experts_per_layer": self.experts_per_layer,
            "tokens": int(self.tokens),
            "forward_passes": int(self.forward_passes),
            "pair_k": int(self.pair_k),
            "meta": self.meta,
        }
        with atomic_path(path, is_dir=True) as tmp:
            save_file(tensors, str(tmp / TENSORS_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path | str) -> RouterProfile:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / META_FILE).is_file() or not (path / TENSORS_FILE).is_file():
            raise FileNotFoundError(f"profile: {path} holds no {TENSORS_FILE} + {META_FILE}")
        meta = json.loads((path / META_FILE).read_text())
        tensors = load_file(str(path / TENSORS_FILE))
        n = int(meta["num_layers"])
        return cls(
            coactivation=[tensors[f"coactivation.{i}"] for i in range(n)],
            frequency=[tensors[f"frequency.{i}"] for i in range(n)],
            tokens=int(meta["tokens"]),
            forward_passes=int(meta["forward_passes"]),
            pair_k=int(meta["pair_k"]),
            meta=dict(meta.get("meta", {})),
        )


def coactivation_counts(
    router_logits: torch.Tensor,  # [T, E]
    pair_k: int = 2,
    valid: torch.Tensor | None = None,  # [T] bool, False = padding
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-activation C [E, E] and frequency f [E] (float64) of one batch of router logits.

    Each token's top-``pair_k`` experts by router probability (softmax, as the released code)
    contribute +1 to C[e1, e2] and C[e2, e1] for every unordered pair {e1, e2} among them, and
    +1 to f[e] for each of them. Cost O(T·pair_k² + E²), no [T, E, E] intermediate.
    """
    if pair_k < 2:
        raise ValueError(f"pair_k must be >= 2 to form pairs, got {pair_k}")
    logits = router_logits.reshape(-1, router_logits.shape[-1])
    if valid is not None:
        logits = logits[valid.reshape(-1).to(logits.device)]
    n_exp = logits.shape[-1]
    k = min(pair_k, n_exp)
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k, dim=-1).indices  # [T, k]
    pairs = list(itertools.combinations(range(k), 2))
    a = top[:, [p[0] for p in pairs]].reshape(-1)  # [T·k(k−1)/2]
    b = top[:, [p[1] for p in pairs]].reshape(-1)
    flat = torch.cat([a * n_exp + b, b * n_exp + a])  # both orientations → symmetric
    coact = torch.bincount(flat, minlength=n_exp * n_exp).reshape(n_exp, n_exp).to(torch.float64)
    freq = torch.bincount(top.reshape(-1), minlength=n_exp).to(torch.float64)
    return coact, freq  # on the logits' device


def _unpack_batch(batch: torch.Tensor | Mapping[str, torch.Tensor], device: torch.device) -> tuple[dict, torch.Tensor | None]:
    if isinstance(batch, Mapping):
        kwargs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if "input_ids" not in kwargs:
            raise ValueError("batches: a mapping batch needs 'input_ids'")
        mask = kwargs.get("attention_mask")
        return kwargs, (mask.bool() if mask is not None else None)
    if not isinstance(batch, torch.Tensor) or batch.dtype != torch.long or batch.dim() != 2:
        raise ValueError("batches: each batch must be a LongTensor [B, T] of token ids (or a dict with input_ids)")
    return {"input_ids": batch.to(device)}, None


def decoder_stack(model: nn.Module) -> nn.Module:
    """The backbone without the LM head (saves the [B, T, vocab] logits during calibration)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "layers") else model


@torch.no_grad()
def profile_router(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],  # each LongTensor [B, T]
    *,
    pair_k: int = 2,
) -> RouterProfile:
    """One forward pass per batch; router hooks accumulate STUN's co-activation counts a_ij.

    Cost: ``forward_passes == len(batches)`` for any number of experts. Hooks are always removed.
    """
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    prof = RouterProfile.empty([int(ad.router_weight(b).shape[0]) for b in blocks], pair_k=pair_k)
    device = next(model.parameters()).device
    current_valid: list[torch.Tensor | None] = [None]
    # accumulate on the router's device (no host sync per layer and batch); copied out at the end
    acc: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def make_hook(layer: int):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            logits = output[0] if isinstance(output, (tuple, list)) else output  # [B·T, E]
            c, f = coactivation_counts(logits, pair_k, current_valid[0])
            if layer in acc:
                acc[layer][0].add_(c)
                acc[layer][1].add_(f)
            else:
                acc[layer] = (c, f)

        return hook

    handles = [b.gate.register_forward_hook(make_hook(i)) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        backbone = decoder_stack(model)
        for batch in batches:
            kwargs, mask = _unpack_batch(batch, device)
            current_valid[0] = mask.reshape(-1) if mask is not None else None
            backbone(**kwargs, use_cache=False)
            prof.forward_passes += 1
            prof.tokens += int(mask.sum()) if mask is not None else int(kwargs["input_ids"].numel())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for layer, (c, f) in acc.items():
        prof.coactivation[layer] += c.cpu()
        prof.frequency[layer] += f.cpu()
    return prof


# ---------------------------------------------------------------------------- sharding the sweep

#: calibration sequences per forward pass of the profiling sweep
PROFILE_BATCH = 8


def shard_calibration(ids: torch.Tensor, shards: int, batch_size: int = PROFILE_BATCH) -> dict[str, torch.Tensor]:
    """Split calibration ids [N, T] into about ``shards`` contiguous runs of whole batches.

    Batches are cut the same way whatever the shard count (rows ``b·batch_size ..``), so every
    token is routed inside the same batch and the summed counts do not depend on how many
    workers shared the sweep. A shard is named by its batch range: a rerun with another worker
    count reuses the shards whose range it asks for again, and never a shard of other rows.
    """
    n_batches = -(-len(ids) // batch_size)
    per = -(-n_batches // max(1, shards)) if n_batches else 0
    out: dict[str, torch.Tensor] = {}
    for first in range(0, n_batches, max(per, 1)):
        stop = min(first + per, n_batches)
        out[f"batches-{first:05d}-{stop:05d}"] = ids[first * batch_size : stop * batch_size]
    return out


def merge_profiles(paths: Iterable[Path | str]) -> RouterProfile:
    """Sum of the profiles saved at ``paths`` (disjoint shards of one calibration set)."""
    total: RouterProfile | None = None
    for p in paths:
        prof = RouterProfile.load(p)
        total = prof if total is None else total.merge(prof)
    if total is None:
        raise ValueError("profile: no shard profiles to merge")
    return total
