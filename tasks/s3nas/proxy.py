"""The NPU-unaware cost model S3NAS is compared with (issue 14): a MAC/FLOP-count proxy.

A search that does not know the NPU ranks networks by their multiply-accumulates. To make it a
fair latency *proxy* it is calibrated to the same target the NPU-aware search uses: one
constant µs-per-MAC chosen so that the largest network of the search space (every branch at
its largest kernel and expansion) costs the same on the proxy as on the simulated NPU. Between
that anchor and zero the proxy is linear in MACs, so it cannot see what makes the systolic array
slow on a layer: a depthwise convolution runs one single-channel layer per channel (almost no
array utilisation: many cycles for few MACs), squeeze-and-excitation is pooling plus two
matrix-vector products plus a per-channel scaling (hardly any MACs, many cycles), and memory
stalls are invisible. The MAC count itself is exact and is the same :attr:`NPULayer.macs` the
rest of the flow reports: a k×k depthwise conv over C channels at an h×h output costs h²·k²·C,
a global pool over C channels h²·C, an FC layer in·out, the SE channel scaling h²·C.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from .config import SupernetConfig
from .npu import Network
from .space import Arch, Block, BlockSlot, Branch, block_layers, fixed_layers, head_layers, largest_arch, make_block, \
    network_layers, stem_layers


def net_macs(net: Network) -> int:
    return sum(layer.macs * n for layer, n in net)


def mac_breakdown(arch: Arch) -> dict[str, int]:
    """MACs by layer kind: stem, expand (1×1), depthwise, se (pool + 2 FC + scaling), project (1×1),
    head (1×1 + pool + classifier). Sums to :func:`tasks.s3nas.space.network_macs`."""
    out: dict[str, int] = defaultdict(int)
    out["stem"] = net_macs(stem_layers(arch))
    h = -(-arch.resolution // 2)
    c = arch.stem_channels
    for b in arch.blocks:
        for k, v in _block_breakdown(b, h, arch.se_ratio).items():
            out[k] += v
        h = -(-h // b.stride)
        c = b.c_out
    out["head"] = net_macs(head_layers(h, c, arch.head_channels, arch.num_classes))
    return dict(out)


def _block_breakdown(b: Block, h: int, se_ratio: float) -> dict[str, int]:
    """The layers of ``block_layers`` in their order: expand, branches…, [SE: 4 layers], project."""
    layers = block_layers(b, h, se_ratio)
    if not layers:
        return {}
    n_dw = sum(1 for x in b.branches if x.expansion)
    n_se = 4 if b.se else 0
    return {"expand": net_macs(layers[:1]), "depthwise": net_macs(layers[1:1 + n_dw]),
            "se": net_macs(layers[1 + n_dw:1 + n_dw + n_se]), "project": net_macs(layers[1 + n_dw + n_se:])}


class MacProxy:
    """Latency ≈ ``us_per_mac`` × MACs: the NPU-unaware cost model, calibrated on one network."""

    def __init__(self, us_per_mac: float, anchor: dict | None = None):
        self.us_per_mac = us_per_mac
        self.anchor = anchor or {}

    @classmethod
    def calibrated(cls, sn: SupernetConfig, simulated_arch_us: Callable[[Arch], float]) -> "MacProxy":
        """Anchored at the largest network of the space: proxy(largest) = simulated(largest)."""
        big = largest_arch(sn)
        us, macs = simulated_arch_us(big), sum(layer.macs * n for layer, n in network_layers(big))
        return cls(us / macs, {"arch": "largest", "simulated_us": us, "macs": macs})

    def net_us(self, net: Network) -> float:
        return self.us_per_mac * net_macs(net)

    def arch_us(self, arch: Arch) -> float:
        return self.net_us(network_layers(arch))

    def archs_us(self, archs: list[Arch]) -> list[float]:
        return [self.arch_us(a) for a in archs]

    def block_us(self, slot: BlockSlot, branches: tuple[Branch, ...]) -> float:
        return self.net_us(block_layers(make_block(slot, branches), slot.h))

    def fixed_us(self, sn: SupernetConfig) -> float:
        return self.net_us(fixed_layers(sn))

    def to_dict(self) -> dict:
        return {"us_per_mac": self.us_per_mac, "anchor": self.anchor}
