"""STUN stage 2 (unstructured pruning of MoE experts): Wanda / OWL / magnitude scores and masks,
per-expert calibration statistics, and the layer-by-layer streaming pruner on tiny saved
Mixtral and Qwen2-MoE checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.stun.adapters import adapter_for
from tasks.stun.checkpoint import EXPERTS_PER_LAYER, load_checkpoint, save_checkpoint
from tasks.stun.streaming import measure_sparsity, prune_checkpoint_streaming, pruning_steps, streaming_logits
from tasks.stun.unstructured import (
    PRUNING_METHODS,
    ExpertInputStats,
    magnitude_scores,
    nm_mask,
    owl_from_lod,
    owl_layer_sparsities,
    prune_block_experts,
    row_mask,
    wanda_scores,
)

VOCAB = 64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: intra-op threads only add contention (conftest restores the count)."""
    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------ tiny models


def mixtral_config(layers: int = 3):
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def qwen_config(layers: int = 2):
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                          shared_expert_intermediate_size=40, num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_model(config, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def calib_ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))  # [N, T]


@pytest.fixture(scope="module")
def mixtral_ckpt(tmp_path_factory) -> Path:
    """3-layer Mixtral saved in several small shards."""
    path = tmp_path_factory.mktemp("mixtral") / "src"
    make_model(mixtral_config(3)).save_pretrained(path, max_shard_size="40KB")
    assert len(list(path.glob("*.safetensors"))) > 2
    return path


@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qwen") / "src"
    make_model(qwen_config(2), seed=1).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------ scores & masks


def test_wanda_prunes_exactly_the_low_weight_times_activation_entries():
    W = torch.tensor([[1.0, -2.0, 3.0, -4.0],
                      [5.0, 3.0, -2.0, 1.0]])
    act_sq = torch.tensor([1.0, 16.0, 4.0, 0.25])  # ‖X_j‖² → ‖X_j‖ = [1, 4, 2, 0.5]
    s = wanda_scores(W, act_sq)
    torch.testing.assert_close(s, torch.tensor([[1.0, 8.0, 6.0, 2.0], [5.0, 12.0, 4.0, 0.5]]))
    keep = row_mask(s, 0.5)
    assert keep.tolist() == [[False, True, True, False], [True, True, False, False]]
    # magnitude alone would keep the two largest |W| of each row instead
    assert row_mask(magnitude_scores(W), 0.5).tolist() == [[False, False, True, True], [True, True, False, False]]


def test_row_mask_prunes_the_requested_fraction_of_every_row_and_only_its_lowest():
    scores = torch.rand(16, 40, generator=torch.Generator().manual_seed(0))
    for s in (0.0, 0.25, 0.5, 0.9):
        keep = row_mask(scores, s)
        assert ((~keep).sum(1) == round(s * 40)).all()
        for r in range(16):
            if 0 < s:
                assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


def test_row_mask_spreads_a_fractional_remainder_to_hit_the_tensor_total():
    scores = torch.rand(10, 32, generator=torch.Generator().manual_seed(0))
    keep = row_mask(scores, 0.3)  # 9.6 per row
    per_row = (~keep).sum(1)
    assert set(per_row.tolist()) <= {9, 10}
    assert int(per_row.sum()) == round(0.3 * 320)


def test_nm_mask_has_exactly_n_zeros_in_every_group_of_m_and_they_are_the_lowest():
    scores = torch.rand(8, 16, generator=torch.Generator().manual_seed(0))
    keep = nm_mask(scores, 2, 4)
    groups_keep, groups = keep.reshape(8, 4, 4), scores.reshape(8, 4, 4)
    assert ((~groups_keep).sum(-1) == 2).all()
    pruned_max = groups.masked_fill(groups_keep, -1).amax(-1)
    kept_min = groups.masked_fill(~groups_keep, 2).amin(-1)
    assert (pruned_max <= kept_min).all()
    with pytest.raises(ValueError, match="multiple"):
        nm_mask(torch.rand(2, 6), 2, 4)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_0_1_raises_naming_sparsity(bad, mixtral_ckpt, calib_ids, tmp_path):
    with pytest.raises(ValueError, match="sparsity"):
        row_mask(torch.rand(2, 4), bad)
    with pytest.raises(ValueError, match="sparsity"):
        prune_checkpoint_streaming(mixtral_ckpt, tmp_path / "out", calib_ids, method="wanda", sparsity=bad)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ OWL


def test_owl_maps_outlier_ratios_linearly_onto_plus_minus_lambda():
    # LOD [0, .5, 1] → [0, λ, 2λ] → minus mean → keep ratios (1−S) + [−λ, 0, λ]
    sp = owl_from_lod([0.0, 0.5, 1.0], 0.5, lam=0.08)
    assert sp == pytest.approx([0.58, 0.50, 0.42])
    assert owl_from_lod([0.3, 0.3, 0.3], 0.4) == [0.4, 0.4, 0.4]  # all LODs equal → all = target


def test_owl_keeps_skewed_layers_within_lambda_unlike_the_reference_formula():
    lods = [0.0, 0.0, 0.0, 1.0]  # reference: [0, 0, 0, 2λ] − mean → the outlier layer moves 1.5λ
    ref = owl_from_lod(lods, 0.5, lam=0.08, strict_bound=False)
    assert ref == pytest.approx([0.54, 0.54, 0.54, 0.38])
    strict = owl_from_lod(lods, 0.5, lam=0.08)
    assert sum(strict) / 4 == pytest.approx(0.5, abs=1e-12)
    assert strict == pytest.approx([0.5 + 0.08 / 3] * 3 + [0.42])  # same line, shrunk so max |Δ| = λ


def test_owl_layer_sparsities_average_to_target_and_protect_the_outlier_layer():
    g = torch.Generator().manual_seed(0)
    layers = []
    for frac in (0.0, 0.05, 0.01, 0.02):  # share of heavy outliers per layer
        s = torch.rand(4000, generator=g)
        n = int(frac * s.numel())
        s[:n] = 100.0 + torch.rand(n, generator=g)
        layers.append(s)
    target, lam = 0.6, 0.08
    sp = owl_layer_sparsities(layers, target, M=5.0, lam=lam)
    assert abs(sum(sp) / len(sp) - target) < 1e-6
    assert all(abs(v - target) <= lam + 1e-9 for v in sp)
    assert min(range(4), key=lambda i: sp[i]) == 1  # most outliers → lowest sparsity
    assert max(range(4), key=lambda i: sp[i]) == 0
    assert sp[1] < sp[3] < sp[2] < sp[0]


# ------------------------------------------------------------------------------------ per-expert statistics


def _routed_block():
    """A Mixtral MoE block whose router sends x₀ > 0 to experts {0, 1} and x₀ < 0 to {2, 3}."""
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(0)
    cfg = mixtral_config(1)
    block = MixtralSparseMoeBlock(cfg).eval()
    nn.init.normal_(block.experts.gate_up_proj, std=0.2)
    nn.init.normal_(block.experts.down_proj, std=0.2)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[:, 0] = torch.tensor([3.0, 2.0, -2.0, -3.0])
    return block


def test_expert_statistics_count_only_the_tokens_routed_to_each_expert():
    block = _routed_block()
    x = torch.randn(1, 10, 32)
    x[0, :4, 0] = 1.0  # tokens 0–3 → experts 0, 1
    x[0, 4:, 0] = -1.0  # tokens 4–9 → experts 2, 3
    stats = ExpertInputStats.for_block(block)
    with stats.hooked(block):
        block(x)
    assert len(block.experts._forward_pre_hooks) == 0  # handles removed
    assert stats.tokens.tolist() == [4, 4, 6, 6]
    xs = x[0]
    for e, tok in ((0, slice(0, 4)), (1, slice(0, 4)), (2, slice(4, 10)), (3, slice(4, 10))):
        torch.testing.assert_close(stats.gate_up_sq[e], xs[tok].pow(2).sum(0))
        gate, up = (xs[tok] @ block.experts.gate_up_proj[e].T).chunk(2, dim=-1)
        h = nn.functional.silu(gate) * up  # w2's input, from expert e's own weights
        torch.testing.assert_close(stats.down_sq[e], h.pow(2).sum(0))


def test_an_expert_without_calibration_tokens_is_pruned_by_magnitude():
    block = _routed_block()
    x = torch.randn(1, 8, 32)
    x[0, :, 0] = 1.0  # every token → experts 0, 1; experts 2, 3 get none
    stats = ExpertInputStats.for_block(block)
    with stats.hooked(block):
        block(x)
    assert stats.tokens.tolist() == [8, 8, 0, 0]
    gu_before = block.experts.gate_up_proj.detach().clone()
    counts = prune_block_experts(block, stats, 0.5, "wanda")
    gu = block.experts.gate_up_proj.detach()
    for e in (2, 3):
        assert ((gu[e] == 0).sum(1) == 16).all()  # half of every row of w1/w3
        assert torch.equal(gu[e] != 0, row_mask(magnitude_scores(gu_before[e]), 0.5))
    # routed experts follow Wanda, not magnitude
    assert torch.equal(gu[0] != 0, row_mask(wanda_scores(gu_before[0], stats.gate_up_sq[0]), 0.5))
    assert counts["experts.gate_up_proj"] == {"zeros": gu.numel() // 2, "total": gu.numel()}


def test_pruning_methods_are_registered():
    assert PRUNING_METHODS.list() == ["magnitude", "owl", "wanda"]
    assert PRUNING_METHODS.get("owl").layerwise and not PRUNING_METHODS.get("magnitude").needs_calibration


# ------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("method", ["wanda", "owl", "magnitude"])
def test_streaming_reaches_the_requested_total_sparsity_and_loads(family, method, mixtral_ckpt, qwen_ckpt,
                                                                   calib_ids, tmp_path):
    src = mixtral_ckpt if family == "mixtral" else qwen_ckpt
    steps = []
    rep = prune_checkpoint_streaming(src, tmp_path / "out", calib_ids, method=method, sparsity=0.3,
                                     batch_size=4, progress=lambda i, n: steps.append((i, n)))
    measured = measure_sparsity(tmp_path / "out")
    assert abs(measured["sparsity"] - 0.3) < 0.005
    assert rep["sparsity_reached"] == pytest.approx(measured["sparsity"])
    assert [r["zeros"] for r in rep["layers"]] == [r["zeros"] for r in measured["layers"]]
    L = len(rep["layers"])
    assert rep["forward_passes"] == {"wanda": 2 * L - 1, "owl": 3 * L - 1, "magnitude": 0}[method]
    # the progress total the step creates its bar with is the one the pruner counts to
    assert [i for i, _ in steps] == list(range(1, pruning_steps(src, method) + 1))
    assert {n for _, n in steps} == {pruning_steps(src, method)} == {L * (2 if method == "owl" else 1)}
    if method == "owl":
        asked = rep["layer_sparsities_asked"]
        assert sum(asked) / L == pytest.approx(0.3, abs=1e-6)
        assert all(abs(a - 0.3) <= 0.08 + 1e-9 for a in asked)
        assert [r["reached"] for r in rep["layers"]] == pytest.approx(asked, abs=0.005)
    model, _ = load_checkpoint(tmp_path / "out")
    assert measure_sparsity(model)["sparsity"] == pytest.approx(measured["sparsity"])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] > 0 and (tmp_path / "out" / "config.json").is_file()
    # only expert weights were touched
    dense, _ = load_checkpoint(src)
    for (k, a), b in zip(dense.state_dict().items(), model.state_dict().values()):
        if "experts" not in k and "shared_expert." not in k:
            assert torch.equal(a, b), k


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_streaming_at_sparsity_zero_reproduces_the_dense_logits(family, mixtral_ckpt, qwen_ckpt, calib_ids, tmp_path):
    src = mixtral_ckpt if family == "mixtral" else qwen_ckpt
    dense, _ = load_checkpoint(src)
    with torch.no_grad():
        ref = dense(calib_ids).logits
    # the streaming skeleton's own forward (embedding → layer i → layer i+1 … → norm → head)
    torch.testing.assert_close(streaming_logits(src, calib_ids, batch_size=4), ref, rtol=0, atol=1e-6)
    prune_checkpoint_streaming(src, tmp_path / "out", calib_ids, method="wanda", sparsity=0.0, batch_size=4)
    pruned, _ = load_checkpoint(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(pruned(calib_ids).logits, ref)


def _reference_wanda_in_memory(model, ids: torch.Tensor, sparsity: float) -> None:
    """Textbook sequential Wanda on the whole in-memory model: layer i's statistics come from a
    full forward pass with layers < i already pruned; per-row pruning of the lowest |W|·‖X‖."""
    ad = adapter_for(model)

    def prune_rows(W: torch.Tensor, sq: torch.Tensor) -> None:  # W [out, in], sq [in]
        s = W.abs() * sq.sqrt()[None]
        k = int(W.shape[1] * sparsity)
        idx = torch.sort(s, dim=1, stable=True)[1][:, :k]
        W.scatter_(1, idx, 0.0)

    for block in ad.moe_blocks(model):
        seen: list = []
        h1 = block.experts.register_forward_pre_hook(lambda m, a: seen.append(("routed", a[0], a[1])))
        h2 = block.shared_expert.register_forward_pre_hook(lambda m, a: seen.append(("shared", a[0], None))) \
            if hasattr(block, "shared_expert") else None
        with torch.no_grad():
            model(ids)
        h1.remove()
        h2 and h2.remove()
        with torch.no_grad():
            E = block.experts.gate_up_proj.shape[0]
            for e in range(E):
                xs = torch.cat([x[(idx == e).any(-1)] for kind, x, idx in seen if kind == "routed"])
                gu, dn = block.experts.gate_up_proj[e], block.experts.down_proj[e]
                g, u = (xs @ gu.T).chunk(2, -1)
                mid = block.experts.act_fn(g) * u
                prune_rows(gu, xs.pow(2).sum(0))
                prune_rows(dn, mid.pow(2).sum(0))
            if hasattr(block, "shared_expert"):
                se = block.shared_expert
                xs = torch.cat([x.reshape(-1, x.shape[-1]) for kind, x, _ in seen if kind == "shared"])
                mid = se.act_fn(se.gate_proj(xs)) * se.up_proj(xs)
                prune_rows(se.gate_proj.weight, xs.pow(2).sum(0))
                prune_rows(se.up_proj.weight, xs.pow(2).sum(0))
                prune_rows(se.down_proj.weight, mid.pow(2).sum(0))


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe"])
def test_streaming_wanda_equals_in_memory_reference_wanda(family, mixtral_ckpt, qwen_ckpt, calib_ids, tmp_path):
    src = mixtral_ckpt if family == "mixtral" else qwen_ckpt
    ref, _ = load_checkpoint(src)
    _reference_wanda_in_memory(ref, calib_ids, 0.5)
    prune_checkpoint_streaming(src, tmp_path / "out", calib_ids, method="wanda", sparsity=0.5, batch_size=4)
    out, _ = load_checkpoint(tmp_path / "out")
    ad = adapter_for(ref)
    for i, (a, b) in enumerate(zip(ad.moe_blocks(ref), ad.moe_blocks(out))):
        for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
            if "experts" in name or "shared_expert." in name:
                assert torch.equal(ta == 0, tb == 0), f"layer {i} {name}: masks differ"


def test_streaming_prunes_an_unrouted_expert_by_magnitude(calib_ids, tmp_path):
    model = make_model(mixtral_config(2))
    with torch.no_grad():  # layer 0: x₀ > 0 for every token and the router prefers experts 0, 1
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.model.layers[0].mlp.gate.weight.zero_()
        model.model.layers[0].mlp.gate.weight[:, 0] = torch.tensor([3.0, 2.0, -1.0, -2.0])
    routed: set[int] = set()
    h = model.model.layers[0].mlp.experts.register_forward_pre_hook(lambda m, a: routed.update(a[1].unique().tolist()))
    with torch.no_grad():
        model(calib_ids)
    h.remove()
    assert routed == {0, 1}
    model.save_pretrained(tmp_path / "src")
    prune_checkpoint_streaming(tmp_path / "src", tmp_path / "out", calib_ids, method="wanda", sparsity=0.5)
    out, _ = load_checkpoint(tmp_path / "out")
    before = model.model.layers[0].mlp.experts
    after = out.model.layers[0].mlp.experts
    for e in (2, 3):
        for W0, W1 in ((before.gate_up_proj[e], after.gate_up_proj[e]), (before.down_proj[e], after.down_proj[e])):
            assert torch.equal(W1 != 0, row_mask(magnitude_scores(W0), 0.5))


def test_streaming_handles_variable_width_layers(calib_ids, tmp_path):
    model = make_model(mixtral_config(2))
    ad = adapter_for(model)
    ad.keep_experts(ad.moe_blocks(model)[0], [0, 1, 2])  # STUN stage 1 left 3 experts in layer 0
    save_checkpoint(model, tmp_path / "src")
    assert json.loads((tmp_path / "src" / "config.json").read_text())[EXPERTS_PER_LAYER] == [3, 4]
    with torch.no_grad():
        ref = model(calib_ids).logits
    torch.testing.assert_close(streaming_logits(tmp_path / "src", calib_ids), ref, rtol=0, atol=1e-6)
    rep = prune_checkpoint_streaming(tmp_path / "src", tmp_path / "out", calib_ids, method="owl", sparsity=0.5)
    assert [r["experts"] for r in rep["layers"]] == [3, 4]
    assert abs(rep["sparsity_reached"] - 0.5) < 0.005  # OWL weighted by layer size
    out, _ = load_checkpoint(tmp_path / "out")
    assert [b.experts.num_experts for b in ad.moe_blocks(out)] == [3, 4]


def test_streaming_output_appears_atomically(mixtral_ckpt, calib_ids, tmp_path, monkeypatch):
    import tasks.stun.streaming as st

    real, calls = st._write_safetensors, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(st, "_write_safetensors", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prune_checkpoint_streaming(mixtral_ckpt, tmp_path / "out", calib_ids, method="wanda", sparsity=0.5)
    assert list(tmp_path.iterdir()) == []  # neither dst nor the temp folder is left


def test_nm_streaming_gives_two_of_four(mixtral_ckpt, calib_ids, tmp_path):
    prune_checkpoint_streaming(mixtral_ckpt, tmp_path / "out", calib_ids, method="wanda", sparsity=0.5, nm=(2, 4))
    out, _ = load_checkpoint(tmp_path / "out")
    gu = out.model.layers[1].mlp.experts.gate_up_proj  # [E, 2I, H]
    assert ((gu.reshape(-1, 4) == 0).sum(-1) == 2).all()
    with pytest.raises(ValueError, match="nm"):
        prune_checkpoint_streaming(mixtral_ckpt, tmp_path / "o2", calib_ids, method="owl", sparsity=0.5, nm=(2, 4))


def test_bf16_checkpoint_is_pruned_in_its_own_dtype_through_the_mirror_path(calib_ids, tmp_path):
    """Storage dtype ≠ compute dtype (bf16 on disk, fp32 compute on CPU — the GPU case reversed):
    masks are computed on the compute copy's statistics and written into the bf16 tensors."""
    from safetensors import safe_open

    model = make_model(mixtral_config(2)).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    rep = prune_checkpoint_streaming(tmp_path / "src", tmp_path / "out", calib_ids, method="wanda", sparsity=0.5)
    assert abs(rep["sparsity_reached"] - 0.5) < 0.005
    assert measure_sparsity(tmp_path / "out")["sparsity"] == pytest.approx(rep["sparsity_reached"])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    for key, fname in index["weight_map"].items():
        with safe_open(tmp_path / "out" / fname, "pt") as f:
            assert f.get_slice(key).get_dtype() == "BF16", key
    with safe_open(tmp_path / "out" / index["weight_map"]["model.layers.1.self_attn.q_proj.weight"], "pt") as f:
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
    assert torch.equal(q, model.model.layers[1].self_attn.q_proj.weight)
