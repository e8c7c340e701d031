"""S3NAS's latency lookup table (METHODS.md §8.2) and the feasibility check it makes possible.

S3NAS builds its latency model from a cycle-level simulator's table: every layer any network
of the search space can contain is simulated once, and a block's latency is the sum of its
layers' cycles. :func:`build_latency_table` fills that table (the layers of the space, plus
those of a few other widths/resolutions of it that the analytical estimator is fitted on) and
writes S3NAS's per-block view (block string + input size → µs); :class:`LatencyTable` turns
it into the latency of a block, a network or an architecture.

:func:`check_target_reachable` is the check that cannot be made at config validation (it needs
the simulator): the search target must not be below the cheapest network of the space.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from tasks.common.artifacts import read_json
from tasks.common.config import ConfigError

from .config import S3NASConfig
from .npu import Network, NPULayer, SimCache, network_cycles
from .space import (Arch, BlockSlot, Branch, block_choices, block_layers, make_block, network_layers, scaled_supernet,
                    search_space_layers, smallest_arch, supernet_slots)

#: (width, resolution) of the spaces whose layers the estimator is fitted on; held-out networks
#: (tasks.s3nas.validation) use other multipliers so that most of their layers are new to it
FIT_SCALES: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.625, 0.75), (1.5, 1.25))


def fit_scales() -> list[tuple[float, float]]:
    return list(FIT_SCALES)


class LatencyTable:
    """Simulated cycles per layer key (the LUT), and latencies built from it."""

    def __init__(self, cycles: dict[str, float], clock_mhz: float):
        self.cycles, self.clock = cycles, clock_mhz

    @classmethod
    def load(cls, lut_dir: Path | str) -> "LatencyTable":
        d = read_json(Path(lut_dir) / "lut.json")
        return cls({k: v["cycles"] for k, v in d["layers"].items()}, d["npu"]["clock_mhz"])

    def net_us(self, net: Network) -> float:
        return sum(self.cycles[layer.key()] * n for layer, n in net) / self.clock

    def arch_us(self, arch: Arch) -> float:
        return self.net_us(network_layers(arch))

    def block_us(self, slot: BlockSlot, branches: tuple[Branch, ...]) -> float:
        return self.net_us(block_layers(make_block(slot, branches), slot.h))


def table_layers(cfg: S3NASConfig) -> tuple[dict[str, NPULayer], set[str]]:
    """(every layer the table holds by key, the keys of the search space itself)."""
    layers: dict[str, NPULayer] = {}
    for w, r in FIT_SCALES:
        for layer in search_space_layers(scaled_supernet(cfg.supernet, w, r), se_ratio=cfg.se_ratio):
            layers[layer.key()] = layer
    space = {l.key() for l in search_space_layers(cfg.supernet, se_ratio=cfg.se_ratio)}
    return layers, space


def build_latency_table(cfg: S3NASConfig, cache: SimCache,
                        simulate_missing: Callable[[list[NPULayer]], int]) -> tuple[dict, dict, dict]:
    """(lut.json, blocks.json, lut_stats.json) contents. ``simulate_missing(layers)`` fills the
    cache for the layers it is given (on worker actors) and returns how many simulations ran."""
    t0 = time.perf_counter()
    layers, space_keys = table_layers(cfg)
    missing = cache.missing(layers.values())
    runs = simulate_missing(missing) if missing else 0
    rows = {k: {**cache.simulate(l), "in_search_space": k in space_keys} for k, l in layers.items()}
    blocks = {}
    for slot in supernet_slots(cfg.supernet):
        for branches in block_choices(cfg.supernet, slot):
            b = make_block(slot, branches)
            blocks[f"{b.tag()}_imgsize{slot.h}"] = {
                "latency_us": sum(rows[l.key()]["cycles"] * n for l, n in block_layers(b, slot.h)) / cfg.npu.clock_mhz}
    lut = {"npu": cfg.npu.model_dump(), "layers": rows}
    stats = {"layers": len(rows), "search_space_layers": len(space_keys), "block_entries": len(blocks),
             "uncached_before": len(missing), "simulations_run": runs, "seconds": time.perf_counter() - t0}
    return lut, blocks, stats


def smallest_network_us(cfg: S3NASConfig, cache: SimCache) -> float:
    """Simulated latency of the cheapest network of the search space (a handful of layers)."""
    return network_cycles(network_layers(smallest_arch(cfg.supernet)), cache) / cfg.npu.clock_mhz


def check_target_reachable(cfg: S3NASConfig, cache: SimCache) -> float:
    """Refuse a search target below the smallest network of the space; returns that floor (µs)."""
    floor_us = smallest_network_us(cfg, cache)
    if cfg.search_target_us < floor_us:
        raise ConfigError(
            f"s3nas.target_latency_us: {cfg.target_latency_us:g} µs × search_target_ratio {cfg.search_target_ratio:g} "
            f"= {cfg.search_target_us:.1f} µs is below the smallest network of the search space, {floor_us:.1f} µs "
            f"on this NPU (npu.clock_mhz={cfg.npu.clock_mhz:g}); raise the target "
            f"(≥ {floor_us / cfg.search_target_ratio:.0f} µs) or shrink the supernet")
    return floor_us
