"""The NPU latency model: SCALE-Sim mapping, the per-layer cache, the fitted estimator."""
from __future__ import annotations

import pytest

from tasks.s3nas.config import NPUConfig, SupernetConfig
from tasks.s3nas.estimator import LatencyEstimator, mape, nnls
from tasks.s3nas.npu import NPULayer, SimCache, conv_layer, depthwise, network_cycles, run_scalesim
from tasks.s3nas.space import network_layers, random_arch, scaled_supernet, search_space_layers, smallest_arch

NPU = NPUConfig(array_rows=8, array_cols=8)


@pytest.fixture
def cache(tmp_path):
    return SimCache(tmp_path / "cache", NPU)


def test_a_simulated_layer_is_cached_and_never_simulated_again(cache, monkeypatch, tmp_path):
    calls = []
    real = SimCache.simulate_fn

    def counting(layer, npu):
        calls.append(layer.key())
        return real(layer, npu)

    monkeypatch.setattr(SimCache, "simulate_fn", staticmethod(counting))
    layer = conv_layer(8, 8, 16, 3, 1)
    first = cache.simulate(layer)
    mtime = cache.path(layer).stat().st_mtime_ns
    again = cache.simulate(layer)
    # a second cache object on the same folder (another actor, another run) does not simulate either
    other = SimCache(tmp_path / "cache", NPU)
    third = other.simulate(layer)
    assert calls == [layer.key()]
    assert first["cycles"] == again["cycles"] == third["cycles"] > 0
    assert cache.path(layer).stat().st_mtime_ns == mtime
    assert cache.missing([layer, layer, conv_layer(8, 8, 8, 1, 1)]) == [conv_layer(8, 8, 8, 1, 1)]
    # another NPU is another key: a different array gives a different cycle count
    big = SimCache(tmp_path / "cache", NPUConfig(array_rows=32, array_cols=32))
    assert big.simulate(layer)["cycles"] != first["cycles"]
    assert len(calls) == 2


def test_depthwise_counts_every_channel_as_scalesim_own_dp_expansion_does(tmp_path):
    """SCALE-Sim runs a 'DP' layer as one single-channel conv per channel; the model simulates
    one channel and counts it C times — the sum must be the same cycles."""
    import contextlib
    import io

    from scalesim.scale_sim import scalesim

    from tasks.s3nas.npu import parse_compute_report, write_scalesim_config

    layer, channels = depthwise(8, 3, 3, 1)
    write_scalesim_config(tmp_path / "c.cfg", NPU, run_name="dp")
    (tmp_path / "t.csv").write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
                                    f"DPconv, {layer.h}, {layer.w}, 3, 3, {channels}, 1, 1,\n")
    (tmp_path / "l.csv").write_text("h,\nDPconv, 1,1,1,1,1,1, 0,1,2, 0,1,2, 0,1,2,3, 0,1,2,3,\n")
    with contextlib.redirect_stdout(io.StringIO()):
        s = scalesim(save_disk_space=True, verbose=False, config=str(tmp_path / "c.cfg"),
                     topology=str(tmp_path / "t.csv"), layout=str(tmp_path / "l.csv"))
        s.run_scale(top_path=str(tmp_path / "out"))
    rows = parse_compute_report(tmp_path / "out" / "dp" / "COMPUTE_REPORT.csv")
    assert len(rows) == channels
    one = run_scalesim(layer, NPU)
    assert sum(r["cycles"] for r in rows) == channels * one["cycles"]


def test_memory_stalls_are_counted_when_dram_is_slow(tmp_path):
    layer = conv_layer(8, 32, 32, 3, 1)
    fast = SimCache(tmp_path, NPUConfig(array_rows=8, array_cols=8, dram_bw_words=64)).simulate(layer)
    slow = SimCache(tmp_path, NPUConfig(array_rows=8, array_cols=8, dram_bw_words=2)).simulate(layer)
    assert slow["cycles"] > fast["cycles"]
    assert slow["stall_cycles"] > 0


def test_nnls_recovers_nonnegative_weights():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (40, 4))
    x = np.array([2.0, 0.0, 0.5, 3.0])
    got = nnls(a, a @ x)
    np.testing.assert_allclose(got, x, atol=1e-8)
    got = nnls(a, a @ np.array([1.0, -2.0, 0.0, 1.0]))  # infeasible sign: clamps, stays ≥ 0
    assert (got >= 0).all()


def test_the_estimator_predicts_held_out_whole_networks_within_ten_percent(tmp_path):
    """Fit on a small space's table, judge on random networks at other widths/resolutions."""
    import random

    sn = SupernetConfig(resolution=16, stem_channels=8, stages=[(1, 8, 1), (2, 16, 2)], head_channels=32)
    cache = SimCache(tmp_path, NPU)
    fit_rows = []
    for w, r in [(1.0, 1.0), (1.5, 1.5)]:
        for layer in search_space_layers(scaled_supernet(sn, w, r), se_ratio=0.25):
            fit_rows.append((layer, cache.simulate(layer)["cycles"]))
    est = LatencyEstimator.fit(fit_rows, NPU)
    rng = random.Random(0)
    pred, true = [], []
    for _ in range(5):
        arch = random_arch(scaled_supernet(sn, 1.25, 1.25), rng)
        net = network_layers(arch)
        true.append(network_cycles(net, cache))
        pred.append(est.network_cycles(net))
    assert mape(pred, true) < 10.0
    # and it is a real model: ranking a small and a large network right
    small = network_layers(smallest_arch(sn))
    assert est.network_cycles(small) < min(pred)


def test_layer_mapping_shapes():
    # a 'same' 3x3 stride-2 conv on 16x16 sees a 17x17 padded input and writes 8x8
    l = conv_layer(16, 4, 8, 3, 2)
    assert (l.h, l.out_hw) == (17, (8, 8))
    assert l.macs == 8 * 8 * 9 * 4 * 8
    net = network_layers(smallest_arch(SupernetConfig()))
    assert all(n >= 1 for _, n in net)
    assert NPULayer.from_dict(l.to_dict()) == l


def test_a_killed_simulator_is_replaced_and_every_layer_lands_in_the_cache_once(ray_two_cpus, tmp_path):
    """The NPU pool (workers.pool.run_pool): SIGKILL a simulator while it runs a layer — the
    layer is simulated again on a fresh actor, nothing is lost, no layer is stored twice."""
    import json
    import os
    import signal
    import threading

    from workers.npu import simulate_layers

    layers = [conv_layer(h, c, 2 * c, 3, 1) for h in (10, 12, 14) for c in (8, 12, 16, 20)]
    killed: list[int] = []
    pids: list[int] = []

    def kill_first_worker(name, res):
        pids.append(res["pid"])
        if not killed:  # after its first layer, kill that worker while it works on its next one
            killed.append(res["pid"])
            threading.Timer(0.05, os.kill, (res["pid"], signal.SIGKILL)).start()

    runs = simulate_layers(layers, NPU, str(tmp_path), workers=2, on_done=kill_first_worker)
    assert killed and len(pids) == len(layers)
    stored = sorted((tmp_path / NPU.key()).glob("*.json"))
    assert [p.name for p in stored if p.name != "npu.json"] == sorted(f"{l.key()}.json" for l in layers)
    assert all(json.loads(p.read_text())["cycles"] > 0 for p in stored if p.name != "npu.json")
    assert len(layers) - 1 <= runs <= len(layers)  # a layer the killed worker had just stored is not redone
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    # and a second call finds everything cached: no pool, no simulation
    assert simulate_layers(layers, NPU, str(tmp_path), workers=2) == 0
