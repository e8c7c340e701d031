"""The `s3nas` flow end to end on the Ray task runner, at toy size: a two-stage 16×16
supernet on 256 real Fashion-MNIST images, a handful of held-out networks, one epoch each,
every arm of the NPU-awareness experiment with two training seeds."""
from __future__ import annotations

import json

import pytest

TOY = [
    "supernet.resolution=16", "supernet.stem_channels=16", "supernet.stages=[[1, 16, 1], [2, 24, 2]]",
    "supernet.head_channels=32", "target_latency_us=100", "search_target_ratio=0.5", "threshold_lr=0.05",
    "n_train=256", "n_val=64", "n_test=128", "batch_size=32", "search_epochs=2", "warmup_epochs=1",
    "final_epochs=1", "rmse_finetune_epochs=1", "heldout_networks=4", "seeds=2",
    # a toy net's channels move in steps of 4 at widths of 8-24 (17-50 %): a 2 % band is out of reach
    "latency_tolerance=0.15", "max_confirmations=6",
]

pytestmark = pytest.mark.slow  # ~3 min on 2 cores (Prefect + Ray + SCALE-Sim + 5 searches + 18 trainings)


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("s3nas", TOY)


def test_every_arm_is_at_equal_simulated_latency_with_every_seed_and_paired_tests(toy_run):
    from tasks.s3nas.arms import EQUAL_LATENCY, FINALS

    root, cfg, result, _ = toy_run
    metrics = json.loads((root / "s3nas" / "report" / "metrics.json").read_text())
    lo = (1 - cfg.latency_tolerance) * cfg.target_latency_us
    for method in EQUAL_LATENCY:
        lat = metrics[method]["sim_latency_us"]
        assert lo <= lat <= cfg.target_latency_us, (method, lat)
        assert len(metrics[method]["test_acc_per_seed"]) == cfg.seeds
        assert all(0.0 <= a <= 1.0 for a in metrics[method]["test_acc_per_seed"])
        assert metrics[method]["n_test"] == cfg.n_test
    for method in FINALS:
        if method != "s3nas":
            t = metrics["tests"][method]
            assert t["seeds"] == cfg.seeds and 0.0 <= t["pooled"]["p_value"] <= 1.0
    # the as-found proxy net is measured on the simulator, wherever the proxy put it
    found = metrics["scalings"]["mac_proxy_as_found"]
    assert found["scale_cost"] == "mac" and found["proxy_us"] <= cfg.target_latency_us
    assert metrics["mac_proxy_as_found"]["sim_latency_us"] == pytest.approx(found["simulated_us"])
    assert metrics["s3nas-rmSE"]["sim_latency_us"] < metrics["s3nas"]["sim_latency_us"]
    assert metrics["estimator"]["networks"] == cfg.heldout_networks
    assert metrics["estimator"]["mape_pct"] < 15
    assert metrics["searches"]["s3nas"]["npu_latency_us"] <= cfg.target_latency_us
    assert metrics["searches"]["at_target"]["target_us"] == pytest.approx(cfg.target_latency_us)
    assert metrics["second_npu"]["blocks"] == 3
    for f in ("table.md", "results.csv", "pareto.png", "summary.json"):
        assert (root / "s3nas" / "report" / f).is_file(), f
    assert "hand_designed" in result["table"] and "Second NPU" in result["table"]


def test_the_simulated_latency_of_the_report_is_the_simulator_s(toy_run):
    """Re-simulate the delivered net from the per-layer cache: same number as reported."""
    from tasks.s3nas.npu import SimCache, network_cycles
    from tasks.s3nas.space import Arch, network_layers

    root, cfg, _, _ = toy_run
    ev = json.loads((root / "s3nas" / "final" / "s3nas" / f"seed{cfg.seed}" / "eval.json").read_text())
    arch = Arch.from_dict(ev["arch"])
    cache = SimCache(root / "s3nas" / "npu_cache", cfg.npu)
    assert network_cycles(network_layers(arch), cache) / cfg.npu.clock_mhz == pytest.approx(ev["sim_latency_us"])
    assert cache.simulations == 0  # every layer of it was simulated during the run already


def test_a_rerun_reuses_every_step_and_simulates_nothing(toy_run):
    root, _, _, run = toy_run
    markers = {p: p.stat().st_mtime_ns for p in (root / "s3nas").rglob(".step.json")}
    cached = {p: p.stat().st_mtime_ns for p in (root / "s3nas" / "npu_cache").rglob("*.json")}
    assert len(markers) >= 10
    run()
    assert {p: p.stat().st_mtime_ns for p in (root / "s3nas").rglob(".step.json")} == markers
    assert {p: p.stat().st_mtime_ns for p in (root / "s3nas" / "npu_cache").rglob("*.json")} == cached
