"""STUN stage 1 (ACL 2025, METHODS.md §1.2): expert clustering and greedy structured expert pruning.

The algorithm box, one function per line:

1. ``expert_similarity``  — per MoE layer a distance D = −b between experts, from router rows
   (‖W_i − W_j‖, λ1) and/or calibration co-activation counts (a_ij, λ2);
2. ``greedy_cluster``     — greedy agglomerative clustering of the experts under a threshold τ with a
   complete-linkage acceptance test (``greedy_but_reject_mixed`` in the released code);
3. ``search_threshold``   — one global τ found by binary search so that the total number of
   clusters over all layers equals the expert budget *exactly* (``uniform_budget`` instead gives
   every layer the same count, which loads in stock transformers);
4. ``representative``     — each cluster is replaced by the member closest to its centroid, or, under
   selective reconstruction, by the members' mean;
5. ``plan_expert_pruning`` / ``apply_plan`` — a JSON-serialisable plan, applied through the family
   adapter's ``keep_experts``.

No forward pass happens here: with λ2 = 0 the whole stage needs none, with λ2 > 0 it needs the one
calibration sweep of :mod:`tasks.stun.profiling`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .adapters import adapter_for
from .profiling import RouterProfile

RECONSTRUCTIONS = ("none", "small_clusters", "max_clusters")
ACCEPTANCE = ("complete", "released")
SCHEDULES = ("bisect", "released")

Clusters = list[list[int]]


# ============================================================================ 1. similarity


def _check_lambdas(lambda1: float, lambda2: float) -> None:
    for name, v in (("lambda1", lambda1), ("lambda2", lambda2)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if lambda1 == 0 and lambda2 == 0:
        raise ValueError("lambda1/lambda2: both are 0, so every expert pair would be equally similar; set lambda1 > 0 "
                         "(router distance) and/or lambda2 > 0 (co-activation)")


COACTIVATIONS = ("raw", "normalised")


def normalised_coactivation(coact: torch.Tensor, usage: torch.Tensor) -> torch.Tensor:
    """Lift of co-selection: A_ij = C_ij · N / (f_i · f_j), N = Σ f (float64, [E, E]).

    Raw counts C_ij grow with how busy experts i and j are, so the "most co-activated" pair is the
    busiest pair. Dividing by the product of the usages f_i, f_j (tokens routed to each) measures
    how much more often the two are chosen together than independent choices would give: scaling
    one expert's traffic by c scales row i of C and f_i alike, and A does not move. An unused
    expert (f = 0) co-activates with nothing (A = 0).
    """
    c = coact.detach().to(torch.float64).cpu()
    f = usage.detach().to(torch.float64).cpu().reshape(-1)
    if tuple(c.shape) != (f.numel(), f.numel()):
        raise ValueError(f"usage: {f.numel()} experts do not match co-activation shape {tuple(c.shape)}")
    denom = torch.outer(f, f)
    out = torch.where(denom > 0, c * f.sum() / denom.clamp_min(1e-300), torch.zeros_like(c))
    return out


def expert_similarity(
    router_w: torch.Tensor,  # W [E, H]
    coact: torch.Tensor | None = None,  # C [E, E] co-activation counts (a_ij), or None
    *,
    lambda1: float = 1.0,
    lambda2: float = 0.0,
    divide_by_norm: bool = False,
    divide_mean: bool = True,
    usage: torch.Tensor | None = None,  # f [E]: tokens routed to each expert (for "normalised")
    coactivation: str = "raw",
) -> torch.Tensor:  # D [E, E] float64, diagonal +inf
    """Expert distance D = −b, b_ij = −λ1·‖W_i − W_j‖ + λ2·a_ij (smaller = more alike).

    D = λ1·cdist(W, W)[/‖W‖_F] + λ2·(−C)/|mean(−C)|; the diagonal is +inf. The released
    ``merge_weight.py::select_expert_pairs`` variants are all special cases:

    * router distance only (no ``--load_path``): ``lambda1=1, lambda2=0``; the released default
      divides by ‖W‖_F (``division_by_norm=True``) → ``divide_by_norm=True``;
    * co-activation with ``--mix_weight m``: D = m·(−C)/|mean(−C)| + cdist(W, W) (no norm division
      there) → ``lambda1=1, lambda2=m, divide_by_norm=False``;
    * co-activation alone with ``--divide_mean``: ``lambda1=0, lambda2=1``; without it (raw −C):
      additionally ``divide_mean=False``.

    ``coactivation="normalised"`` (not in the release) replaces C by its lift
    :func:`normalised_coactivation`, which needs ``usage``.

    Distances are computed in float64 (the release uses float32), so near-ties may break
    differently from the release on real checkpoints.
    """
    _check_lambdas(lambda1, lambda2)
    w = router_w.detach().to(torch.float64).cpu()
    n = w.shape[0]
    d = torch.zeros(n, n, dtype=torch.float64)
    if lambda1 > 0:
        dist = torch.cdist(w, w)  # ‖W_i − W_j‖
        if divide_by_norm:
            dist = dist / torch.linalg.norm(w)
        d += lambda1 * dist
    if lambda2 > 0:
        if coact is None:
            raise ValueError("coact: lambda2 > 0 needs the co-activation counts of a RouterProfile (profile)")
        if tuple(coact.shape) != (n, n):
            raise ValueError(f"coact: shape {tuple(coact.shape)} does not match {n} experts")
        if coactivation not in COACTIVATIONS:
            raise ValueError(f"coactivation must be one of {COACTIVATIONS}, got {coactivation!r}")
        if coactivation == "normalised":
            if usage is None:
                raise ValueError("usage: coactivation='normalised' needs each expert's usage (profile frequency)")
            coact = normalised_coactivation(coact, usage)
        neg = -coact.detach().to(torch.float64).cpu()  # −a_ij
        if divide_mean:
            scale = neg.mean().abs()
            if scale > 0:  # an all-zero count matrix (no pairs seen) stays zero
                neg = neg / scale
        d += lambda2 * neg
    d.fill_diagonal_(math.inf)
    return d


# ============================================================================ 2. greedy clustering


@dataclass
class _GreedyRun:
    clusters: Clusters
    merge_dists: list[float]  # D value of each accepted merge, in order (non-decreasing)


def _greedy(d: np.ndarray, tau: float, cap: int, acceptance: str) -> _GreedyRun:
    """Greedy agglomerative clustering on a float64 distance matrix (diagonal +inf).

    Tie-breaking is deterministic: ``np.argmin`` returns the first minimum in row-major order,
    i.e. the pair (v1, v2) with the smallest v1, then smallest v2 — as ``torch.argmin`` on the
    flattened matrix in the released code.
    """
    n = d.shape[0]
    v = d.copy()
    np.fill_diagonal(v, np.inf)
    root = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    merges: list[float] = []
    while len(merges) < cap:
        flat = int(np.argmin(v))
        v1, v2 = divmod(flat, n)
        dist = float(v[v1, v2])
        if not dist < tau:  # min(D) ≥ τ (or everything already +inf)
            break
        a, b = members[root[v1]], members[root[v2]]
        if acceptance == "complete":
            ok = bool((v[np.ix_(a, b)] < tau).all())  # every cross distance < τ
        else:  # released: only cluster(v1)×{v2} and cluster(v2)×{v1}
            ok = bool((v[a, v2] < tau).all() and (v[b, v1] < tau).all())
        if ok:
            v[np.ix_(a, b)] = np.inf
            v[np.ix_(b, a)] = np.inf
            keep_root, drop_root = min(root[v1], root[v2]), max(root[v1], root[v2])
            merged = sorted(members[keep_root] + members.pop(drop_root))
            members[keep_root] = merged
            for m in merged:
                root[m] = keep_root
            merges.append(dist)
        elif acceptance == "complete":
            # Under complete linkage a and b can never share a cluster once (v1, v2) is rejected
            # (any later test of their supersets contains D[v1, v2] = inf), so drop the whole
            # block now: same outcome as rejecting those pairs one by one, fewer argmins.
            v[np.ix_(a, b)] = np.inf
            v[np.ix_(b, a)] = np.inf
        else:
            v[v1, v2] = v[v2, v1] = np.inf  # reject just this pair
    clusters = sorted(members.values(), key=lambda c: c[0])
    return _GreedyRun(clusters, merges)


def _as_numpy(d: torch.Tensor | np.ndarray) -> np.ndarray:
    a = d.detach().cpu().numpy() if isinstance(d, torch.Tensor) else np.asarray(d)
    a = np.array(a, dtype=np.float64, copy=True)
    a[np.isnan(a)] = np.inf  # an undefined distance never merges
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"D must be a square [E, E] matrix, got shape {a.shape}")
    return a


def _cap(n: int, max_removed: int | None) -> int:
    if max_removed is None:
        return n - 1
    if max_removed < 0:
        raise ValueError(f"max_removed must be >= 0, got {max_removed}")
    return min(int(max_removed), n - 1)


def greedy_cluster(
    D: torch.Tensor | np.ndarray,  # [E, E], diagonal ignored
    tau: float,  # τ: merge threshold on D
    *,
    max_removed: int | None = None,
    acceptance: str = "complete",
) -> Clusters:
    """Greedy agglomerative clustering with a complete-linkage acceptance test.

    Repeat: take the globally closest pair (v1, v2); if every cross distance between their
    clusters is < τ, merge the clusters (their cross entries become +inf); otherwise reject only
    this pair (D[v1, v2] = +inf). Stop when min(D) ≥ τ or when ``max_removed`` experts have been
    removed (n − #clusters; the released ``--top_k``, set to n − top-k so a layer keeps enough
    experts to route to).

    ``acceptance="complete"`` tests all |A|·|B| cross distances (true complete linkage, the
    paper's description). ``"released"`` reproduces ``greedy_but_reject_mixed`` exactly, which
    only tests D[a, v2] for a ∈ cluster(v1) and D[b, v1] for b ∈ cluster(v2). Both agree whenever
    one of the two clusters is a singleton.

    Returns clusters as sorted lists of expert ids, ordered by their smallest member.
    """
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {acceptance!r}")
    d = _as_numpy(D)
    return _greedy(d, float(tau), _cap(d.shape[0], max_removed), acceptance).clusters


# ============================================================================ 3. budget by τ search


@dataclass
class ThresholdSearch:
    """Outcome of a τ search; ``greedy_cluster(D_l, tau, max_removed=max_removed[l])`` reproduces layer l."""

    tau: float
    clusters: list[Clusters]
    #: per-layer removal cap actually used (the fix-up lowers it to undo merges)
    max_removed: list[int]
    #: merges undone by the exact-budget fix-up (0: τ alone hit the target)
    undone: int
    #: number of τ values tried
    evaluations: int
    #: which schedule produced τ ("bisect", "released", or "released→bisect" on fallback)
    schedule: str = "bisect"


def _candidate_taus(ds: Sequence[np.ndarray]) -> np.ndarray:
    """Every τ at which the greedy outcome can change, in increasing order.

    The greedy only ever compares D entries with τ by ``<``, so its result is constant for τ in
    (u_i, u_{i+1}] between consecutive distinct finite entries u_i; one τ per interval suffices:
    u_0 (no merge possible) and nextafter(u_i, +inf) for every u_i (u_i now counts as "< τ").
    """
    vals = [d[np.triu_indices(d.shape[0], 1)] for d in ds]
    u = np.unique(np.concatenate(vals)) if vals else np.array([])
    u = u[np.isfinite(u)]
    if u.size == 0:
        return np.array([0.0])
    return np.concatenate([u[:1], np.nextafter(u, np.inf)])


def threshold_search(
    Ds: Sequence[torch.Tensor | np.ndarray],
    target_clusters: int,
    *,
    max_removed: int | Sequence[int | None] | None = None,
    acceptance: str = "complete",
    schedule: str = "bisect",
    tau0: float = 0.0,
    _field: str = "target_clusters",
) -> ThresholdSearch:
    """Find τ so that Σ_l #clusters_l(τ) == target_clusters exactly; see :func:`search_threshold`."""
    if acceptance not in ACCEPTANCE:
        raise ValueError(f"acceptance must be one of {ACCEPTANCE}, got {acceptance!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    ds = [_as_numpy(d) for d in Ds]
    if not ds:
        raise ValueError("Ds: no layers given")
    mr = list(max_removed) if isinstance(max_removed, Sequence) else [max_removed] * len(ds)
    if len(mr) != len(ds):
        raise ValueError(f"max_removed: {len(mr)} values for {len(ds)} layers")
    caps = [_cap(d.shape[0], m) for d, m in zip(ds, mr)]
    total = sum(d.shape[0] for d in ds)
    lowest = sum(d.shape[0] - c for d, c in zip(ds, caps))
    if not isinstance(target_clusters, (int, np.integer)) or isinstance(target_clusters, bool):
        raise ValueError(f"{_field} must be an integer, got {target_clusters!r}")
    if target_clusters > total:
        raise ValueError(f"{_field}={target_clusters} exceeds the {total} experts the layers have")
    if target_clusters < lowest:
        raise ValueError(
            f"{_field}={target_clusters} is below the {lowest} experts that must stay "
            f"(each layer keeps at least n_l − max_removed_l experts, e.g. its top-k)"
        )

    cache: dict[float, list[_GreedyRun]] = {}

    def runs(tau: float) -> list[_GreedyRun]:
        if tau not in cache:
            cache[tau] = [_greedy(d, tau, c, acceptance) for d, c in zip(ds, caps)]
        return cache[tau]

    def count(tau: float) -> int:
        return sum(len(r.clusters) for r in runs(tau))

    def done(tau: float, sched: str) -> ThresholdSearch:
        rs = runs(tau)
        return ThresholdSearch(float(tau), [r.clusters for r in rs], [len(r.merge_dists) for r in rs], 0,
                               len(cache), sched)

    grid = _candidate_taus(ds)
    if target_clusters == total:
        return done(float(grid[0]), "bisect")

    used = "bisect"
    if schedule == "released":
        tau = _released_schedule(count, target_clusters, tau0)
        if tau is not None:
            return done(tau, "released")
        used = "released→bisect"

    # Bisection over the candidate grid. count() need not be monotone in τ (a merge accepted at a
    # larger τ can make a later one fail the complete-linkage test), so keep the invariant
    # count(lo) > target >= count(hi) rather than assume monotonicity; it ends on adjacent grid
    # points, i.e. on one distinct distance value whose crossing jumps over the target.
    lo, hi = 0, len(grid) - 1
    if count(float(grid[hi])) > target_clusters:  # only with +inf entries in a user-given D
        raise ValueError(f"{_field}={target_clusters} is unreachable: even the largest τ leaves "
                         f"{count(float(grid[hi]))} clusters (D has +inf off-diagonal entries)")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(float(grid[mid])) > target_clusters:
            lo = mid
        else:
            hi = mid
    tau = float(grid[hi])
    rs = runs(tau)
    excess = target_clusters - count(tau)  # merges too many (ties / several merges at one value)
    if excess == 0:
        return done(tau, used)

    # Exact-budget fix-up: undo the `excess` merges with the largest D over all layers (latest
    # first on ties within a layer, higher layer first on ties across layers). Within a layer the
    # accepted merge distances are non-decreasing (each step takes the current global minimum and
    # entries only ever grow to +inf), so this always undoes a *suffix* of a layer's merges, which
    # is exactly the greedy run truncated by a lower max_removed — the result stays reproducible
    # as greedy_cluster(D_l, τ, max_removed=cap_l).
    events = [(dist, layer, pos) for layer, r in enumerate(rs) for pos, dist in enumerate(r.merge_dists)]
    events.sort(reverse=True)
    undo = [0] * len(ds)
    for _, layer, _ in events[:excess]:
        undo[layer] += 1
    new_caps = [len(r.merge_dists) - u for r, u in zip(rs, undo)]
    clusters = [
        r.clusters if u == 0 else _greedy(d, tau, c, acceptance).clusters
        for r, u, d, c in zip(rs, undo, ds, new_caps)
    ]
    got = sum(len(c) for c in clusters)
    assert got == target_clusters, (got, target_clusters)  # invariant of the suffix argument above
    return ThresholdSearch(tau, clusters, new_caps, excess, len(cache), used)


def _released_schedule(count: Callable[[float], int], target: int, tau0: float, max_iter: int = 200) -> float | None:
    """The released step schedule: step 0.1, doubled while the direction stays, halved after the
    first flip; gives up (None) when the count is stuck for 10 tries."""
    tau, step, last_dir, never_changed = float(tau0), 0.1, 0, True
    history: list[int] = []
    for _ in range(max_iter):
        c = count(tau)
        if c == target:
            return tau
        direction = -1 if c < target else 1  # too few clusters → lower τ
        history.append(c)
        if len(history) > 10 and min(history[-10:]) == max(history[-10:]):
            return None
        if last_dir * direction < 0:
            never_changed = False
        step = step * 2 if never_changed else step / 2
        tau += step * direction
        last_dir = direction
    return None


def search_threshold(
    Ds: Sequence[torch.Tensor | np.ndarray],  # per layer D [E_l, E_l]
    target_clusters: int,  # global budget: experts kept over all layers
    *,
    max_removed: int | Sequence[int | None] | None = None,
    acceptance: str = "complete",
    schedule: str = "bisect",
    tau0: float = 0.0,
) -> tuple[float, list[Clusters]]:
    """One global τ with Σ_l #clusters_l == target_clusters exactly; returns (τ, clusters per layer).

    ``schedule="bisect"`` (default) bisects over the finite set of τ values at which the greedy
    outcome can change (:func:`_candidate_taus`), so it always terminates in O(log #distinct D)
    greedy runs. ``schedule="released"`` first tries the released step schedule from ``tau0`` and
    falls back to bisection when it gets stuck. If no single τ gives the target (ties: crossing
    one distance value adds several merges at once), the smallest τ that reaches or passes the
    target is kept and the surplus merges with the largest D are undone (see
    :func:`threshold_search`); :class:`ThresholdSearch` reports how many.
    """
    res = threshold_search(Ds, target_clusters, max_removed=max_removed, acceptance=acceptance,
                           schedule=schedule, tau0=tau0)
    return res.tau, res.clusters


def uniform_budget(
    Ds: Sequence[torch.Tensor | np.ndarray],
    keep_per_layer: int,
    *,
    max_removed: int | Sequence[int | None] | None = None,
    acceptance: str = "complete",
) -> tuple[list[float], list[Clusters]]:
    """A τ per layer so that every layer keeps exactly ``keep_per_layer`` clusters (same fix-up)."""
    mr = list(max_removed) if isinstance(max_removed, Sequence) else [max_removed] * len(Ds)
    taus: list[float] = []
    clusters: list[Clusters] = []
    for d, m in zip(Ds, mr):
        res = threshold_search([d], keep_per_layer, max_removed=m, acceptance=acceptance, _field="keep_per_layer")
        taus.append(res.tau)
        clusters.append(res.clusters[0])
    return taus, clusters


# ============================================================================ 4. representatives


#: relative tolerance under which two centroid distances count as a tie (see :func:`representative`)
TIE_RTOL = 1e-9


def representative(members: Sequence[int], expert_vectors: torch.Tensor) -> int:
    """The member whose flattened weights are closest (L2) to the cluster centroid (first on ties).

    ``expert_vectors`` [E, D] holds every expert of the layer as one row (adapter ``expert_vectors``).

    Ours (the release is silent): distances are taken in float64 and any within ``TIE_RTOL`` of
    the smallest count as tied, so ties really go to the first member. This matters for every
    two-member cluster — the commonest kind when a few of 8 experts are removed — whose members
    are *exactly* equidistant from their mean: in float32 the rounding of the two norms decided
    which expert survived (about one pair in ten went to the second member on random weights),
    a choice that could change with the CPU's vector kernels.
    """
    if len(members) == 0:
        raise ValueError("members: empty cluster")
    if len(members) == 1:
        return int(members[0])
    idx = torch.as_tensor(list(members), dtype=torch.long)
    vecs = expert_vectors[idx].detach().to(torch.float64)
    centroid = vecs.mean(0)  # centroid of the cluster
    dist = torch.linalg.vector_norm(vecs - centroid, dim=1)
    tied = dist <= dist.min() * (1.0 + TIE_RTOL)
    return int(members[int(torch.nonzero(tied)[0])])


# ============================================================================ 5. plan


@dataclass
class LayerPlan:
    #: expert ids kept, in their new order; keep[i] stands for clusters[i]
    keep: list[int]
    #: the clusters (for baselines that do not cluster: one singleton per kept expert)
    clusters: list[list[int]]
    #: kept id -> members whose mean replaces it (selective reconstruction); empty = pure selection
    merged: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class ExpertPlan:
    layers: list[LayerPlan]
    #: experts per layer before pruning (apply_plan checks the model still has them)
    num_experts: list[int]
    method: str = "stun"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def experts_kept(self) -> list[int]:
        return [len(lp.keep) for lp in self.layers]

    def validate(self) -> None:
        if len(self.layers) != len(self.num_experts):
            raise ValueError(f"plan: {len(self.layers)} layer plans for {len(self.num_experts)} layers")
        for i, (lp, n) in enumerate(zip(self.layers, self.num_experts)):
            if len(set(lp.keep)) != len(lp.keep) or not all(0 <= e < n for e in lp.keep):
                raise ValueError(f"plan: layer {i} keep={lp.keep} is not a set of expert ids in [0, {n})")
            if len(lp.clusters) != len(lp.keep) or not all(e in c for e, c in zip(lp.keep, lp.clusters)):
                raise ValueError(f"plan: layer {i} keep[i] must be a member of clusters[i]")
            for e, ms in lp.merged.items():
                if e not in lp.keep or not all(0 <= m < n for m in ms):
                    raise ValueError(f"plan: layer {i} merged entry {e}: {ms} is not a kept expert's cluster")


def _json_float(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)  # 'inf' / '-inf' / 'nan' — plain JSON has no non-finite numbers
    if isinstance(x, dict):
        return {k: _json_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_float(v) for v in x]
    return x


def plan_to_json(plan: ExpertPlan) -> dict[str, Any]:
    """A plain-JSON dict (``json.dumps``-able without ``allow_nan``)."""
    return {
        "version": 1,
        "method": plan.method,
        "num_experts": [int(n) for n in plan.num_experts],
        "layers": [
            {
                "keep": [int(e) for e in lp.keep],
                "clusters": [[int(m) for m in c] for c in lp.clusters],
                "merged": {str(int(k)): [int(m) for m in v] for k, v in lp.merged.items()},
            }
            for lp in plan.layers
        ],
        "meta": _json_float(plan.meta),
    }


def plan_from_json(obj: dict[str, Any] | str) -> ExpertPlan:
    if isinstance(obj, str):
        obj = json.loads(obj)
    plan = ExpertPlan(
        layers=[
            LayerPlan(
                keep=[int(e) for e in lp["keep"]],
                clusters=[[int(m) for m in c] for c in lp["clusters"]],
                merged={int(k): [int(m) for m in v] for k, v in lp.get("merged", {}).items()},
            )
            for lp in obj["layers"]
        ],
        num_experts=[int(n) for n in obj["num_experts"]],
        method=str(obj.get("method", "stun")),
        meta=dict(obj.get("meta", {})),
    )
    plan.validate()
    return plan


def build_layer_plan(
    clusters: Clusters,
    expert_vectors: torch.Tensor | Callable[[list[int]], torch.Tensor],  # [E, D], or members -> [m, D]
    *,
    reconstruction: str = "none",
    kappa: int = 3,
    merge_max_clusters: int = 0,
) -> LayerPlan:
    """One kept expert per cluster; which clusters are mean-merged depends on ``reconstruction``.

    * ``"none"``: every cluster keeps its representative (member closest to the centroid).
    * ``"small_clusters"``: the paper's selective reconstruction — a cluster with fewer than κ
      members is replaced by the mean of its members, a larger one by its representative.
    * ``"max_clusters"``: the released rule — mean-merge every cluster only if the layer has
      ≤ ``merge_max_clusters`` clusters (Arctic: 2, i.e. never at 128 experts), else representatives.

    A mean-merged cluster keeps its smallest member id as the slot (its weights are replaced).
    A callable ``expert_vectors`` is asked only for the members of each multi-member cluster, so a
    large layer is never flattened as a whole.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")

    def rep(c: list[int]) -> int:
        if len(c) == 1:
            return int(c[0])
        if callable(expert_vectors):
            return int(c[representative(list(range(len(c))), expert_vectors(list(c)))])
        return representative(c, expert_vectors)

    keep: list[int] = []
    merged: dict[int, list[int]] = {}
    layer_merges = reconstruction == "max_clusters" and len(clusters) <= merge_max_clusters
    for c in clusters:
        mean_merge = len(c) > 1 and (layer_merges or (reconstruction == "small_clusters" and len(c) < kappa))
        if mean_merge:
            keep.append(int(c[0]))
            merged[int(c[0])] = [int(m) for m in c]
        else:
            keep.append(rep(c))
    return LayerPlan(keep=keep, clusters=[[int(m) for m in c] for c in clusters], merged=merged)


def layer_distances(
    model: nn.Module,
    profile: RouterProfile | None = None,
    *,
    lambda1: float = 1.0,
    lambda2: float = 0.0,
    divide_by_norm: bool = False,
    divide_mean: bool = True,
    coactivation: str = "raw",
) -> list[torch.Tensor]:
    """D [E_l, E_l] of every MoE layer of ``model`` (router rows from the model, C from ``profile``)."""
    _check_lambdas(lambda1, lambda2)
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    if lambda2 > 0:
        if profile is None:
            raise ValueError("profile: lambda2 > 0 needs a RouterProfile (run profile_router first)")
        ne = [int(ad.router_weight(b).shape[0]) for b in blocks]
        if profile.experts_per_layer != ne:
            raise ValueError(f"profile: experts per layer {profile.experts_per_layer} do not match the model's {ne}")
    return [
        expert_similarity(ad.router_weight(b), profile.coactivation[i] if lambda2 > 0 else None,
                          lambda1=lambda1, lambda2=lambda2, divide_by_norm=divide_by_norm, divide_mean=divide_mean,
                          usage=profile.frequency[i] if lambda2 > 0 else None, coactivation=coactivation)
        for i, b in enumerate(blocks)
    ]


def _member_vectors(ad: Any, block: nn.Module) -> Callable[[list[int]], torch.Tensor]:
    """members -> their flattened (gate_up, down) weights [m, 3·I·H], the rows of ``ad.expert_vectors``."""

    def get(members: list[int]) -> torch.Tensor:
        gu, down = ad.expert_tensors(block)  # [E, 2I, H], [E, H, I]
        idx = torch.as_tensor(members, dtype=torch.long, device=gu.device)
        return torch.cat([gu.detach()[idx].flatten(1), down.detach()[idx].flatten(1)], dim=1)

    return get


def plan_expert_pruning(
    model: nn.Module,
    *,
    expert_budget: int | None = None,  # experts kept over all layers (one global τ)
    keep_per_layer: int | None = None,  # or: every layer keeps this many (per-layer τ)
    profile: RouterProfile | None = None,  # co-activation counts, needed when lambda2 > 0
    lambda1: float = 1.0,  # λ1: weight of the router-row distance
    lambda2: float = 0.0,  # λ2: weight of the co-activation term
    divide_by_norm: bool = False,
    divide_mean: bool = True,
    coactivation: str = "raw",  # a_ij: "raw" counts or "normalised" (lift)
    reconstruction: str = "none",
    kappa: int = 3,  # κ of selective reconstruction ("small_clusters")
    merge_max_clusters: int = 0,  # released rule ("max_clusters")
    max_removed_per_layer: int | None = None,
    acceptance: str = "complete",
    schedule: str = "bisect",
    tau0: float = 0.0,
) -> ExpertPlan:
    """STUN's structured stage end to end: distances → τ search → clusters → kept experts.

    Each layer keeps at least top-k experts (the removal cap is n_l − top-k, tightened by
    ``max_removed_per_layer``). Bad values raise ``ValueError`` naming the field.
    """
    if (expert_budget is None) == (keep_per_layer is None):
        raise ValueError("expert_budget/keep_per_layer: give exactly one of the two")
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
    if kappa < 1:
        raise ValueError(f"kappa must be >= 1, got {kappa}")
    _check_lambdas(lambda1, lambda2)
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    top_k = ad.top_k(model.config)
    ne = [int(ad.router_weight(b).shape[0]) for b in blocks]
    caps = [n - top_k if max_removed_per_layer is None else min(n - top_k, int(max_removed_per_layer)) for n in ne]
    if any(c < 0 for c in caps):
        raise ValueError(f"max_removed_per_layer: a layer already has fewer experts ({min(ne)}) than top-k={top_k}")
    if expert_budget is not None:
        total, lowest = sum(ne), sum(n - c for n, c in zip(ne, caps))
        if expert_budget > total:
            raise ValueError(f"expert_budget={expert_budget} exceeds the model's {total} experts ({len(ne)} layers)")
        if expert_budget < lowest:
            raise ValueError(
                f"expert_budget={expert_budget} would leave a layer with fewer than top-k={top_k} experts "
                f"(or remove more than max_removed_per_layer); the least it can be is {lowest}"
            )
    else:
        assert keep_per_layer is not None
        if keep_per_layer > min(ne):
            raise ValueError(f"keep_per_layer={keep_per_layer} exceeds a layer's {min(ne)} experts")
        if keep_per_layer < top_k:
            raise ValueError(f"keep_per_layer={keep_per_layer} is below top-k={top_k}: tokens could not be routed")
        if any(n - keep_per_layer > c for n, c in zip(ne, caps)):
            raise ValueError(f"keep_per_layer={keep_per_layer} removes more than max_removed_per_layer={max_removed_per_layer}")

    ds = layer_distances(model, profile, lambda1=lambda1, lambda2=lambda2, divide_by_norm=divide_by_norm,
                         divide_mean=divide_mean, coactivation=coactivation)
    meta: dict[str, Any] = {
        "lambda1": lambda1, "lambda2": lambda2, "divide_by_norm": divide_by_norm, "divide_mean": divide_mean,
        "coactivation": coactivation,
        "reconstruction": reconstruction, "kappa": kappa, "merge_max_clusters": merge_max_clusters,
        "acceptance": acceptance, "top_k": top_k,
    }
    if expert_budget is not None:
        res = threshold_search(ds, expert_budget, max_removed=caps, acceptance=acceptance, schedule=schedule,
                               tau0=tau0, _field="expert_budget")
        clusters = res.clusters
        meta.update(expert_budget=expert_budget, tau=res.tau, max_removed=res.max_removed,
                    fixup_undone=res.undone, tau_evaluations=res.evaluations, schedule=res.schedule)
    else:
        taus, clusters = uniform_budget(ds, keep_per_layer, max_removed=caps, acceptance=acceptance)
        meta.update(keep_per_layer=keep_per_layer, taus=taus)

    layers = [
        build_layer_plan(c, _member_vectors(ad, b), reconstruction=reconstruction, kappa=kappa,
                         merge_max_clusters=merge_max_clusters)
        for c, b in zip(clusters, blocks)
    ]
    plan = ExpertPlan(layers=layers, num_experts=ne, method="stun", meta=meta)
    plan.validate()
    return plan


@torch.no_grad()
def apply_plan(model: nn.Module, plan: ExpertPlan) -> nn.Module:
    """Shrink every MoE block to the plan's kept experts (in place); returns ``model``."""
    plan.validate()
    ad = adapter_for(model)
    blocks = ad.moe_blocks(model)
    top_k = ad.top_k(model.config)
    if len(blocks) != len(plan.layers):
        raise ValueError(f"plan: {len(plan.layers)} layer plans for a model with {len(blocks)} MoE layers")
    for i, (b, lp, n) in enumerate(zip(blocks, plan.layers, plan.num_experts)):
        have = int(ad.router_weight(b).shape[0])
        if have != n:
            raise ValueError(f"plan: layer {i} was planned for {n} experts but the model has {have}")
        if len(lp.keep) < top_k:
            raise ValueError(f"plan: layer {i} keeps {len(lp.keep)} experts, fewer than top-k={top_k}")
    for b, lp in zip(blocks, plan.layers):
        ad.keep_experts(b, lp.keep, lp.merged or None)
    return model
