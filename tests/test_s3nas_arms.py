"""The NPU-awareness experiment's parts (issue 14): the MAC proxy's counts, re-scaling the
proxy's net on the simulator, the two NPUs' block tables, the paired statistics."""
from __future__ import annotations

import random

import numpy as np
import pytest

from tasks.s3nas.config import NPUConfig, SupernetConfig
from tasks.s3nas.proxy import MacProxy, mac_breakdown
from tasks.s3nas.scaling import compound_scale, finish
from tasks.s3nas.space import Arch, Block, Branch, largest_arch, network_layers, network_macs, random_arch


def _known_net() -> Arch:
    """8 px input, stem 4, one MixConv block 4→8 (k3 e2 + k5 e1, with SE), head 16, 10 classes."""
    return Arch(resolution=8, stem_channels=4, blocks=[Block(4, 8, 1, (Branch(3, 2), Branch(5, 1)), se=True)],
                head_channels=16, num_classes=10, se_ratio=0.25)


def test_the_mac_proxy_counts_depthwise_se_and_fc_macs_of_a_known_net():
    # Counted by hand. Stem: 3×3 s2 conv 1→4 on 8×8 → 4×4 out: 16·9·1·4. Block at 4×4 (hidden 4·3 = 12):
    # expand 1×1 4→12: 16·4·12; depthwise k3 over 8 channels: 16·9·8, k5 over 4: 16·25·4;
    # SE (1 reduced channel): pool 16·12, FC 12·1, FC 1·12, scaling 16·12; project 1×1 12→8: 16·12·8.
    # Head: 1×1 8→16: 16·8·16, pool 16·16, classifier 16·10.
    expect = {"stem": 576, "expand": 768, "depthwise": 1152 + 1600, "se": 192 + 12 + 12 + 192, "project": 1536,
              "head": 2048 + 256 + 160}
    got = mac_breakdown(_known_net())
    assert got == expect
    assert sum(got.values()) == network_macs(_known_net()) == 8504
    proxy = MacProxy(0.5)
    assert proxy.arch_us(_known_net()) == pytest.approx(0.5 * 8504)


def test_the_proxy_is_calibrated_on_the_largest_net_and_linear_in_macs():
    sn = SupernetConfig()
    fake_sim = lambda a: 1e-4 * network_macs(a) + 7.0 * sum(n for layer, n in network_layers(a) if layer.channels == 1)
    proxy = MacProxy.calibrated(sn, fake_sim)
    big = largest_arch(sn)
    assert proxy.arch_us(big) == pytest.approx(fake_sim(big))
    small = random_arch(sn, random.Random(3))
    assert proxy.arch_us(small) / proxy.arch_us(big) == pytest.approx(network_macs(small) / network_macs(big))


GRID = dict(depths=[1.0, 1.5, 2.0], widths=[0.5, 0.75, 1.0, 1.25, 1.5, 2.0], resolutions=[0.75, 1.0, 1.25, 1.5])


def _npu_us(a: Arch) -> float:
    """A stand-in NPU that, like the systolic array, pays per depthwise channel and per SE layer
    far more than their MACs say."""
    dw = sum(n for layer, n in network_layers(a) if layer.kind == "conv" and layer.channels == 1 and layer.fh > 1)
    return network_macs(a) / 1e4 + 0.05 * dw + 4.0 * sum(b.se for b in a.blocks)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rescaling_the_proxy_net_on_the_simulator_never_exceeds_the_target(seed):
    arch = random_arch(SupernetConfig(), random.Random(seed), name="proxy")
    proxy = MacProxy.calibrated(SupernetConfig(), _npu_us)
    target = 1.6 * _npu_us(finish(arch, 0.25))
    # As found: scaled by the proxy to T; the NPU sees the depthwise/SE cost it was blind to.
    found, info = compound_scale(arch, target, proxy.arch_us, proxy.archs_us, se_ratio=0.25, max_confirmations=16,
                                 lower=0.98, **GRID)
    assert 0.98 * target <= proxy.arch_us(found) <= target
    # Re-scaled: the same search output, scaled with an estimator confirmed by the "simulator".
    sims = []

    def simulate(batch):
        sims.extend(batch)
        return [_npu_us(a) for a in batch]

    for bias in (0.9, 1.0, 1.1):
        best, rinfo = compound_scale(arch, target, lambda a: bias * _npu_us(a), simulate, se_ratio=0.25,
                                     max_confirmations=16, lower=0.98, **GRID)
        assert _npu_us(best) <= target
        assert rinfo["simulated_us"] == pytest.approx(_npu_us(best))
    # the proxy, exact only at its anchor, misjudges the scaled net on the NPU
    assert abs(_npu_us(found) / proxy.arch_us(found) - 1) > 0.01


def test_two_npus_give_different_latency_tables_for_the_same_block(tmp_path):
    """Real SCALE-Sim: one small slot of the space on a 16×16 and a 64×64 weight-stationary
    array. The tables differ, and not by one factor: the bigger array is 1.5-3× slower depending
    on the choice (its fill/drain costs more than its columns save on these small layers), so
    at least one pair of choices swaps order."""
    from tasks.s3nas.compare import block_table, rank_changes
    from tasks.s3nas.npu import SimCache, network_cycles
    from tasks.s3nas.space import BlockSlot

    sn = SupernetConfig()
    slot = BlockSlot(8, 8, 1, 8)
    tables = {}
    for name, npu in {"ws16": NPUConfig(), "ws64": NPUConfig(array_rows=64, array_cols=64, dataflow="ws")}.items():
        cache = SimCache(tmp_path / "cache", npu)
        tables[name] = block_table(sn, slot, lambda net: network_cycles(net, cache) / npu.clock_mhz)
    a, b = tables["ws16"], tables["ws64"]
    assert a.keys() == b.keys() and len(a) == 10  # the residual slot's 10 joint choices (skip included)
    assert a != b
    ratios = np.array([b[k] / a[k] for k in a if a[k] > 0])
    assert ratios.max() / ratios.min() > 1.5  # no single speed-up factor maps one table onto the other
    assert rank_changes(a, b) >= 1


def test_paired_tests_match_seeds_and_pool_mcnemar_over_seeds():
    from tasks.s3nas.report import paired_tests

    rng = np.random.default_rng(0)
    truth = rng.random((3, 2000))
    ours = [{"seed": s, "correct_mask": (truth[s] < 0.85).astype(int).tolist(), "test_acc": float((truth[s] < 0.85).mean())}
            for s in range(3)]
    same = [{"seed": s, "correct_mask": r["correct_mask"], "test_acc": r["test_acc"]} for s, r in enumerate(ours)]
    worse = [{"seed": s, "correct_mask": (truth[s] < 0.80).astype(int).tolist(), "test_acc": float((truth[s] < 0.80).mean())}
             for s in range(3)]
    t = paired_tests(ours, same)
    assert t["pooled"]["p_value"] == 1.0 and t["mean_diff"] == 0.0
    t = paired_tests(ours, list(reversed(worse)))  # order does not matter: seeds are matched by number
    assert t["seeds"] == 3 and t["seeds_ours_better_p05"] == 3 and t["seeds_ours_worse_p05"] == 0
    assert t["pooled"]["b_only"] == 0 and t["pooled"]["a_only"] > 250 and t["pooled"]["p_value"] < 1e-10
    assert t["mean_diff"] == pytest.approx(np.mean([(truth[s] < 0.85).mean() - (truth[s] < 0.80).mean() for s in range(3)]))
