"""S3NAS's supernet and its modified Single-Path NAS search (METHODS.md §8.1–8.2).

Each searchable MixConv block runs a 1×1 expansion, parallel depthwise branches over
disjoint channel slices, and a 1×1 projection. A branch is one Single-Path *superkernel*: a
single depthwise weight at the branch's largest kernel whose sub-kernels are nested rings
(3×3 core, then the 5×5 ring, …) and whose channels are nested groups (one per expansion
step). Ring r and group g are switched on by indicators u = 1[‖W ⊙ m‖ ≥ t] with trainable
thresholds t, forward as a hard step and backward through the sigmoid (straight-through);
the effective kernel is W₀ + u₁(W₁ + u₂(W₂ + …)). All groups off in every branch of a residual
block makes the block a true skip — depth search.

During the equal-selection warm-up each indicator of a nested chain of n gets dropout
1/(n + 1 − i), so every nested choice is sampled equally often. Afterwards the expected
latency — the probability-weighted latency-table entry of every joint branch choice, with
P(choice) the product of the u's up to it and (1 − u) of the next — is differentiable in the
thresholds and weights.

Deviations, written down: indicator norms are RMS (‖·‖₂/√n) so one threshold scale fits
every ring and group size; thresholds are trained in the latency phase only (the warm-up
trains weights with the dropout sampling); activations are ReLU during search (as in S3NAS).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SupernetConfig
from .space import Arch, Branch, BlockSlot, block_choices, branch_can_zero, branch_choices, kernel_choices, supernet_slots


def straight_through(x: Tensor) -> Tensor:
    """1[x ≥ 0] forward, σ'(x) backward: stop_grad(1[x ≥ 0] − σ(x)) + σ(x)."""
    s = torch.sigmoid(x)
    return ((x >= 0).to(s.dtype) - s).detach() + s


def equal_selection_drop_rate(n: int, i: int) -> float:
    """Dropout of the i-th (0-based) of n nested indicators so that each of the n + 1 nested
    levels is chosen with probability 1/(n + 1)."""
    return 1.0 / (n + 1 - i)


def nested_level_probs(u: list[Tensor]) -> list[Tensor]:
    """P(level = j) for j = 0..n of a nested chain u₁..uₙ: u₁⋯u_j · (1 − u_{j+1})."""
    probs, run = [], None
    one = u[0].new_ones(()) if u else torch.ones(())
    run = one
    for ui in u:
        probs.append(run * (1 - ui))
        run = run * ui
    probs.append(run)
    return probs


class SuperBranch(nn.Module):
    """One depthwise superkernel: nested kernel rings × nested channel groups."""

    def __init__(self, c_in: int, k_max: int, e_max: int, step: int, stride: int, can_zero: bool):
        super().__init__()
        self.kernels = kernel_choices(k_max)
        self.k_max, self.stride, self.can_zero = k_max, stride, can_zero
        self.group = c_in * step
        self.n_groups = e_max // step
        self.channels = self.group * self.n_groups
        self.weight = nn.Parameter(torch.empty(self.channels, 1, k_max, k_max))
        nn.init.kaiming_normal_(self.weight, mode="fan_in")  # a depthwise fan: k·k, not C·k·k
        self.bn = nn.BatchNorm2d(self.channels)
        rings = []
        for i, k in enumerate(self.kernels):
            m = torch.zeros(k_max, k_max)
            lo = (k_max - k) // 2
            m[lo:lo + k, lo:lo + k] = 1
            if i:
                prev = self.kernels[i - 1]
                plo = (k_max - prev) // 2
                m[plo:plo + prev, plo:plo + prev] = 0
            rings.append(m)
        self.register_buffer("rings", torch.stack(rings), persistent=False)  # [R, k, k]
        # t of rings 1.. (the 3×3 core is always used) and of channel groups (group 0 only when removable)
        self.ring_t = nn.Parameter(torch.zeros(len(self.kernels) - 1))
        self.group_t = nn.Parameter(torch.zeros(self.n_groups if can_zero else self.n_groups - 1))
        self.forced: tuple[int, int] | None = None  # (kernel, expansion groups) for a fixed choice

    # -- indicators
    def _rms(self, w: Tensor) -> Tensor:
        return w.pow(2).mean().add(1e-12).sqrt()

    def ring_scores(self) -> Tensor:
        return torch.stack([self._rms(self.weight * self.rings[i]) for i in range(1, len(self.kernels))]) - self.ring_t \
            if len(self.kernels) > 1 else self.weight.new_zeros(0)

    def group_scores(self) -> Tensor:
        core = self.rings[0]
        first = 0 if self.can_zero else 1
        s = [self._rms(self.weight[g * self.group:(g + 1) * self.group] * core) for g in range(first, self.n_groups)]
        return (torch.stack(s) - self.group_t) if s else self.weight.new_zeros(0)

    def indicators(self, dropout: bool = False) -> tuple[list[Tensor], list[Tensor]]:
        """(ring u's, group u's) — only the thresholded ones; hard forward, sigmoid backward."""
        if self.forced is not None:
            k, g = self.forced
            r = self.kernels.index(k)
            ring_u = [self.weight.new_tensor(float(i < r)) for i in range(len(self.kernels) - 1)]
            first = 0 if self.can_zero else 1
            group_u = [self.weight.new_tensor(float(i + first < g)) for i in range(self.n_groups - first)]
            return ring_u, group_u
        ring_u = list(straight_through(self.ring_scores()).unbind()) if len(self.kernels) > 1 else []
        group_u = list(straight_through(self.group_scores()).unbind()) if self.group_t.numel() else []
        if dropout and self.training:
            ring_u = self._equal_selection(ring_u)
            group_u = self._equal_selection(group_u)
        return ring_u, group_u

    @staticmethod
    def _equal_selection(u: list[Tensor]) -> list[Tensor]:
        n = len(u)
        return [ui * float(torch.rand(()) >= equal_selection_drop_rate(n, i)) for i, ui in enumerate(u)]

    def group_mask(self, group_u: list[Tensor]) -> Tensor:
        """Per-channel on/off: a group is on when it and every group before it are on."""
        u = ([] if self.can_zero else [self.weight.new_ones(())]) + group_u
        cum, run = [], self.weight.new_ones(())
        for ui in u:
            run = run * ui
            cum.append(run)
        return torch.stack(cum).repeat_interleave(self.group)  # [channels]

    def effective_weight(self, ring_u: list[Tensor]) -> Tensor:
        """W₀ + u₁(W₁ + u₂(W₂ + …)): the nested Single-Path superkernel."""
        w = self.weight * self.rings[-1]
        for i in range(len(self.kernels) - 1, 0, -1):
            w = self.weight * self.rings[i - 1] + ring_u[i - 1] * w
        return w

    def forward(self, x: Tensor, act: Callable[[Tensor], Tensor], dropout: bool = False) -> tuple[Tensor, Tensor]:
        ring_u, group_u = self.indicators(dropout)
        w = self.effective_weight(ring_u)
        y = F.conv2d(x, w, stride=self.stride, padding=self.k_max // 2, groups=self.channels)
        mask = self.group_mask(group_u)
        y = act(self.bn(y)) * mask.view(1, -1, 1, 1)
        return y, mask[0]

    def choice_probs(self, ring_u: list[Tensor], group_u: list[Tensor]) -> Tensor:
        """P over this branch's distinct (k, e) choices, in ``space.branch_choices`` order
        (e = 0 first when removable, then e ascending × k ascending)."""
        pk = nested_level_probs(ring_u)  # len R
        if self.can_zero:
            pg = nested_level_probs(group_u)  # levels 0..G
            out = [pg[0]]
            levels = pg[1:]
        else:
            levels = nested_level_probs(group_u)  # levels 1..G
            out = []
        for p_e in levels:
            out += [p_e * p_k for p_k in pk]
        return torch.stack(out)


class SearchableMixConvBlock(nn.Module):
    def __init__(self, sn: SupernetConfig, slot: BlockSlot, block_latency_us: Callable[[BlockSlot, tuple[Branch, ...]], float]):
        super().__init__()
        self.slot = slot
        c_in = slot.c_in
        hidden = c_in * sum(sn.branch_expansions)
        self.expand = nn.Sequential(nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.branches = nn.ModuleList(
            SuperBranch(c_in, k, e, sn.expansion_step, slot.stride, branch_can_zero(sn, i, slot.residual))
            for i, (k, e) in enumerate(zip(sn.branch_kernels, sn.branch_expansions)))
        self.project = nn.Sequential(nn.Conv2d(hidden, slot.c_out, 1, bias=False), nn.BatchNorm2d(slot.c_out))
        self.choices = list(block_choices(sn, slot))
        self.per_branch = [branch_choices(sn, i, slot.residual) for i in range(len(sn.branch_kernels))]
        self.register_buffer("latency_us", torch.tensor([block_latency_us(slot, c) for c in self.choices]), persistent=False)

    def forward(self, x: Tensor, act: Callable[[Tensor], Tensor], dropout: bool = False) -> Tensor:
        h = act(self.expand(x))
        outs, ons, start = [], [], 0
        for br in self.branches:
            y, on = br(h[:, start:start + br.channels], act, dropout)
            outs.append(y)
            ons.append(on)
            start += br.channels
        y = self.project(torch.cat(outs, 1))
        if not self.slot.residual:
            return y
        # Block alive when any branch is: all branches off → the output is x exactly (a skip).
        off = torch.ones((), device=x.device, dtype=y.dtype)
        for on in ons:
            off = off * (1 - on)
        return x + (1 - off) * y

    def joint_probs(self, indicators: list[tuple[list[Tensor], list[Tensor]]] | None = None) -> Tensor:
        """P of every joint choice (itertools.product order = ``self.choices``)."""
        if indicators is None:
            indicators = [br.indicators(False) for br in self.branches]
        p = None
        for br, (ru, gu) in zip(self.branches, indicators):
            pb = br.choice_probs(ru, gu)
            p = pb if p is None else (p[:, None] * pb[None, :]).reshape(-1)
        return p

    def expected_latency_us(self, indicators=None) -> Tensor:
        return (self.joint_probs(indicators) * self.latency_us.to(self.expand[0].weight.dtype)).sum()

    def chosen(self) -> tuple[Branch, ...]:
        p = self.joint_probs()
        return self.choices[int(torch.argmax(p.detach()))]


class Supernet(nn.Module):
    def __init__(self, sn: SupernetConfig, block_latency_us: Callable[[BlockSlot, tuple[Branch, ...]], float],
                 fixed_latency_us: float = 0.0, in_channels: int = 1):
        super().__init__()
        self.sn = sn
        self.stem = nn.Sequential(nn.Conv2d(in_channels, sn.stem_channels, 3, 2, 1, bias=False), nn.BatchNorm2d(sn.stem_channels))
        self.blocks = nn.ModuleList(SearchableMixConvBlock(sn, s, block_latency_us) for s in supernet_slots(sn))
        c_last = sn.stages[-1][1]
        self.head = nn.Sequential(nn.Conv2d(c_last, sn.head_channels, 1, bias=False), nn.BatchNorm2d(sn.head_channels))
        self.fc = nn.Linear(sn.head_channels, sn.num_classes)
        self.fixed_latency_us = fixed_latency_us
        self.act = F.relu

    def forward(self, x: Tensor, dropout: bool = False) -> Tensor:
        x = self.act(self.stem(x))
        for b in self.blocks:
            x = b(x, self.act, dropout)
        x = self.act(self.head(x))
        return self.fc(x.mean((2, 3)))

    def expected_latency_us(self) -> Tensor:
        start = torch.tensor(self.fixed_latency_us, device=self.fc.weight.device)
        return sum((b.expected_latency_us() for b in self.blocks), start)

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.endswith("ring_t") or n.endswith("group_t")]

    def weight_parameters(self) -> list[nn.Parameter]:
        th = {id(p) for p in self.threshold_parameters()}
        return [p for p in self.parameters() if id(p) not in th]

    @torch.no_grad()
    def readout(self, name: str = "searched") -> Arch:
        """The architecture whose indicators are on (u = 1)."""
        from .space import arch_from_choices

        return arch_from_choices(self.sn, [b.chosen() for b in self.blocks], name=name)


def latency_loss(lat_us: Tensor, target_us: float, lam: float, m: float) -> Tensor:
    """λ·log(1 + m·ReLU(LAT − T)), LAT and T in milliseconds (S3NAS's units/scale)."""
    return lam * torch.log1p(m * F.relu(lat_us / 1000.0 - target_us / 1000.0))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["straight_through", "equal_selection_drop_rate", "nested_level_probs", "SuperBranch",
           "SearchableMixConvBlock", "Supernet", "latency_loss"]
