"""STUN stage 1 (expert profiling, clustering, τ search, plans) and the NAEE / Expert-Drop baselines."""
from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig, Qwen3MoeConfig

from tasks.stun.adapters import adapter_for
from tasks.stun.baselines import NaeeLayerSearch, catch_block_io, frequency_drop_plan, naee_prune, naee_prune_layer
from tasks.stun.checkpoint import experts_per_layer, load_checkpoint, save_checkpoint
from tasks.stun.expert_pruning import (
    ExpertPlan,
    LayerPlan,
    apply_plan,
    build_layer_plan,
    expert_similarity,
    greedy_cluster,
    plan_expert_pruning,
    plan_from_json,
    plan_to_json,
    representative,
    search_threshold,
    threshold_search,
    uniform_budget,
)
from tasks.stun.profiling import RouterProfile, coactivation_counts, profile_router

VOCAB = 64
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def tiny(family: str = "mixtral", n_experts: int = 8, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    common = {**COMMON, "num_hidden_layers": layers}
    if family == "mixtral":
        cfg = MixtralConfig(**common, intermediate_size=16, num_local_experts=n_experts)
    elif family == "qwen2_moe":
        cfg = Qwen2MoeConfig(**common, intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=24,
                             num_experts=n_experts, norm_topk_prob=False, decoder_sparse_step=1)
    elif family == "qwen3_moe":
        cfg = Qwen3MoeConfig(**common, intermediate_size=32, moe_intermediate_size=16, num_experts=n_experts,
                             norm_topk_prob=True, decoder_sparse_step=1, head_dim=8)
    else:
        raise KeyError(family)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # Qwen routers are zero-initialised: give them something to route with
        for b in adapter_for(model).moe_blocks(model):
            b.gate.weight.normal_(0, 0.5)
    return model


def calib(n: int = 3, seed: int = 1, b: int = 2, t: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (b, t), generator=g) for _ in range(n)]


def hidden(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=ids, use_cache=False).last_hidden_state


# ============================================================================ profiling


def test_coactivation_counts_equal_hand_computation():
    big, mid, low = 5.0, 3.0, 0.0
    logits = torch.tensor([
        [big, mid, low, low],  # top-2 {0, 1}
        [mid, big, low, low],  # {0, 1}
        [low, mid, big, low],  # {1, 2}
        [mid, low, low, big],  # {0, 3}
        [big, low, low, mid],  # {0, 3} — masked out below
    ])
    c, f = coactivation_counts(logits, pair_k=2, valid=torch.tensor([True, True, True, True, False]))
    want = torch.zeros(4, 4, dtype=torch.float64)
    want[0, 1] = want[1, 0] = 2
    want[1, 2] = want[2, 1] = 1
    want[0, 3] = want[3, 0] = 1
    assert torch.equal(c, want)
    assert torch.equal(f, torch.tensor([3.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    # pair_k=3: all three pairs inside one token's top-3 are counted once each
    c3, f3 = coactivation_counts(torch.tensor([[4.0, 3.0, 2.0, 1.0]]), pair_k=3)
    want3 = torch.zeros(4, 4, dtype=torch.float64)
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        want3[a, b] = want3[b, a] = 1
    assert torch.equal(c3, want3) and torch.equal(f3, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))


def test_profile_matches_counts_from_model_router_logits():
    model = tiny("mixtral", 8)
    batches = calib()
    prof = profile_router(model, batches)
    n = 8
    want_c = [torch.zeros(n, n, dtype=torch.float64) for _ in range(2)]
    want_f = [torch.zeros(n, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        for ids in batches:  # independent path: the model's own output_router_logits
            for layer, logits in enumerate(model(ids, output_router_logits=True).router_logits):
                for row in logits.softmax(-1):
                    a, b = (int(i) for i in row.topk(2).indices)
                    want_c[layer][a, b] += 1
                    want_c[layer][b, a] += 1
                    want_f[layer][a] += 1
                    want_f[layer][b] += 1
    for layer in range(2):
        assert torch.equal(prof.coactivation[layer], want_c[layer])
        assert torch.equal(prof.frequency[layer], want_f[layer])
        assert torch.equal(prof.coactivation[layer], prof.coactivation[layer].T)
    assert prof.tokens == 3 * 2 * 12
    # every token contributes one pair per layer and top-k entries to the frequency
    assert prof.coactivation[0].sum() == 2 * prof.tokens and prof.frequency[0].sum() == 2 * prof.tokens


@pytest.mark.parametrize("n_experts", [8, 16])
def test_profiling_cost_is_one_forward_pass_per_batch_whatever_the_expert_count(n_experts):
    model = tiny("mixtral", n_experts)
    calls = []
    h = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    try:
        prof = profile_router(model, calib(n=4))
    finally:
        h.remove()
    assert prof.forward_passes == 4 == len(calls)
    assert prof.experts_per_layer == [n_experts, n_experts]
    # hooks are gone afterwards: another forward adds nothing to the profile
    before = prof.coactivation[0].clone()
    hidden(model, calib(n=1)[0])
    assert torch.equal(prof.coactivation[0], before)
    assert all(len(b.gate._forward_hooks) == 0 for b in adapter_for(model).moe_blocks(model))


def test_shard_merge_equals_single_pass_and_save_load_roundtrips(tmp_path):
    model = tiny("qwen2_moe", 6)
    batches = calib(n=3)
    whole = profile_router(model, batches)
    merged = profile_router(model, batches[:1]).merge(profile_router(model, batches[1:]))
    assert merged.forward_passes == whole.forward_passes == 3 and merged.tokens == whole.tokens
    for a, b in zip(merged.coactivation + merged.frequency, whole.coactivation + whole.frequency):
        assert torch.equal(a, b)
    whole.meta["shard"] = "all"
    loaded = RouterProfile.load(whole.save(tmp_path / "profile"))
    assert loaded.meta == {"shard": "all"} and loaded.pair_k == 2 and loaded.tokens == whole.tokens
    for a, b in zip(loaded.coactivation, whole.coactivation):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pair_k"):
        whole.merge(profile_router(model, batches[:1], pair_k=3))


# ============================================================================ similarity and clustering


def test_expert_similarity_reproduces_both_released_variants():
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    d = expert_similarity(w, lambda1=1.0, lambda2=0.0)
    assert d[0, 1] == 5 and d[0, 2] == 10 and d[1, 2] == 5
    assert torch.isinf(torch.diagonal(d)).all()
    d_norm = expert_similarity(w, divide_by_norm=True)
    assert torch.allclose(d_norm[0, 1], torch.tensor(5 / math.sqrt(9 + 16 + 36 + 64), dtype=torch.float64))
    c = torch.tensor([[0.0, 6.0, 0.0], [6.0, 0.0, 3.0], [0.0, 3.0, 0.0]])
    mean_neg = float((-c).mean().abs())  # = 18/9 = 2
    mix = expert_similarity(w, c, lambda1=1.0, lambda2=0.5)  # the --mix_weight 0.5 form
    assert torch.isclose(mix[0, 1], torch.tensor(0.5 * (-6) / mean_neg + 5, dtype=torch.float64))
    assert torch.isclose(mix[1, 2], torch.tensor(0.5 * (-3) / mean_neg + 5, dtype=torch.float64))
    only_c = expert_similarity(w, c, lambda1=0.0, lambda2=1.0)  # --divide_mean
    assert only_c[0, 1] == -3 and only_c[0, 2] == 0
    raw = expert_similarity(w, c, lambda1=0.0, lambda2=1.0, divide_mean=False)
    assert raw[0, 1] == -6
    with pytest.raises(ValueError, match="lambda1"):
        expert_similarity(w, c, lambda1=0.0, lambda2=0.0)
    with pytest.raises(ValueError, match="lambda2"):
        expert_similarity(w, c, lambda1=1.0, lambda2=-1.0)
    with pytest.raises(ValueError, match="coact"):
        expert_similarity(w, None, lambda1=1.0, lambda2=1.0)


def planted_router(groups: list[list[int]], h: int = 16, noise: float = 1e-3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = sum(len(m) for m in groups)
    w = torch.empty(n, h)
    for members in groups:
        center = torch.randn(h, generator=g)
        for e in members:
            w[e] = center + noise * torch.randn(h, generator=g)
    return w


def test_clustering_recovers_planted_clusters():
    groups = [[0, 4, 7], [1, 2, 6], [3, 5]]  # ids interleaved on purpose
    d = expert_similarity(planted_router(groups))
    tau, (clusters,) = search_threshold([d], 3)
    assert sorted(clusters) == sorted(sorted(g) for g in groups)
    assert greedy_cluster(d, tau) == clusters
    # any τ between the intra-group (~1e-3) and inter-group (~O(1)) distances gives the same answer
    assert sorted(greedy_cluster(d, 0.1)) == sorted(sorted(g) for g in groups)


def test_complete_linkage_rejects_what_single_linkage_would_chain():
    # points on a line at 0, 1, 2, 3: every neighbour is within τ = 1.5, so single linkage chains
    # them into one cluster; complete linkage cannot put 0 and 2 (distance 2) together.
    x = torch.arange(4.0)
    d = (x[:, None] - x[None, :]).abs()
    assert greedy_cluster(d, 1.5) == [[0, 1], [2, 3]]

    # A = {0, 1}, B = {2, 3} meet through (1, 2); D[0, 3] = 5 ≥ τ. The released test only looks
    # at cluster(v1)×{v2} and cluster(v2)×{v1}, so it merges; true complete linkage does not.
    d2 = torch.tensor([
        [0.0, 1.0, 1.3, 5.0],
        [1.0, 0.0, 1.2, 1.3],
        [1.3, 1.2, 0.0, 1.1],
        [5.0, 1.3, 1.1, 0.0],
    ])
    assert greedy_cluster(d2, 2.0) == [[0, 1], [2, 3]]
    assert greedy_cluster(d2, 2.0, acceptance="released") == [[0, 1, 2, 3]]


def test_max_removed_caps_the_number_of_merges():
    d = torch.full((5, 5), 0.1)
    assert greedy_cluster(d, 1.0) == [[0, 1, 2, 3, 4]]
    assert len(greedy_cluster(d, 1.0, max_removed=2)) == 3
    # ties are broken by the first pair in row-major order: (0, 1), then (0, 2)
    assert greedy_cluster(d, 1.0, max_removed=2) == [[0, 1, 2], [3], [4]]


def random_ds(layers: int = 4, n: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [expert_similarity(torch.randn(n, 16, generator=g)) for _ in range(layers)]


@pytest.mark.parametrize("schedule", ["bisect", "released"])
def test_threshold_search_hits_global_budget_exactly(schedule):
    ds = random_ds()
    for target in [8, 11, 17, 20, 23, 29, 31, 32]:  # 4 layers × 8 experts, each keeps >= top-k = 2
        res = threshold_search(ds, target, max_removed=6, schedule=schedule)
        assert sum(len(c) for c in res.clusters) == target
        for d, c, cap in zip(ds, res.clusters, res.max_removed):
            assert len(c) >= 2
            assert sorted(m for cl in c for m in cl) == list(range(8))  # a partition of the experts
            assert greedy_cluster(d, res.tau, max_removed=cap) == c  # reproducible from (τ, cap)


def test_threshold_search_fixes_up_ties_deterministically():
    # all off-diagonal distances equal (e.g. identical co-activation counts): crossing that one
    # value merges every layer down to its cap at once, so no τ alone gives 10 of 18.
    ds = [torch.full((6, 6), -1.0) for _ in range(3)]
    counts = {sum(len(c) for c in greedy_cluster_all(ds, t)) for t in (-1.0, -0.999)}
    assert 10 not in counts
    res = threshold_search(ds, 10, max_removed=4)
    assert sum(len(c) for c in res.clusters) == 10 and res.undone > 0
    again = threshold_search(ds, 10, max_removed=4)
    assert again.clusters == res.clusters and again.tau == res.tau


def greedy_cluster_all(ds, tau):
    return [greedy_cluster(d, tau, max_removed=4) for d in ds]


def test_uniform_budget_gives_every_layer_the_same_count():
    ds = random_ds(layers=3, n=8, seed=3)
    for keep in range(2, 9):
        taus, clusters = uniform_budget(ds, keep, max_removed=6)
        assert [len(c) for c in clusters] == [keep] * 3
        assert len(taus) == 3


def test_representative_is_the_member_nearest_the_centroid():
    vecs = torch.zeros(8, 2)
    vecs[2] = torch.tensor([0.0, 0.0])
    vecs[5] = torch.tensor([1.0, 0.0])
    vecs[7] = torch.tensor([10.0, 0.0])  # centroid (11/3, 0): member 5 is nearest, not the mean-ish outlier
    assert representative([2, 5, 7], vecs) == 5
    assert representative([3], vecs) == 3
    assert representative([2, 7], vecs) == 2  # equidistant: first member


def test_a_two_member_cluster_keeps_its_first_member_whatever_the_rounding():
    # Both members of a pair are exactly equidistant from their mean, so the documented tie rule
    # (first member) must decide, not float32 rounding of the two norms (which sent about one
    # random pair in ten to the second member: a choice that could flip with the CPU's kernels).
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        vecs = torch.randn(4, 3 * 256 * 128, generator=g) * 0.02  # a zoo expert's size and scale
        assert representative([1, 3], vecs) == 1
        assert representative([0, 2], vecs.to(torch.bfloat16)) == 0


# ============================================================================ plans


def test_reconstruction_modes_pick_means_and_representatives():
    vecs = torch.tensor([[0.0], [1.0], [0.0], [1.0], [5.0], [9.0]])
    clusters = [[0, 1], [2, 3, 4], [5]]
    none = build_layer_plan(clusters, vecs, reconstruction="none")
    assert none.merged == {} and none.keep == [0, 3, 5]  # centroid of {0,1,5} is 2 → member 3 (value 1)
    small = build_layer_plan(clusters, vecs, reconstruction="small_clusters", kappa=3)
    assert small.merged == {0: [0, 1]} and small.keep == [0, 3, 5]  # size 2 < κ merged, size 3 kept as rep
    assert build_layer_plan(clusters, vecs, reconstruction="max_clusters", merge_max_clusters=2).merged == {}
    many = build_layer_plan(clusters, vecs, reconstruction="max_clusters", merge_max_clusters=3)
    assert many.merged == {0: [0, 1], 2: [2, 3, 4]}


def test_mean_merged_expert_carries_the_members_mean_weights():
    model = tiny("mixtral", 6)
    ad = adapter_for(model)
    block = ad.moe_blocks(model)[0]
    gu, down = (t.detach().clone() for t in ad.expert_tensors(block))
    w = ad.router_weight(block).detach().clone()
    plan = ExpertPlan(
        layers=[LayerPlan(keep=[1, 2, 5], clusters=[[1, 3], [0, 2, 4], [5]], merged={1: [1, 3]}),
                LayerPlan(keep=[0, 1, 2, 3, 4, 5], clusters=[[e] for e in range(6)])],
        num_experts=[6, 6],
    )
    apply_plan(model, plan)
    ngu, ndown = ad.expert_tensors(block)
    assert torch.allclose(ngu[0], gu[[1, 3]].mean(0)) and torch.allclose(ndown[0], down[[1, 3]].mean(0))
    assert torch.allclose(ad.router_weight(block)[0], w[[1, 3]].mean(0))
    assert torch.equal(ngu[1], gu[2]) and torch.equal(ngu[2], gu[5])
    assert experts_per_layer(model) == [3, 6]


def test_stun_plan_hits_budget_roundtrips_json_and_applies():
    model = tiny("mixtral", 8)
    prof = profile_router(model, calib())
    plan = plan_expert_pruning(model, expert_budget=7, profile=prof, lambda1=1.0, lambda2=1.0,
                               reconstruction="small_clusters")
    assert sum(plan.experts_kept) == 7 and min(plan.experts_kept) >= 2
    assert any(len(c) >= 3 for lp in plan.layers for c in lp.clusters)
    ad = adapter_for(model)
    for lp, block in zip(plan.layers, ad.moe_blocks(model)):
        for kept, c in zip(lp.keep, lp.clusters):
            if len(c) >= 3:  # representative over the adapter's flattened expert weights
                assert kept == representative(c, ad.expert_vectors(block))
            elif len(c) == 2:  # < κ = 3 members: mean-merged into the first member's slot
                assert lp.merged[kept] == c and kept == c[0]
    text = json.dumps(plan_to_json(plan), allow_nan=False)
    back = plan_from_json(text)
    assert plan_to_json(back) == plan_to_json(plan)
    apply_plan(model, back)
    assert experts_per_layer(model) == plan.experts_kept
    assert torch.isfinite(hidden(model, calib(n=1)[0])).all()


def test_uniform_plan_saves_and_loads_in_stock_transformers(tmp_path):
    model = tiny("mixtral", 8)
    plan = plan_expert_pruning(model, keep_per_layer=6, lambda1=1.0, divide_by_norm=True)
    assert plan.experts_kept == [6, 6]
    apply_plan(model, plan)
    ids = calib(n=1)[0]
    save_checkpoint(model, tmp_path / "ckpt")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()  # no paperline code involved
    assert stock.config.num_local_experts == 6
    torch.testing.assert_close(hidden(stock, ids), hidden(model, ids))
    reloaded, _ = load_checkpoint(tmp_path / "ckpt")
    torch.testing.assert_close(hidden(reloaded, ids), hidden(model, ids))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_removing_a_never_routed_expert_changes_no_output(family):
    model = tiny(family, 6)
    ad = adapter_for(model)
    with torch.no_grad():
        # hidden dim 0 carries a positive constant through the residual stream (attention and
        # expert outputs of a fresh model are small), so a router row of −1000·e_0 gives expert 5
        # a logit of about −2500 on every token: it is never in the top-k
        model.model.embed_tokens.weight.normal_(0, 1.0)
        model.model.embed_tokens.weight[:, 0] = 3.0
        for b in ad.moe_blocks(model):
            b.gate.weight[:, 0] = 0.0  # the other experts route on the remaining, varied dims
            b.gate.weight[5] = 0.0
            b.gate.weight[5, 0] = -1000.0
    ids = calib(n=2)
    before = [hidden(model, x) for x in ids]
    prof = profile_router(model, ids, pair_k=2)
    for f in prof.frequency:
        assert f[5] == 0 and (f[:5] > 0).all()
    plan = frequency_drop_plan(prof, keep_per_layer=5)  # Expert Drop removes exactly the unused expert
    assert [lp.keep for lp in plan.layers] == [[0, 1, 2, 3, 4]] * 2
    apply_plan(model, plan)
    assert experts_per_layer(model) == [5, 5]
    for x, ref in zip(ids, before):
        torch.testing.assert_close(hidden(model, x), ref, atol=1e-6, rtol=0)


# ============================================================================ NAEE


def block_and_tokens(family: str, n_experts: int, n_tokens: int = 40, seed: int = 0):
    model = tiny(family, n_experts, seed=seed)
    block = adapter_for(model).moe_blocks(model)[0]
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(1, n_tokens, 32, generator=g)
    with torch.no_grad():
        z = block(x)
    return block, x[0], z[0]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe"])
def test_naee_losses_equal_brute_force_pruned_block_outputs(family):
    block, x, z = block_and_tokens(family, 5)
    ad = adapter_for({"mixtral": MixtralConfig, "qwen2_moe": Qwen2MoeConfig, "qwen3_moe": Qwen3MoeConfig}[family]())
    subsets = list(itertools.combinations(range(5), 3))
    search = NaeeLayerSearch(block, x, z, keep_outputs=True)
    fast = search.losses(torch.tensor(subsets))  # Gram-matrix shortcut
    masks = torch.zeros(len(subsets), 5, dtype=torch.bool).scatter_(1, torch.tensor(subsets), True)
    explicit = torch.linalg.norm((search.routed_output(masks) - search.target).flatten(1), dim=1)
    torch.testing.assert_close(fast, explicit, rtol=1e-6, atol=1e-9)
    brute = []
    for s in subsets:  # really prune a copy and run the family's own forward
        b = copy.deepcopy(block)
        ad.keep_experts(b, list(s))
        with torch.no_grad():
            out = b(x[None])[0]
        brute.append(torch.linalg.norm((z.double() - out.double())))
    torch.testing.assert_close(fast, torch.stack(brute), rtol=1e-4, atol=1e-5)
    keep, loss, evals = naee_prune_layer(block, x, z, 3)
    assert evals == math.comb(5, 3) and loss == pytest.approx(float(min(brute)), rel=1e-4, abs=1e-5)
    assert keep == list(subsets[int(torch.stack(brute).argmin())])
    # keeping everything reproduces the block: the re-routing maths is the family's
    assert NaeeLayerSearch(block, x, z).losses(torch.tensor([[0, 1, 2, 3, 4]]))[0] < 1e-5


def test_naee_finds_the_planted_best_subset():
    block, x, _ = block_and_tokens("mixtral", 6)
    x = x.clone()
    x[:, 0] = 5.0  # a positive coordinate every token shares
    with torch.no_grad():
        for e in (1, 4):  # experts 1 and 4 are never routed: dropping exactly them is lossless
            block.gate.weight[e] = 0.0
            block.gate.weight[e, 0] = -100.0
        z = block(x[None])[0]
    search = NaeeLayerSearch(block, x, z)
    subsets = torch.tensor(list(itertools.combinations(range(6), 4)))
    losses = search.losses(subsets)
    keep, loss, evals = naee_prune_layer(block, x, z, 4)
    scale = float(torch.linalg.norm(z))
    assert keep == [0, 2, 3, 5] and loss < 1e-6 * scale and evals == 15
    assert sorted(losses.tolist())[1] > 0.1 * scale  # every other subset is clearly worse


def test_naee_refuses_infeasible_enumeration_with_named_error():
    block, x, z = block_and_tokens("mixtral", 8)
    with pytest.raises(ValueError, match=r"naee_max_combinations.*C\(8,4\)=70"):
        naee_prune_layer(block, x, z, 4, max_combinations=69)
    with pytest.raises(ValueError, match="keep_per_layer"):
        naee_prune_layer(block, x, z, 1)


def test_naee_prune_counts_passes_and_evaluations_and_its_loss_is_the_real_one():
    model = tiny("mixtral", 6)
    batches = calib(n=3)
    xs, zs, _ = catch_block_io(model, batches)
    res = naee_prune(model, batches, keep_per_layer=4)
    assert res.forward_passes == 3
    assert res.evaluations == [math.comb(6, 4)] * 2 and res.block_evaluations == 30
    assert experts_per_layer(model) == [4, 4]
    for block, x, z, loss in zip(adapter_for(model).moe_blocks(model), xs, zs, res.losses):
        with torch.no_grad():
            out = block(x[None])[0]
        assert float(torch.linalg.norm(z.double() - out.double())) == pytest.approx(loss, rel=1e-4, abs=1e-5)


# ============================================================================ validation


def test_bad_inputs_raise_errors_naming_the_field():
    model = tiny("mixtral", 8)
    prof = profile_router(model, calib(n=1))
    with pytest.raises(ValueError, match="expert_budget"):
        plan_expert_pruning(model, expert_budget=17)  # 2 layers × 8 experts
    with pytest.raises(ValueError, match="expert_budget.*top-k"):
        plan_expert_pruning(model, expert_budget=3)  # a layer would keep < 2 experts
    with pytest.raises(ValueError, match="lambda1/lambda2"):
        plan_expert_pruning(model, expert_budget=12, profile=prof, lambda1=0.0, lambda2=0.0)
    with pytest.raises(ValueError, match="profile"):
        plan_expert_pruning(model, expert_budget=12, lambda2=1.0)
    with pytest.raises(ValueError, match="keep_per_layer"):
        plan_expert_pruning(model, keep_per_layer=1)
    with pytest.raises(ValueError, match="keep_per_layer"):
        frequency_drop_plan(prof, keep_per_layer=9)
    with pytest.raises(ValueError, match="target_clusters"):
        search_threshold(random_ds(layers=2), 17)
    with pytest.raises(ValueError, match="plan"):
        apply_plan(model, ExpertPlan(layers=[LayerPlan([0], [[0]])] * 2, num_experts=[8, 8]))
    with pytest.raises(ValueError, match="plan"):
        apply_plan(tiny("mixtral", 6), plan_expert_pruning(model, keep_per_layer=6))
