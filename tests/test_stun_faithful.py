"""Issue 12's acceptance tests: the paper's defaults and what the report reads its claim from —
normalised co-activation, a planted duplicate expert merged first under (λ1, λ2) = (1, 0),
kurtosis on known distributions, exact expert budgets (global τ and uniform), the sweep's
rates, the intervals and the plot's plain tick labels, and the export chosen on validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.stun.adapters import adapter_for
from tasks.stun.expert_pruning import expert_similarity, normalised_coactivation, plan_expert_pruning
from tasks.stun.kurtosis import expert_weight_kurtosis, kurtosis
from test_stun_experts import tiny


# ---------------------------------------------------------------------------- defaults


def test_defaults_follow_the_paper():
    from tasks.stun.config import StunConfig

    cfg = StunConfig()
    assert (cfg.lambda1, cfg.lambda2) == (1.0, 0.0)  # router distance alone (the notes' Arctic setting)
    assert cfg.sparsities == [0.4, 0.5, 0.65, 0.75, 0.8]
    assert cfg.expert_fractions == [0.0, 0.125, 0.25]
    assert cfg.scope == "experts" and cfg.budget == "uniform" and len(cfg.seeds) >= 2


# ---------------------------------------------------------------------------- co-activation


def _counts(seed: int = 0, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(1, 50, (n, n), generator=g).double()
    c = torch.triu(c, 1)
    c = c + c.T
    return c, c.sum(1) / 1.0  # usage consistent with top-2 pairs: f_i = Σ_j C_ij


def test_normalised_coactivation_is_invariant_to_scaling_one_experts_traffic():
    c, f = _counts()
    base = normalised_coactivation(c, f)
    for i, scale in ((0, 10.0), (3, 0.1)):
        c2, f2 = c.clone(), f.clone()
        c2[i, :] *= scale
        c2[:, i] *= scale
        c2[i, i] = 0
        f2[i] *= scale
        # the lift's N = Σ f changes too, a common factor; the *relative* similarities do not
        got = normalised_coactivation(c2, f2)
        ratio = got / base
        off = ~torch.eye(len(f), dtype=torch.bool)
        assert torch.allclose(ratio[off], ratio[off][0].expand_as(ratio[off]), rtol=1e-12)
        d1 = expert_similarity(torch.zeros(len(f), 4), c, lambda1=0, lambda2=1, usage=f, coactivation="normalised")
        d2 = expert_similarity(torch.zeros(len(f), 4), c2, lambda1=0, lambda2=1, usage=f2, coactivation="normalised")
        assert torch.allclose(d1[off], d2[off], rtol=1e-9)  # divide_mean removes the common factor
    # the raw counts are not invariant: the busiest expert's pairs become the "most similar"
    c3 = c.clone()
    c3[0, :] *= 10
    c3[:, 0] *= 10
    raw = expert_similarity(torch.zeros(6, 4), c3, lambda1=0, lambda2=1)
    assert int(torch.argmin(raw)) // 6 == 0 or int(torch.argmin(raw)) % 6 == 0


def test_normalised_coactivation_is_one_for_independent_choices():
    f = torch.tensor([40.0, 20.0, 10.0, 30.0])
    n = f.sum()
    c = torch.outer(f, f) / n  # expected co-selections under independence
    c.fill_diagonal_(0)
    a = normalised_coactivation(c, f)
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(a[off], torch.ones(12, dtype=torch.float64))


# ---------------------------------------------------------------------------- planted duplicate


def _plant_duplicate(model, a: int, b: int) -> None:
    ad = adapter_for(model)
    with torch.no_grad():
        for block in ad.moe_blocks(model):
            gu, down = ad.expert_tensors(block)
            gu[b].copy_(gu[a])
            down[b].copy_(down[a])
            ad.router_weight(block)[b].copy_(ad.router_weight(block)[a])


@pytest.mark.parametrize("budget", ["uniform", "global"])
def test_a_planted_duplicate_expert_pair_is_merged_first(budget):
    model = tiny("mixtral", 8, seed=3)
    _plant_duplicate(model, 2, 5)
    kw = {"keep_per_layer": 7} if budget == "uniform" else {"expert_budget": 2 * 8 - 1}
    plan = plan_expert_pruning(model, lambda1=1.0, lambda2=0.0, **kw)
    merged = [c for lp in plan.layers for c in lp.clusters if len(c) > 1]
    assert merged[0] == [2, 5]  # the only zero-distance pair goes first
    if budget == "uniform":
        assert all([2, 5] in lp.clusters for lp in plan.layers)
    for lp in plan.layers:
        if len(lp.keep) < 8:  # wherever a merge happened, it is the twins' and one of them is gone
            assert [2, 5] in lp.clusters and not ({2, 5} <= set(lp.keep))


# ---------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("keep", [7, 6, 4, 2])
def test_global_and_uniform_budgets_hit_their_expert_counts_exactly(keep):
    model = tiny("mixtral", 8, seed=1, layers=3)
    uni = plan_expert_pruning(model, keep_per_layer=keep, lambda1=1.0, lambda2=0.0)
    assert uni.experts_kept == [keep] * 3
    glob = plan_expert_pruning(model, expert_budget=keep * 3, lambda1=1.0, lambda2=0.0)
    assert sum(glob.experts_kept) == keep * 3 and all(2 <= k <= 8 for k in glob.experts_kept)


# ---------------------------------------------------------------------------- kurtosis


def test_kurtosis_of_known_distributions():
    g = torch.Generator().manual_seed(0)
    assert kurtosis(torch.randn(2_000_000, generator=g) * 3 + 7) == pytest.approx(3.0, abs=0.02)
    assert kurtosis(torch.rand(2_000_000, generator=g)) == pytest.approx(1.8, abs=0.01)
    lap = torch.distributions.Laplace(0.0, 1.0).sample((2_000_000,))
    assert kurtosis(lap) == pytest.approx(6.0, abs=0.15)
    assert kurtosis(torch.tensor([-1.0, 1.0, -1.0, 1.0])) == pytest.approx(1.0)  # two-point: β₂ = 1
    # pooled over pieces = over the concatenation
    parts = [torch.randn(1000, generator=g) * s for s in (1, 2, 5)]
    assert kurtosis(parts) == pytest.approx(kurtosis(torch.cat(parts)), rel=1e-9)


def test_expert_weight_kurtosis_ignores_pruned_zeros_and_magnitude_pruning_lowers_it():
    model = tiny("mixtral", 8, seed=0)
    before = expert_weight_kurtosis(model)
    ad = adapter_for(model)
    with torch.no_grad():
        for b in ad.moe_blocks(model):
            for t in ad.expert_tensors(b):
                thr = t.abs().flatten().kthvalue(int(0.5 * t.numel())).values
                t.masked_fill_(t.abs() <= thr, 0)
    after = expert_weight_kurtosis(model)
    assert after["weights"] == pytest.approx(before["weights"] / 2, rel=0.01)
    # the zeros are not counted (they would raise β₂); the remaining big weights are bimodal: lower β₂
    assert after["kurtosis"] < before["kurtosis"]


# ---------------------------------------------------------------------------- sweep and report


def test_the_sweep_puts_every_stun_row_beside_its_twin_with_matching_total_sparsity():
    from tasks.stun.config import StunConfig
    from tasks.stun.sweep import sweep_variants

    cfg = StunConfig()
    vs = sweep_variants(cfg, 8, 2)
    assert len({v.name for v in vs}) == len(vs)
    for v in vs:
        if v.study == "sweep" and v.expert_method == "stun" and v.unstructured:
            assert (1 - v.x) * (1 - v.rate) == pytest.approx(1 - v.target_sparsity)
            assert any(t.method == v.unstructured and t.expert_method is None and t.target_sparsity == v.target_sparsity
                       for t in vs)
    xs = {(v.target_sparsity, v.x) for v in vs if v.study == "sweep" and v.unstructured}
    assert xs == {(s, x) for s in cfg.sparsities for x in cfg.expert_fractions}
    assert {v.method for v in vs if v.study == "kurtosis"} == {"owl@u", "owl→stun"}


def test_wilson_interval_and_paired_bootstrap():
    from tasks.stun.report import paired_bootstrap, wilson_interval

    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(0, 20)[1] == pytest.approx(0.1611, abs=1e-3)
    a = [[1] * 60 + [0] * 40, [1] * 50 + [0] * 50]
    d, lo, hi = paired_bootstrap(a, a)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)
    b = [[0] * 100, [0] * 100]
    d, lo, hi = paired_bootstrap(a, b)
    assert d == pytest.approx(0.55) and lo < 0.55 < hi and lo > 0.4


def test_the_perplexity_axis_reads_plain_numbers(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.stun.report import _plain_log_ticks

    fig, ax = plt.subplots()
    ax.plot([0, 1], [55, 210])
    ax.set_yscale("log")
    _plain_log_ticks(ax, 55, 210)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert {"60", "100", "200"} <= set(labels)
    assert not any("10^" in s or "times" in s for s in labels)
    plt.close(fig)


def test_the_export_is_picked_by_validation_not_test():
    from tasks.stun.sweep import pick_export

    rows = [
        {"name": "a", "validate": True, "val_ppl": 70.0, "val_exact_match": 0.2, "ppl": 50.0},
        {"name": "b", "validate": True, "val_ppl": 60.0, "val_exact_match": 0.1, "ppl": 90.0},
        {"name": "c", "validate": False, "val_ppl": None, "ppl": 10.0},
    ]
    assert pick_export(rows)["name"] == "b"
    with pytest.raises(ValueError, match="validation"):
        pick_export([rows[2]])


# ---------------------------------------------------------------------------- released scope


def test_the_layer_scope_prunes_attention_and_router_too_and_the_expert_scope_does_not(tmp_path):
    from transformers import AutoModelForCausalLM, MixtralConfig

    from tasks.stun.streaming import prune_checkpoint_streaming

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "src")
    ids = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    zeros = {}
    for scope in ("experts", "layer"):
        prune_checkpoint_streaming(tmp_path / "src", tmp_path / scope, ids, method="wanda", sparsity=0.5, scope=scope)
        m = AutoModelForCausalLM.from_pretrained(tmp_path / scope)
        layer = m.model.layers[1]
        zeros[scope] = {n: float((w == 0).float().mean()) for n, w in (
            ("q", layer.self_attn.q_proj.weight), ("o", layer.self_attn.o_proj.weight),
            ("router", layer.mlp.gate.weight), ("experts", layer.mlp.experts.down_proj))}
    assert zeros["experts"] == {"q": 0.0, "o": 0.0, "router": 0.0, "experts": 0.5}
    assert zeros["layer"] == {"q": 0.5, "o": 0.5, "router": 0.5, "experts": 0.5}


# ---------------------------------------------------------------------------- the user's data


def test_user_calibration_and_evaluation_files_replace_the_zoo_corpus(tmp_path):
    import json

    from tasks.stun.corpus import build_corpus, build_user_corpus, load_corpus

    base = tmp_path / "base"
    build_corpus(base, seed=0, heldout_works=2, n_train_problems=50, n_heldout_problems=20)
    (tmp_path / "calib.jsonl").write_text("\n".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}"})
                                                    for i in range(5)) + "\n")
    (tmp_path / "eval.txt").write_text("first document\nstill first\n\nsecond document\n")
    (tmp_path / "probs.jsonl").write_text(json.dumps({"question": "What is 2+3?", "answer": 5}) + "\n")
    out = tmp_path / "data"
    build_user_corpus(out, base, calib_data=str(tmp_path / "calib.jsonl"), eval_data=str(tmp_path / "eval.txt"),
                      eval_problems=None)
    c = load_corpus(out)
    assert c.train_text[0].startswith("def f0") and len(c.train_text) == 5 and c.train_problems == []
    assert c.heldout_text == ["first document\nstill first", "second document"]
    assert c.heldout_problems == []  # eval text without a problem set: exact match is not scored
    build_user_corpus(tmp_path / "d2", base, calib_data=None, eval_data=None, eval_problems=str(tmp_path / "probs.jsonl"))
    c2 = load_corpus(tmp_path / "d2")
    assert [p.answer for p in c2.heldout_problems] == [5] and c2.train_text == load_corpus(base).train_text
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match="line 1 needs 'question' and an integer 'answer'"):
        build_user_corpus(tmp_path / "d3", base, calib_data=None, eval_data=None,
                          eval_problems=str(tmp_path / "bad.jsonl"))


def _row(name, method, s, x, seed, ppl, correct, expert_method=None, unstructured=None):
    return {"name": name, "method": method, "target_sparsity": s, "x": x, "seed": seed, "study": "sweep",
            "expert_method": expert_method, "unstructured": unstructured, "ppl": ppl,
            "exact_match": sum(correct) / len(correct), "correct": correct, "expert_weights_total": 100,
            "expert_weights_nonzero": round(100 * (1 - s)), "experts_per_layer": [8], "kurtosis": 3.0}


def test_the_report_pairs_each_stun_row_with_its_twin_and_answers_figure_1():
    from tasks.stun.report import aggregate, compare, figure1_table, twin_of

    rows = []
    for seed, (p_owl, p_stun, p_exp) in enumerate([(80.0, 70.0, 90.0), (84.0, 78.0, 95.0)]):
        rows += [_row("dense", "dense", 0.0, 0.0, seed, 50.0, [1, 1, 1, 0]),
                 _row("owl-s65", "owl", 0.65, 0.0, seed, p_owl, [1, 0, 0, 0], unstructured="owl"),
                 _row("stun-owl-k6-s65", "stun+owl", 0.65, 0.25, seed, p_stun, [1, 1, 0, 0], "stun", "owl"),
                 _row("stun_experts-s65", "stun_experts", 0.65, 0.625, seed, p_exp, [0, 0, 0, 0], "stun")]
    table = aggregate(rows)
    stun = next(t for t in table if t["name"] == "stun-owl-k6-s65")
    assert (stun["ppl"], stun["ppl_std"]) == pytest.approx((74.0, math.sqrt(32.0)))
    twin = twin_of(stun, table)
    assert twin["name"] == "owl-s65"
    c = compare(stun, twin)
    assert c["dppl"][0] == pytest.approx(-8.0) and c["ppl_wins"] == 2 and c["seeds"] == 2
    assert c["dem"][0] == pytest.approx(0.25)  # one more of four problems right, on both seeds
    fig = figure1_table(table)
    assert len(fig) == 1 and fig[0]["STUN beats both ends (ppl)"] == "yes" and fig[0]["STUN beats both ends (EM)"] == "yes"
