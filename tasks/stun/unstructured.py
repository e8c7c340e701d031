"""STUN stage 2, the unstructured pass: Wanda, OWL and magnitude pruning of MoE expert weights.

Implements METHODS.md §1.3 as pure functions: the Wanda score s_ij = |W_ij|·‖X_j‖₂ with a per-row
comparison group (or N:M groups), magnitude scores, and OWL's layer-wise sparsities from the
layer outlier ratio LOD_l (M = 5, λ = 0.08). For a Mixture-of-Experts block the input X of expert
e is only the tokens the router sent to e (``top_k_index == e``): :class:`ExpertInputStats`
accumulates ‖X_j‖² per expert with a forward pre-hook on ``block.experts`` (which receives the
hidden states and the routing), so it never depends on which experts kernel transformers picked.
The prunable set is the routed experts' w1/w3 (``gate_up_proj``) and w2 (``down_proj``) plus the
shared expert's three projections; attention, norms, router and embeddings stay dense.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from tasks.common.registry import Registry

ScoreKind = Literal["wanda", "magnitude"]

#: Names (relative to an MoE block) of the prunable tensors of a shared expert.
SHARED_PROJ = ("gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------- validation


def check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1); ValueError naming the argument otherwise."""
    s = float(sparsity)
    if not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (fraction of expert weights set to zero), got {sparsity!r}")
    return s


def check_nm(nm: tuple[int, int] | None, sparsity: float | None = None) -> tuple[int, int] | None:
    """Validate an N:M pattern (prune n of every m); if ``sparsity`` is given it must equal n/m."""
    if nm is None:
        return None
    n, m = (int(v) for v in nm)
    if not (m >= 1 and 0 <= n < m):
        raise ValueError(f"nm must be (n, m) with 0 <= n < m (prune n of every m weights), got {nm!r}")
    if sparsity is not None and abs(sparsity - n / m) > 1e-9:
        raise ValueError(f"sparsity={sparsity} disagrees with nm={n}:{m} (an N:M pattern prunes exactly n/m = {n / m})")
    return n, m


def count_zeros(t: Tensor) -> int:
    """Exact zeros of a tensor without a bool/int64 temporary (``(t == 0).sum()`` costs 9 B/elem)."""
    return int(t.numel() - torch.count_nonzero(t))


# ---------------------------------------------------------------------------------- scores


def wanda_scores(W: Tensor, act_sq_norm: Tensor) -> Tensor:
    """Wanda: s_ij = |W_ij| · ‖X_j‖₂.  W [out, in], act_sq_norm = ‖X_j‖² [in] → [out, in] float32."""
    if act_sq_norm.shape != W.shape[-1:]:
        raise ValueError(f"act_sq_norm has shape {tuple(act_sq_norm.shape)}, "
                         f"expected [{W.shape[-1]}] (W is {tuple(W.shape)})")
    return W.float().abs() * act_sq_norm.float().clamp_min(0).sqrt().unsqueeze(0)


def magnitude_scores(W: Tensor) -> Tensor:
    """Magnitude pruning: s_ij = |W_ij|.  [out, in] → [out, in] float32."""
    return W.float().abs()


# ---------------------------------------------------------------------------------- masks


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask (True = keep) pruning the lowest-scoring ``sparsity`` fraction of each row.

    scores [out, in]. Each row prunes ⌊s·in⌋ weights — exactly s·in when that is an integer. When
    it is not, the remainder is spread so the tensor as a whole prunes round(s·out·in): the rows
    whose next-lowest score is smallest prune one more (still a per-row comparison group; this
    keeps the total on target for small ``in`` where flooring alone would undershoot).
    """
    s = check_sparsity(sparsity)
    rows, cols = scores.shape
    mask = torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    if s == 0.0 or rows == 0 or cols == 0:
        return mask
    k = int(math.floor(s * cols + 1e-9))  # per-row prune count
    extra = int(round(s * rows * cols)) - k * rows  # rows pruning k+1
    extra = max(0, min(extra, rows))
    kk = k + (1 if extra > 0 else 0)
    if kk == 0:
        return mask
    # the kk lowest of every row (unsorted top-k: ~4× faster than a full sort on CPU)
    vals, idx = scores.topk(kk, dim=1, largest=False, sorted=False)  # [out, kk]
    mask.scatter_(1, idx, False)
    if 0 < extra < rows:
        nxt = vals.argmax(dim=1)  # where the (k+1)-th lowest of each row sits in ``idx``
        nxt_score = vals.gather(1, nxt[:, None]).squeeze(1)  # [out]
        spare = nxt_score.argsort(descending=True, stable=True)[: rows - extra]  # rows pruning only k
        mask[spare, idx[spare, nxt[spare]]] = True
    return mask


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M keep-mask: in every group of m consecutive input weights of a row, prune the n lowest.

    scores [out, in] with in % m == 0 → bool [out, in] with exactly n False per group.
    """
    check_nm((n, m))
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"nm: input width {cols} is not a multiple of m={m}")
    groups = scores.reshape(rows, cols // m, m)  # [out, in/m, m]
    mask = torch.ones_like(groups, dtype=torch.bool)
    if n:
        low = groups.argsort(dim=-1, stable=True)[..., :n]
        mask.scatter_(-1, low, False)
    return mask.reshape(rows, cols)


def make_mask(scores: Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> Tensor:
    """Per-row mask at ``sparsity``, or the N:M mask when ``nm`` is given."""
    return nm_mask(scores, *nm) if nm is not None else row_mask(scores, sparsity)


# ---------------------------------------------------------------------------------- OWL


def outlier_ratio(scores: Tensor, M: float = 5.0) -> float:
    """OWL's LOD of one layer: fraction of its scores greater than M · mean(score)."""
    flat = scores.reshape(-1).float()
    if flat.numel() == 0:
        return 0.0
    return float((flat > M * flat.mean()).float().mean())


@dataclass
class OutlierCounter:
    """LOD of a layer accumulated chunk by chunk (so a layer's scores never need to be held at once).

    Two passes over the same chunks: :meth:`add_mean` for every chunk, then :meth:`add_count`.
    """

    M: float = 5.0
    total: float = 0.0
    n: int = 0
    outliers: int = 0

    def add_mean(self, scores: Tensor) -> None:
        self.total += float(scores.double().sum())
        self.n += scores.numel()

    def add_count(self, scores: Tensor) -> None:
        self.outliers += int((scores > self.M * (self.total / max(self.n, 1))).sum())

    @property
    def lod(self) -> float:
        return self.outliers / self.n if self.n else 0.0


def owl_from_lod(lods: Sequence[float], target: float, *, lam: float = 0.08,
                 sizes: Sequence[int] | None = None, strict_bound: bool = True) -> list[float]:
    """OWL layer sparsities from the layers' outlier ratios.

    Reference (OWL code): map LOD_l linearly onto [0, 2λ], subtract the mean, add (1 − S): keep
    ratio r_l (more outliers → keeps more); return 1 − r_l. Subtracting the mean keeps the average
    at S but, for a skewed LOD distribution, lets one layer move up to 2λ from S, although the
    paper states S_l ∈ [S − λ, S + λ]. With ``strict_bound`` (default) the deviations are then
    shrunk by one common factor so the largest is λ — still linear in LOD, same order and mean,
    and identical to the reference whenever it already respects ±λ [inference]; pass False for
    the reference behaviour. With ``sizes`` (prunable weights per layer; STUN's variable-width
    layers) the size-weighted mean is used, so the *total* sparsity is S [inference: OWL's code
    assumes equal layers]. Sparsities are clipped to [0, 1) when S ± λ leaves that range.
    """
    target = check_sparsity(target, "target")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    lod = torch.tensor(list(lods), dtype=torch.float64)
    if lod.numel() == 0:
        return []
    span = float(lod.max() - lod.min())
    if span <= 0.0:  # every layer equally outlier-rich: nothing to redistribute
        return [target] * lod.numel()
    mapped = (lod - lod.min()) / span * (2 * lam)  # ∈ [0, 2λ]
    if sizes is None:
        centre = mapped.mean()
    else:
        w = torch.tensor(list(sizes), dtype=torch.float64)
        centre = (mapped * w).sum() / w.sum()
    dev = mapped - centre  # r_l − (1 − S)
    worst = float(dev.abs().max())
    if strict_bound and worst > lam:
        dev = dev * (lam / worst)
    keep = (1.0 - target) + dev  # r_l
    sp = (1.0 - keep).clamp(0.0, 1.0 - 1e-6)
    return [float(v) for v in sp]


def owl_layer_sparsities(layer_scores: list[Tensor], target: float, *, M: float = 5.0, lam: float = 0.08,
                         sizes: Sequence[int] | None = None, strict_bound: bool = True) -> list[float]:
    """OWL: per-layer sparsities from each layer's flattened Wanda scores (mean = target, each ±λ)."""
    return owl_from_lod([outlier_ratio(s, M) for s in layer_scores], target, lam=lam, sizes=sizes,
                        strict_bound=strict_bound)


# ---------------------------------------------------------------------------------- MoE statistics


def _shared_expert(block: nn.Module) -> nn.Module | None:
    return getattr(block, "shared_expert", None)


def prunable_tensors(block: nn.Module) -> dict[str, Tensor]:
    """The prunable tensors of one MoE block, by name relative to the block.

    ``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I], and when present
    ``shared_expert.{gate,up,down}_proj.weight`` ([Is, H], [Is, H], [H, Is]).
    """
    out = {"experts.gate_up_proj": block.experts.gate_up_proj, "experts.down_proj": block.experts.down_proj}
    se = _shared_expert(block)
    if se is not None:
        for p in SHARED_PROJ:
            out[f"shared_expert.{p}.weight"] = getattr(se, p).weight
    return out


@dataclass
class ExpertInputStats:
    """Per-expert ‖X_j‖² over calibration tokens, for every prunable weight's input.

    ``gate_up_sq[e]`` [H]: Σ over tokens routed to e of x_j² (input of w1/w3).
    ``down_sq[e]`` [I]: Σ over the same tokens of h_j², h = act(x·w1ᵀ) ⊙ (x·w3ᵀ) from e's current
    weights (input of w2). ``shared_in_sq`` [H] / ``shared_mid_sq`` [Is]: the same for the shared
    expert, which sees every token. Sums, not means: Wanda's per-row ranking is scale-free, and
    OWL's LOD only needs one scale per layer — summing treats an unrouted token as contributing 0,
    so experts that get more tokens carry proportionally more weight [inference].
    """

    gate_up_sq: Tensor  # [E, H] float32
    down_sq: Tensor  # [E, I] float32
    tokens: Tensor  # [E] int64, tokens routed to each expert
    shared_in_sq: Tensor | None = None  # [H]
    shared_mid_sq: Tensor | None = None  # [Is]
    shared_tokens: int = 0
    _handles: list = field(default_factory=list, repr=False)

    @classmethod
    def for_block(cls, block: nn.Module, device: torch.device | str | None = None) -> "ExpertInputStats":
        gu, down = block.experts.gate_up_proj, block.experts.down_proj
        dev = torch.device(device) if device is not None else gu.device
        E, H, inter = gu.shape[0], gu.shape[2], down.shape[2]
        se = _shared_expert(block)
        kw: dict = {}
        if se is not None:
            kw = dict(shared_in_sq=torch.zeros(se.gate_proj.weight.shape[1], device=dev),
                      shared_mid_sq=torch.zeros(se.down_proj.weight.shape[1], device=dev))
        return cls(torch.zeros(E, H, device=dev), torch.zeros(E, inter, device=dev),
                   torch.zeros(E, dtype=torch.long, device=dev), **kw)

    # -- accumulation
    @torch.no_grad()
    def add_routed(self, experts: nn.Module, x: Tensor, top_k_index: Tensor) -> None:
        """x [T, H] (the block's flattened hidden), top_k_index [T, k] from the router."""
        x = x.reshape(-1, x.shape[-1])
        idx = top_k_index.reshape(x.shape[0], -1)
        act = experts.act_fn
        for e in range(self.gate_up_sq.shape[0]):
            tok = (idx == e).any(dim=-1).nonzero().squeeze(1)  # tokens routed to e
            if tok.numel() == 0:
                continue
            xe = x[tok]  # [n_e, H]
            gate, up = nn.functional.linear(xe, experts.gate_up_proj[e]).chunk(2, dim=-1)  # [n_e, I] each
            h = act(gate) * up  # input of w2
            self.gate_up_sq[e] += xe.float().pow(2).sum(0).to(self.gate_up_sq.device)
            self.down_sq[e] += h.float().pow(2).sum(0).to(self.down_sq.device)
            self.tokens[e] += tok.numel()

    @torch.no_grad()
    def add_shared(self, mlp: nn.Module, x: Tensor) -> None:
        """x [..., H] the shared expert's input (every token)."""
        x = x.reshape(-1, x.shape[-1])
        h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)  # [T, Is]
        self.shared_in_sq += x.float().pow(2).sum(0).to(self.shared_in_sq.device)
        self.shared_mid_sq += h.float().pow(2).sum(0).to(self.shared_mid_sq.device)
        self.shared_tokens += x.shape[0]

    # -- hooks
    def attach(self, block: nn.Module) -> None:
        """Forward pre-hooks on ``block.experts`` (and ``block.shared_expert``); see :meth:`hooked`."""

        def experts_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            self.add_routed(mod, x, top_k_index)

        self._handles.append(block.experts.register_forward_pre_hook(experts_hook, with_kwargs=True))
        se = _shared_expert(block)
        if se is not None and self.shared_in_sq is not None:
            def shared_hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
                self.add_shared(mod, args[0] if args else next(iter(kwargs.values())))

            self._handles.append(se.register_forward_pre_hook(shared_hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def hooked(self, block: nn.Module) -> Iterator["ExpertInputStats"]:
        """``with stats.hooked(block): run calibration`` — the hooks are removed on exit."""
        self.attach(block)
        try:
            yield self
        finally:
            self.detach()

    # -- scores
    def expert_scores(self, name: str, e: int | None, W: Tensor, method: ScoreKind) -> Tensor:
        """Scores of one prunable matrix: expert e's slice of ``name`` (or the shared expert's).

        An expert that received no calibration token has ‖X‖ = 0 and every Wanda score 0; it
        falls back to magnitude scores so it is still pruned to the sparsity sensibly.
        """
        W = W.to(self.gate_up_sq.device)
        if method == "magnitude":
            return magnitude_scores(W)
        if name.startswith("shared_expert."):
            if self.shared_tokens == 0:
                return magnitude_scores(W)
            norm = self.shared_mid_sq if name.startswith("shared_expert.down_proj") else self.shared_in_sq
            return wanda_scores(W, norm)
        assert e is not None
        if int(self.tokens[e]) == 0:
            return magnitude_scores(W)
        norm = self.gate_up_sq[e] if name == "experts.gate_up_proj" else self.down_sq[e]
        return wanda_scores(W, norm)


def iter_prunable(block: nn.Module) -> Iterator[tuple[str, int | None, Tensor]]:
    """(name, expert index or None, 2-D view [out, in]) over every prunable matrix of a block."""
    for name, t in prunable_tensors(block).items():
        if t.dim() == 3:
            for e in range(t.shape[0]):
                yield name, e, t[e]
        else:
            yield name, None, t


@torch.no_grad()
def block_outlier_ratio(block: nn.Module, stats: ExpertInputStats, M: float = 5.0, *,
                        mirrors: dict[str, Tensor] | None = None, extra_scores: Sequence[Tensor] = ()) -> float:
    """OWL's LOD over a block's prunable Wanda scores, one expert at a time.

    Experts that received no token are left out: their Wanda scores are all 0 and carry no
    evidence about outliers (they would only pull the mean down) [inference]. ``mirrors`` as in
    :func:`prune_block_experts` (scores from the original-precision weights).
    """
    counter = OutlierCounter(M)
    mirrors = mirrors or {}
    for add in (counter.add_mean, counter.add_count):
        for name, e, W in iter_prunable(block):
            if e is not None and int(stats.tokens[e]) == 0:
                continue
            if e is None and stats.shared_tokens == 0:
                continue
            src = mirrors.get(name)
            if src is not None:
                W = src[e] if e is not None else src
            add(stats.expert_scores(name, e, W, "wanda"))
        for sc in extra_scores:  # the "layer" scope's attention / router weights
            add(sc)
    return counter.lod


@torch.no_grad()
def prune_block_experts(
    block: nn.Module,
    stats: ExpertInputStats | None,
    sparsity: float,
    method: ScoreKind = "wanda",
    nm: tuple[int, int] | None = None,
    *,
    mirrors: dict[str, Tensor] | None = None,
) -> dict[str, dict[str, int]]:
    """Zero the lowest-scoring weights of every prunable matrix of an MoE block, in place.

    Each expert's w1/w3 (rows of ``gate_up_proj[e]``, input H) and w2 (rows of ``down_proj[e]``,
    input I) are masked per output row (Wanda's comparison group) or N:M. ``mirrors`` maps a
    prunable name (see :func:`prunable_tensors`) to another tensor of the same shape — e.g. the
    original-precision copy that will be written to disk — which receives the same zeros and from
    which the scores are then computed. Returns ``{name: {"zeros": z, "total": n}}`` measured after.
    """
    sparsity = check_sparsity(sparsity)
    nm = check_nm(nm)
    if method not in ("wanda", "magnitude"):
        raise ValueError(f"method must be 'wanda' or 'magnitude', got {method!r}")
    if method == "wanda" and stats is None:
        raise ValueError("method='wanda' needs calibration statistics (stats=None)")
    mirrors = mirrors or {}
    params = prunable_tensors(block)
    counts: dict[str, dict[str, int]] = {}
    for name, e, W in iter_prunable(block):
        src = mirrors.get(name)
        src_W = (src[e] if e is not None else src) if src is not None else W
        if stats is not None:
            scores = stats.expert_scores(name, e, src_W, method)
        else:
            scores = magnitude_scores(src_W)
        if sparsity > 0 or nm is not None:
            keep = make_mask(scores, sparsity, nm)  # [out, in] True = keep
            W.masked_fill_(~keep.to(W.device), 0)
            if src is not None:
                src_W.masked_fill_(~keep.to(src_W.device), 0)
        del scores
    for name, t in params.items():
        out = mirrors.get(name, t)
        counts[name] = {"zeros": count_zeros(out), "total": out.numel()}
    return counts


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PruningMethod:
    """How one unstructured method scores weights and picks per-layer sparsities."""

    name: str
    #: per-weight score used for the masks
    score: ScoreKind
    #: needs calibration activations (Wanda's ‖X_j‖)
    needs_calibration: bool
    #: per-layer sparsities from outlier ratios (OWL) instead of one uniform sparsity
    layerwise: bool
    description: str = ""


PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method")
for _m in (
    PruningMethod("wanda", "wanda", True, False, "|W|·‖X‖ per output row, uniform sparsity (Sun et al. 2023)"),
    PruningMethod("owl", "wanda", True, True,
                  "Wanda with outlier-weighted layer sparsities, M=5, λ=0.08 (Yin et al. 2024)"),
    PruningMethod("magnitude", "magnitude", False, False, "|W| per output row, uniform sparsity; no calibration"),
):
    PRUNING_METHODS.register(_m.name)(_m)
