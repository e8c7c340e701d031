"""The `stun` flow end to end on the Ray task runner, at toy size (a tiny zoo model)."""
from __future__ import annotations

import json

import pytest

TOY = [
    "zoo.layers=2", "zoo.experts=4", "zoo.hidden=32", "zoo.intermediate=64", "zoo.heads=2", "zoo.kv_heads=2",
    "zoo.steps=30", "zoo.seq_len=64", "zoo.batch_size=8", "zoo.vocab_size=384",
    "zoo.n_train_problems=400", "zoo.n_heldout_problems=40",
    "sparsities=[0.5]", "export_sparsity=0.5", "kurtosis_sparsity=0.5", "calib_samples=16", "calib_seq_len=32",
    "eval_ppl_tokens=512", "eval_problems=8", "val_problems=8", "val_ppl_tokens=256", "resources.workers=2",
    "seeds=[0, 1]", "unstructured=[owl]", "baselines=[stun_experts]", "ablations=[global]",
]


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("stun", TOY)


def test_the_flow_writes_every_variant_with_measured_sparsity_and_seed_spread(toy_run):
    root, cfg, result, _ = toy_run
    metrics = json.loads((root / "stun" / "report" / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1]
    assert metrics["dense"]["ppl"] > 1
    s50 = metrics["sweep"]["s50"]
    # x = 0 (OWL alone, the twin), x = 1/4 (STUN: 1 of 4 experts, then OWL at u = 1/3), experts alone
    assert set(s50) == {"owl@x0", "stun+owl@x0.25", "stun_experts@x0.5"}
    for key in s50:
        assert s50[key]["sparsity"] == pytest.approx(0.5, abs=0.02), key
        assert s50[key]["em_lo"] <= s50[key]["exact_match"] <= s50[key]["em_hi"]
    stun = s50["stun+owl@x0.25"]
    assert stun["dem_lo"] <= stun["dem"] <= stun["dem_hi"] and 0 <= stun["ppl_wins"] <= 2
    assert metrics["expert_only"]["stun_experts"]["sparsity"] == pytest.approx(0.25, abs=1e-6)
    assert sum(metrics["ablations"]["stun_experts[global]"]["experts_per_layer"]) == 2 * 3  # global τ: total exact
    for f in ("sweep.csv", "pruning_curves.png", "table.md", "curves/owl.csv", "curves/stun+owl_x0.250.csv",
              "curves/stun_experts.csv"):
        assert (root / "stun" / "report" / f).is_file(), f
    table = (root / "stun" / "report" / "table.md").read_text()
    assert "±" in table and "Kurtosis" in table and "Δppl vs twin" in table and "beats both ends" in table
    assert "stun+owl" in result["table"]
    for seed in (0, 1):
        assert (root / "stun" / "zoo" / f"seed{seed}" / "zoo_metrics.json").is_file()
        assert (root / "stun" / "eval" / f"seed{seed}" / "owl-then-stun-k3-s50" / "eval.json").is_file()


def test_the_export_is_chosen_on_validation_and_ships_a_model_card(toy_run):
    root, cfg, _, _ = toy_run
    card = (root / "stun" / "pruned" / "README.md").read_text()
    row = json.loads((root / "stun" / "eval" / "seed0" / "stun-owl-k3-s50" / "eval.json").read_text())
    assert row["validate"] and row["val_ppl"] > 1 and row["val_ppl"] != row["ppl"]
    assert "validation split" in card and f"{row['val_ppl']:.3f}" in card and f"{row['ppl']:.3f}" in card


def test_profiling_sharded_over_two_actors_counts_its_forward_passes(toy_run):
    root, cfg, _, _ = toy_run
    prof = json.loads((root / "stun" / "profile" / "seed0" / "profile.json").read_text())
    assert prof["workers"] == 2 and prof["shards"] == 2 and prof["shards_reused"] == 0
    assert prof["forward_passes"] == 2  # 16 sequences, batches of 8, one batch per shard
    assert prof["tokens"] == cfg.calib_samples * cfg.calib_seq_len
    assert prof["workers_replaced"] == 0 and prof["failures"] == []


def test_no_temp_or_scratch_folder_is_left_behind(toy_run):
    root, *_ = toy_run
    left = [p for p in (root / "stun").rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert left == []
    assert not list((root / "stun").glob("zoo_train*")) and not list((root / "stun").glob("profile_shards*"))
    assert (root / "stun" / "report" / ".step.json").is_file() and (root / "stun" / "pruned" / ".step.json").is_file()
    assert not (root / "stun" / "pruned" / ".source.json").exists()


def test_the_exported_checkpoint_loads_in_stock_transformers_and_reproduces_its_perplexity(toy_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.stun.corpus import load_corpus
    from tasks.stun.evaluate import evaluate_model

    root, cfg, _, _ = toy_run
    model = AutoModelForCausalLM.from_pretrained(root / "stun" / "pruned").eval()
    tok = AutoTokenizer.from_pretrained(root / "stun" / "pruned")
    assert model.config.num_local_experts == 3  # uniform budget: 3 of 4 experts kept in every layer
    res = evaluate_model(model, tok, load_corpus(root / "stun" / "corpus"), seq_len=cfg.zoo.seq_len,
                         max_ppl_tokens=cfg.eval_ppl_tokens, n_problems=cfg.eval_problems)
    reported = json.loads((root / "stun" / "eval" / "seed0" / "stun-owl-k3-s50" / "eval.json").read_text())
    assert res["ppl"] == pytest.approx(reported["ppl"], rel=1e-4)
    assert torch.isfinite(torch.tensor(res["ppl"]))


def test_a_rerun_reuses_every_finished_step(toy_run):
    import time

    root, _, _, run = toy_run
    markers = {p: p.stat().st_mtime_ns for p in (root / "stun").rglob(".step.json")}
    assert len(markers) >= 10
    t0 = time.perf_counter()
    run()
    assert {p: p.stat().st_mtime_ns for p in (root / "stun").rglob(".step.json")} == markers
    assert time.perf_counter() - t0 < 120
