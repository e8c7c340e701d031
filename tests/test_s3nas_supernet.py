"""Single-Path superkernels, straight-through indicators, equal selection and the
differentiable expected latency of the S3NAS supernet."""
from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from tasks.s3nas.config import SupernetConfig
from tasks.s3nas.space import BlockSlot, Branch, block_choices
from tasks.s3nas.supernet import (SearchableMixConvBlock, SuperBranch, Supernet, equal_selection_drop_rate,
                                  latency_loss, straight_through)

BIG = 1e4


def _branch(can_zero=True):
    torch.manual_seed(0)
    br = SuperBranch(c_in=2, k_max=5, e_max=4, step=2, stride=1, can_zero=can_zero).eval()
    with torch.no_grad():
        br.bn.running_mean.uniform_(-0.2, 0.2)
        br.bn.running_var.uniform_(0.5, 2.0)
    return br


def _reference(br, x, k, groups_on):
    """What the chosen sub-network computes: the centre k×k slice on the first groups only."""
    c = br.group * groups_on
    lo = (br.k_max - k) // 2
    w = br.weight[:c, :, lo:lo + k, lo:lo + k]
    y = F.conv2d(x[:, :c], w, padding=k // 2, groups=c)
    y = F.batch_norm(y, br.bn.running_mean[:c], br.bn.running_var[:c], br.bn.weight[:c], br.bn.bias[:c], False, 0.0, br.bn.eps)
    return torch.cat([F.relu(y), torch.zeros_like(x[:, c:])], 1)


@pytest.mark.parametrize("ring_on, groups_on", [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_nested_superkernel_is_exactly_the_chosen_subkernel(ring_on, groups_on):
    br = _branch()
    x = torch.randn(3, br.channels, 9, 9)
    with torch.no_grad():
        br.ring_t.fill_(-BIG if ring_on else BIG)
        br.group_t.copy_(torch.tensor([-BIG, -BIG if groups_on == 2 else BIG]))
        y, on = br(x, F.relu)
    torch.testing.assert_close(y, _reference(br, x, 5 if ring_on else 3, groups_on), rtol=1e-5, atol=1e-6)
    assert on.item() == 1.0
    # and a 3x3 choice really is different from the 5x5 one
    if not ring_on:
        assert not torch.allclose(y, _reference(br, x, 5, groups_on), atol=1e-3)


def test_straight_through_indicator_is_a_step_forward_and_a_sigmoid_gradient_backward():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.3, 4.0], requires_grad=True)
    u = straight_through(x)
    assert u.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    g = torch.randn(5)
    u.backward(g)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, g * s * (1 - s))


def test_thresholds_receive_the_sigmoid_gradient_through_the_superkernel():
    br = _branch().train()
    x = torch.randn(2, br.channels, 7, 7)
    y, _ = br(x, F.relu)
    y.sum().backward()
    assert br.ring_t.grad is not None and br.ring_t.grad.abs().sum() > 0
    assert br.group_t.grad is not None and br.group_t.grad.abs().sum() > 0


def test_equal_selection_dropout_picks_every_nested_level_equally():
    torch.manual_seed(0)
    for n in (1, 2, 3):
        counts = [0] * (n + 1)
        ones = [torch.ones(()) for _ in range(n)]
        trials = 6000
        for _ in range(trials):
            u = SuperBranch._equal_selection(ones)
            level = 0
            for ui in u:
                if ui.item() == 0:
                    break
                level += 1
            counts[level] += 1
        for c in counts:
            assert c / trials == pytest.approx(1 / (n + 1), abs=0.025), (n, counts)
    assert equal_selection_drop_rate(3, 0) == pytest.approx(1 / 4)


def _block(residual=True, seed=0):
    sn = SupernetConfig()
    slot = BlockSlot(16, 16, 1, 8) if residual else BlockSlot(16, 24, 2, 8)
    rng = random.Random(seed)
    table = {c: rng.uniform(1, 100) * (0 if all(b.expansion == 0 for b in c) else 1) for c in block_choices(sn, slot)}
    return SearchableMixConvBlock(sn, slot, lambda s, c: table[c]).eval(), table, sn


def _decode(bits_rings, bits_groups, br):
    """Nested semantics, independently: leading ones of each chain."""
    r = 0
    for b in bits_rings:
        if not b:
            break
        r += 1
    g = 0 if br.can_zero else 1
    for b in bits_groups:
        if not b:
            break
        g += 1
    if g == 0:
        return Branch(br.k_max, 0)
    return Branch(br.kernels[r], g * 2)  # expansion_step = 2: one channel group per step


@pytest.mark.parametrize("residual", [True, False])
def test_expected_latency_equals_the_probability_weighted_enumeration(residual):
    block, table, sn = _block(residual)
    torch.manual_seed(1)
    soft = [([torch.rand(()) for _ in br.ring_t], [torch.rand(()) for _ in br.group_t]) for br in block.branches]
    got = block.expected_latency_us(soft)
    # brute force over every on/off pattern of every indicator, each weighted by ∏ u^b (1-u)^(1-b)
    flat = [(bi, kind, u) for bi, (ru, gu) in enumerate(soft) for kind, us in (("r", ru), ("g", gu)) for u in us]
    want = 0.0
    for bits in itertools.product([0, 1], repeat=len(flat)):
        p = 1.0
        for b, (_, _, u) in zip(bits, flat):
            p *= float(u) if b else 1 - float(u)
        choice = []
        for bi, br in enumerate(block.branches):
            rb = [b for b, (i, k, _) in zip(bits, flat) if i == bi and k == "r"]
            gb = [b for b, (i, k, _) in zip(bits, flat) if i == bi and k == "g"]
            choice.append(_decode(rb, gb, br))
        want += p * table[tuple(choice)]
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert block.joint_probs(soft).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_expected_latency_is_differentiable_in_the_thresholds():
    block, _, _ = _block(True)
    lat = block.expected_latency_us()
    lat.backward()
    grads = [br.ring_t.grad for br in block.branches if br.ring_t.numel()] + [br.group_t.grad for br in block.branches]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # hard indicators: the expected latency is the table entry of the current choice
    _, table, _ = _block(True)
    assert lat.item() == pytest.approx(table[block.chosen()], rel=1e-6)


def test_all_zero_branches_make_a_true_skip():
    block, table, _ = _block(True)
    with torch.no_grad():
        for br in block.branches:
            br.group_t.fill_(BIG)
    x = torch.randn(2, 16, 8, 8)
    y = block(x, F.relu)
    assert torch.equal(y, x)
    assert all(b.expansion == 0 for b in block.chosen())
    assert block.expected_latency_us().item() == 0.0


def test_the_primary_branch_of_a_non_residual_block_cannot_be_removed():
    block, _, _ = _block(False)
    assert not block.branches[-1].can_zero and block.branches[0].can_zero
    assert all(c[-1].expansion > 0 for c in block.choices)


def test_latency_loss_is_zero_under_target_and_grows_over_it():
    lat = torch.tensor([100.0, 250.0, 400.0], requires_grad=True)
    loss = latency_loss(lat, 250.0, 15.0, 100.0)
    assert loss[0].item() == 0 and loss[1].item() == 0
    assert loss[2].item() == pytest.approx(15 * torch.log1p(torch.tensor(100 * 0.15)).item())


def test_supernet_readout_matches_its_expected_latency():
    sn = SupernetConfig(stages=[(1, 16, 1), (2, 24, 2)], head_channels=32)
    net = Supernet(sn, lambda s, c: float(sum(b.kernel * b.expansion for b in c)), fixed_latency_us=5.0)
    arch = net.readout()
    assert len(arch.blocks) == 3
    from tasks.s3nas.space import supernet_slots
    want = 5.0 + sum(sum(b.kernel * b.expansion for b in blk.branches) for blk in arch.blocks)
    assert net.expected_latency_us().item() == pytest.approx(want)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert len(supernet_slots(sn)) == 3
