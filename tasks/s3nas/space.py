"""S3NAS search space and architectures (METHODS.md §8.1): MixConv blocks with parallel
depthwise branches, each branch choosing a kernel and an expansion (0 removes it), and the
mapping of any architecture onto the NPU's layers.

An :class:`Arch` is a plain, JSON-serialisable description used everywhere downstream: the
searched net, the random-search candidates, the hand-designed baseline and their scaled
versions. ``network_layers`` turns it into SCALE-Sim layers; the supernet's latency table is
built from the same function, so the search, the estimator and the confirmation agree.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

from .config import SupernetConfig
from .npu import Network, NPULayer, conv_layer, depthwise, fc, global_pool, se_layers


@dataclass(frozen=True)
class Branch:
    kernel: int
    expansion: int  # multiple of the block's input channels; 0 = branch removed


@dataclass(frozen=True)
class Block:
    c_in: int
    c_out: int
    stride: int
    branches: tuple[Branch, ...]
    se: bool = False

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out

    @property
    def expansion(self) -> int:
        return sum(b.expansion for b in self.branches)

    @property
    def is_skip(self) -> bool:
        return self.expansion == 0

    def hidden(self) -> int:
        return self.c_in * self.expansion

    def se_channels(self, se_ratio: float) -> int:
        return max(1, int(self.c_in * se_ratio))

    def tag(self) -> str:
        """S3NAS-style block string: r1_k3.5_e2.4_i16_o24_s2[_se]."""
        ks = ".".join(str(b.kernel) for b in self.branches)
        es = ".".join(str(b.expansion) for b in self.branches)
        return f"k{ks}_e{es}_i{self.c_in}_o{self.c_out}_s{self.stride}" + ("_se" if self.se else "")


@dataclass
class Arch:
    resolution: int
    stem_channels: int
    blocks: list[Block]
    head_channels: int
    num_classes: int = 10
    in_channels: int = 1
    activation: str = "relu"  # 'relu' during search; 'hswish' for finished nets
    se_ratio: float = 0.25
    name: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = [{**asdict(b), "branches": [asdict(x) for x in b.branches]} for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        d = dict(d)
        d["blocks"] = [Block(b["c_in"], b["c_out"], b["stride"], tuple(Branch(**x) for x in b["branches"]), b.get("se", False))
                       for b in d["blocks"]]
        return cls(**d)

    def active_blocks(self) -> list[Block]:
        return [b for b in self.blocks if not b.is_skip]

    def describe(self) -> str:
        parts = [f"{self.resolution}px stem{self.stem_channels}"]
        parts += [b.tag() for b in self.active_blocks()]
        parts.append(f"head{self.head_channels}")
        return " | ".join(parts)


# ---------------------------------------------------------------------------- NPU mapping


def stem_layers(arch: Arch) -> Network:
    return [(conv_layer(arch.resolution, arch.in_channels, arch.stem_channels, 3, 2), 1)]


def block_layers(block: Block, h: int, se_ratio: float = 0.25) -> Network:
    """Expand 1×1 → parallel depthwise branches → (SE) → project 1×1; a skip block is free."""
    if block.is_skip:
        return []
    hidden = block.hidden()
    net: Network = [(conv_layer(h, block.c_in, hidden, 1, 1), 1)]
    for b in block.branches:
        if b.expansion:
            net.append(depthwise(h, block.c_in * b.expansion, b.kernel, block.stride))
    h_out = -(-h // block.stride)
    if block.se:
        net += se_layers(h_out, hidden, block.se_channels(se_ratio))
    net.append((conv_layer(h_out, hidden, block.c_out, 1, 1), 1))
    return net


def head_layers(h: int, c_in: int, head: int, classes: int) -> Network:
    return [(conv_layer(h, c_in, head, 1, 1), 1), global_pool(h, head), (fc(head, classes), 1)]


def network_layers(arch: Arch) -> Network:
    h = -(-arch.resolution // 2)
    net = stem_layers(arch)
    c = arch.stem_channels
    for b in arch.blocks:
        net += block_layers(b, h, arch.se_ratio)
        h = -(-h // b.stride)
        c = b.c_out
    return net + head_layers(h, c, arch.head_channels, arch.num_classes)


def block_input_sizes(arch: Arch) -> list[int]:
    h = -(-arch.resolution // 2)
    sizes = []
    for b in arch.blocks:
        sizes.append(h)
        h = -(-h // b.stride)
    return sizes


def network_macs(arch: Arch) -> int:
    return sum(layer.macs * n for layer, n in network_layers(arch))


# ---------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class BlockSlot:
    """One searchable position of the supernet."""

    c_in: int
    c_out: int
    stride: int
    h: int  # input side

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.c_in == self.c_out


def supernet_slots(sn: SupernetConfig) -> list[BlockSlot]:
    h = -(-sn.resolution // 2)
    c = sn.stem_channels
    slots = []
    for n, c_out, s in sn.stages:
        for i in range(n):
            stride = s if i == 0 else 1
            slots.append(BlockSlot(c, c_out, stride, h))
            h = -(-h // stride)
            c = c_out
    return slots


def kernel_choices(k_max: int) -> list[int]:
    return list(range(3, k_max + 1, 2))


def expansion_choices(e_max: int, step: int, can_zero: bool) -> list[int]:
    return ([0] if can_zero else []) + list(range(step, e_max + 1, step))


def branch_can_zero(sn: SupernetConfig, branch: int, residual: bool) -> bool:
    """The primary (last) branch may be removed only where a residual keeps the block alive."""
    return residual or branch != len(sn.branch_kernels) - 1


def branch_choices(sn: SupernetConfig, branch: int, residual: bool) -> list[Branch]:
    """Distinct (k, e) of one branch; e = 0 merges every kernel into one 'removed' choice."""
    out = []
    for e in expansion_choices(sn.branch_expansions[branch], sn.expansion_step, branch_can_zero(sn, branch, residual)):
        if e == 0:
            out.append(Branch(sn.branch_kernels[branch], 0))
        else:
            out += [Branch(k, e) for k in kernel_choices(sn.branch_kernels[branch])]
    return out


def block_choices(sn: SupernetConfig, slot: BlockSlot) -> Iterator[tuple[Branch, ...]]:
    """The Cartesian product of the branches' choices (S3NAS enumerates the same)."""
    per = [branch_choices(sn, i, slot.residual) for i in range(len(sn.branch_kernels))]
    yield from itertools.product(*per)


def make_block(slot: BlockSlot, branches: tuple[Branch, ...]) -> Block:
    return Block(slot.c_in, slot.c_out, slot.stride, tuple(branches))


def arch_from_choices(sn: SupernetConfig, choices: list[tuple[Branch, ...]], name: str = "") -> Arch:
    slots = supernet_slots(sn)
    return Arch(sn.resolution, sn.stem_channels, [make_block(s, c) for s, c in zip(slots, choices)],
                sn.head_channels, sn.num_classes, name=name)


def smallest_arch(sn: SupernetConfig) -> Arch:
    """Every branch at its cheapest choice: skip where allowed, else the primary branch at
    its smallest kernel and expansion."""
    choices = []
    for slot in supernet_slots(sn):
        choices.append(tuple(branch_choices(sn, i, slot.residual)[0] for i in range(len(sn.branch_kernels))))
    return arch_from_choices(sn, choices, name="smallest")


def largest_arch(sn: SupernetConfig) -> Arch:
    choices = []
    for slot in supernet_slots(sn):
        choices.append(tuple(Branch(k, e) for k, e in zip(sn.branch_kernels, sn.branch_expansions)))
    return arch_from_choices(sn, choices, name="largest")


def random_arch(sn: SupernetConfig, rng: random.Random, name: str = "") -> Arch:
    choices = []
    for slot in supernet_slots(sn):
        choices.append(tuple(rng.choice(branch_choices(sn, i, slot.residual)) for i in range(len(sn.branch_kernels))))
    return arch_from_choices(sn, choices, name=name)


def fixed_layers(sn: SupernetConfig) -> Network:
    """Stem, head, pooling and classifier: the part of the latency no choice changes."""
    arch = arch_from_choices(sn, [tuple() for _ in supernet_slots(sn)])
    return network_layers(replace(arch, blocks=[]))[:1] + head_layers(
        _final_side(sn), sn.stages[-1][1], sn.head_channels, sn.num_classes)


def _final_side(sn: SupernetConfig) -> int:
    h = -(-sn.resolution // 2)
    for slot in supernet_slots(sn):
        h = -(-h // slot.stride)
    return h


def search_space_layers(sn: SupernetConfig, se_ratio: float | None = None) -> list[NPULayer]:
    """Every distinct NPU layer any architecture of the space can use (the LUT's rows); with
    ``se_ratio``, also the squeeze-and-excitation layers the finished nets add."""
    layers: dict[str, NPULayer] = {}
    for layer, _ in fixed_layers(sn):
        layers[layer.key()] = layer
    for slot in supernet_slots(sn):
        for branches in block_choices(sn, slot):
            block = make_block(slot, branches)
            variants = [block] + ([replace(block, se=True)] if se_ratio and not block.is_skip else [])
            for b in variants:
                for layer, _ in block_layers(b, slot.h, se_ratio or 0.25):
                    layers[layer.key()] = layer
    return list(layers.values())


def scaled_supernet(sn: SupernetConfig, width: float, resolution: float) -> SupernetConfig:
    """The same space at another width/resolution (channels to multiples of 8, side to 4)."""
    return sn.model_copy(update=dict(
        resolution=max(16, round_to(sn.resolution * resolution, 4)),
        stem_channels=max(8, round_to(sn.stem_channels * width, 8)),
        head_channels=max(8, round_to(sn.head_channels * width, 8)),
        stages=[(n, max(8, round_to(c * width, 8)), s) for n, c, s in sn.stages],
    ))


def round_to(x: float, multiple: int) -> int:
    """EfficientNet's rounding: nearest multiple, never more than 10 % below x."""
    v = max(multiple, int(x + multiple / 2) // multiple * multiple)
    if v < 0.9 * x:
        v += multiple
    return v


def search_space_size(sn: SupernetConfig) -> int:
    n = 1
    for slot in supernet_slots(sn):
        n *= sum(1 for _ in block_choices(sn, slot))
    return n
