"""Expert-pruning baselines STUN is compared with (METHODS.md §1.4–1.5): NAEE and frequency-based Expert Drop.

NAEE ("Not All Experts are Equal", Lu et al., ACL 2024) layer-wise expert pruning: one forward pass
over the unpruned model caches every MoE block's input X and output Z; then, per layer and
independently, *every* subset of experts to keep is tried — the dropped experts' router logits set
to −inf, softmax → top-k → (re)normalise exactly as the family does, the block output recomputed on
X — and the subset with the smallest ‖Z − Ẑ‖_F wins. That is C(n, r) block evaluations per layer,
STUN's O(kⁿ/√n). To make one evaluation cheap, each expert's output on every cached token is
computed once per layer ([E, N, H], cost O(E)); a subset is then only a re-routing plus a weighted
sum. Expert Drop keeps the experts a calibration profile routes to most often.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import adapter_for
from .expert_pruning import ExpertPlan, LayerPlan, apply_plan
from .profiling import RouterProfile, _unpack_batch, decoder_stack


# ============================================================================ NAEE


class NaeeLayerSearch:
    """Loss ‖Z − Ẑ(S)‖_F of keeping expert subset S of one MoE block, on cached tokens.

    Routing follows the family's router: probabilities = softmax(logits) in float32 over the kept
    experts (dropped logits = −inf), top-k, renormalised when the router does (always for Mixtral,
    ``norm_topk_prob`` for the Qwen/OLMoE families). Qwen2-MoE's gated shared expert does not
    depend on S; it is subtracted from Z once (T = Z − shared), so the routed experts must give T.

    Every expert runs once on every token (Y [N, E, H], O(E) expert evaluations). A subset then
    only needs its routing weights w [N, k] and top-k ids i [N, k]; with Ẑ_t = Σ_j w_tj·Y[t, i_tj]

        ‖T − Ẑ‖² = Σ_t ( ‖T_t‖² − 2·Σ_j w_tj·⟨Y[t, i_tj], T_t⟩ + Σ_j Σ_j' w_tj w_tj'·⟨Y[t, i_tj], Y[t, i_tj']⟩ )

    so the per-token inner products ⟨Y_e, T⟩ [N, E] and ⟨Y_e, Y_e'⟩ [N, E, E] (float64) are
    precomputed and one subset costs O(N·(E + k²)) instead of O(N·k·H). ``routed_output`` (with
    ``keep_outputs=True``) is the plain weighted sum, kept as the reference the tests compare with.
    """

    def __init__(
        self,
        block: nn.Module,
        X: torch.Tensor,  # [N, H] cached block input
        Z: torch.Tensor,  # [N, H] original block output
        *,
        group_elems: int = 1 << 22,
        keep_outputs: bool = False,
    ):
        w_router = block.gate.weight  # W [E, H]
        self.n_experts = int(w_router.shape[0])
        self.top_k = int(block.gate.top_k)
        self.norm_topk = bool(getattr(block.gate, "norm_topk_prob", True))  # Mixtral always renormalises
        self.group_elems = group_elems
        dev, dt = w_router.device, w_router.dtype
        x = X.reshape(-1, X.shape[-1]).to(dev, dt)
        with torch.no_grad():
            self.logits = F.linear(x, w_router).float()  # [N, E]
            gu, down = block.experts.gate_up_proj, block.experts.down_proj  # [E, 2I, H], [E, H, I]
            act = block.experts.act_fn
            ys = []
            for e in range(self.n_experts):  # each expert once on all tokens: O(E) expert evaluations
                g, u = F.linear(x, gu[e]).chunk(2, dim=-1)
                ys.append(F.linear(act(g) * u, down[e]))
            y = torch.stack(ys, dim=1).to(torch.float64)  # Y [N, E, H]
            target = Z.reshape(-1, Z.shape[-1]).to(dev).to(torch.float64)
            if hasattr(block, "shared_expert"):
                shared = torch.sigmoid(block.shared_expert_gate(x)) * block.shared_expert(x)
                target = target - shared.to(torch.float64)
            self.target = target  # T [N, H]
            self.tt = (target * target).sum(-1)  # ‖T_t‖² [N]
            self.yt = torch.einsum("neh,nh->ne", y, target)  # ⟨Y_e, T⟩ [N, E]
            self.gram = torch.bmm(y, y.transpose(1, 2))  # ⟨Y_e, Y_e'⟩ [N, E, E]
            self.Y = y if keep_outputs else None
        self.tokens = int(x.shape[0])
        self.evaluations = 0

    def routing(self, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [G, E] -> w, idx [G, N, k]
        logits = self.logits.unsqueeze(0).masked_fill(~keep_mask.to(self.logits.device).unsqueeze(1), -math.inf)
        probs = torch.softmax(logits, dim=-1)  # [G, N, E]
        w, idx = torch.topk(probs, self.top_k, dim=-1)  # [G, N, k]
        if self.norm_topk:
            w = w / w.sum(dim=-1, keepdim=True)
        return w, idx

    def routed_output(self, keep_mask: torch.Tensor) -> torch.Tensor:  # [G, E] bool -> Ẑ − shared [G, N, H]
        if self.Y is None:
            raise RuntimeError("routed_output needs NaeeLayerSearch(..., keep_outputs=True)")
        w, idx = self.routing(keep_mask)
        tok = torch.arange(self.tokens, device=idx.device).view(1, -1, 1)
        return (w.double().unsqueeze(-1) * self.Y[tok, idx]).sum(dim=2)

    @torch.no_grad()
    def losses(self, subsets: torch.Tensor) -> torch.Tensor:  # subsets [S, r] kept ids -> [S] float64
        subsets = torch.as_tensor(subsets, dtype=torch.long)
        masks = torch.zeros(subsets.shape[0], self.n_experts, dtype=torch.bool)
        masks.scatter_(1, subsets, True)
        g = max(1, self.group_elems // max(self.tokens * self.n_experts, 1))
        tok = torch.arange(self.tokens, device=self.logits.device).view(1, -1, 1)
        out = torch.empty(subsets.shape[0], dtype=torch.float64)
        for s in range(0, subsets.shape[0], g):
            w, idx = self.routing(masks[s : s + g])
            w = w.double()
            cross = (w * self.yt[tok, idx]).sum(-1)  # Σ_j w_j ⟨Y_ij, T⟩ [G, N]
            gsel = self.gram[tok.unsqueeze(-1), idx.unsqueeze(-1), idx.unsqueeze(-2)]  # [G, N, k, k]
            quad = torch.einsum("gnj,gnjl,gnl->gn", w, gsel, w)  # ‖Ẑ_t‖²
            sq = (self.tt - 2 * cross + quad).sum(-1)  # ‖T − Ẑ‖²
            out[s : s + g] = sq.clamp_min(0).sqrt().cpu()
        self.evaluations += int(subsets.shape[0])
        return out


def _check_naee(n: int, keep: int, top_k: int, max_combinations: int) -> int:
    if keep > n:
        raise ValueError(f"keep_per_layer={keep} exceeds the layer's {n} experts")
    if keep < top_k:
        raise ValueError(f"keep_per_layer={keep} is below top-k={top_k}: tokens could not be routed")
    c = math.comb(n, keep)
    if c > max_combinations:
        raise ValueError(
            f"naee_max_combinations={max_combinations}: NAEE would enumerate C({n},{keep})={c} expert subsets "
            f"in this layer; raise the limit or use STUN"
        )
    return c


@torch.no_grad()
def naee_prune_layer(
    block: nn.Module,
    X: torch.Tensor,  # [N, H] cached layer input
    Z: torch.Tensor,  # [N, H] original block output
    keep: int,
    *,
    max_combinations: int = 100_000,
) -> tuple[list[int], float, int]:
    """Best subset of ``keep`` experts by exhaustive enumeration: (keep_ids, loss, evaluations).

    Loss is ‖Z − Ẑ‖_F over all cached tokens in float64 (the release sums per-batch norms; the
    two coincide for a single batch). Ties go to the lexicographically first subset.
    """
    n = int(block.gate.weight.shape[0])
    count = _check_naee(n, keep, int(block.gate.top_k), max_combinations)
    search = NaeeLayerSearch(block, X, Z)
    subsets = torch.tensor(list(itertools.combinations(range(n), keep)), dtype=torch.long).reshape(count, keep)
    losses = search.losses(subsets)
    best = int(torch.argmin(losses))  # first minimum
    return [int(e) for e in subsets[best]], float(losses[best]), search.evaluations


@dataclass
class NaeeResult:
    plan: ExpertPlan
    #: best loss ‖Z − Ẑ‖_F per layer
    losses: list[float]
    #: subsets evaluated per layer, C(n, r)
    evaluations: list[int]
    #: full-model forward calls (the single catch pass: one per batch)
    forward_passes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def block_evaluations(self) -> int:
        return sum(self.evaluations)


@torch.no_grad()
def catch_block_io(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],  # each LongTensor [B, T]
) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """X [N, H] and Z [N, H] of every MoE block in one pass over the (unpruned) model; + passes made."""
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    xs: list[list[torch.Tensor]] = [[] for _ in blocks]
    zs: list[list[torch.Tensor]] = [[] for _ in blocks]
    valid: list[torch.Tensor | None] = [None]

    def make_hook(i: int):
        def hook(_m: nn.Module, inputs: Any, output: Any) -> None:
            x = inputs[0]
            z = output[0] if isinstance(output, (tuple, list)) else output
            x, z = x.reshape(-1, x.shape[-1]), z.reshape(-1, z.shape[-1])
            if valid[0] is not None:
                x, z = x[valid[0]], z[valid[0]]
            xs[i].append(x.detach().cpu())
            zs[i].append(z.detach().cpu())

        return hook

    handles = [b.register_forward_hook(make_hook(i)) for i, b in enumerate(blocks)]
    passes = 0
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        backbone = decoder_stack(model)
        for batch in batches:
            kwargs, mask = _unpack_batch(batch, device)
            valid[0] = mask.reshape(-1) if mask is not None else None
            backbone(**kwargs, use_cache=False)
            passes += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [torch.cat(x) for x in xs], [torch.cat(z) for z in zs], passes


@torch.no_grad()
def naee_prune(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, torch.Tensor]],
    keep_per_layer: int,
    max_combinations: int = 100_000,
    *,
    apply: bool = True,
) -> NaeeResult:
    """NAEE ``layerwise_pruning``: catch X, Z on the unpruned model, enumerate per layer, then prune.

    Every layer's C(n, r) is checked against ``max_combinations`` before any forward pass.
    """
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    top_k = ad.top_k(model.config)
    ne = [int(ad.router_weight(b).shape[0]) for b in blocks]
    for n in ne:
        _check_naee(n, keep_per_layer, top_k, max_combinations)
    xs, zs, passes = catch_block_io(model, batches)
    layers: list[LayerPlan] = []
    losses: list[float] = []
    evals: list[int] = []
    for b, x, z in zip(blocks, xs, zs):
        keep, loss, ev = naee_prune_layer(b, x, z, keep_per_layer, max_combinations=max_combinations)
        layers.append(LayerPlan(keep=keep, clusters=[[e] for e in keep]))
        losses.append(loss)
        evals.append(ev)
    plan = ExpertPlan(layers=layers, num_experts=ne, method="naee",
                      meta={"keep_per_layer": keep_per_layer, "losses": losses, "tokens": int(xs[0].shape[0])})
    if apply:
        apply_plan(model, plan)
    return NaeeResult(plan=plan, losses=losses, evaluations=evals, forward_passes=passes)


# ============================================================================ Expert Drop (frequency)


def frequency_drop_plan(profile: RouterProfile, keep_per_layer: int) -> ExpertPlan:
    """Keep, per layer, the ``keep_per_layer`` experts most often in a token's top-k (ties: lower id).

    For the classic Expert-Drop score profile with ``pair_k`` equal to the model's top-k.
    """
    layers: list[LayerPlan] = []
    for freq in profile.frequency:
        n = int(freq.shape[0])
        if not 1 <= keep_per_layer <= n:
            raise ValueError(f"keep_per_layer={keep_per_layer} must be in [1, {n}] (experts in the layer)")
        order = sorted(range(n), key=lambda e: (-float(freq[e]), e))
        keep = sorted(order[:keep_per_layer])
        layers.append(LayerPlan(keep=keep, clusters=[[e] for e in keep]))
    return ExpertPlan(layers=layers, num_experts=profile.experts_per_layer, method="frequency_drop",
                      meta={"keep_per_layer": keep_per_layer, "tokens": profile.tokens, "pair_k": profile.pair_k})
