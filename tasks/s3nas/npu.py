"""The cycle-level NPU latency model of S3NAS (METHODS.md §8.2), on SCALE-Sim 3.0.0.

S3NAS measures latency on a cycle-level NPU simulator that runs whole CNNs including memory
traffic. Here that simulator is SCALE-Sim (a systolic array with double-buffered SRAMs in
front of a bandwidth-limited DRAM). Each network layer is mapped onto it honestly:

* a k×k convolution is a SCALE-Sim conv row (SCALE-Sim builds the im2col operand matrices
  itself); "same" padding is simulated as a padded input, so padding costs traffic too;
* a depthwise convolution is what SCALE-Sim itself does with a ``DP`` layer: one single-channel
  convolution per channel, run one after the other (an output-stationary/weight-stationary
  array is badly used by depthwise work, and this model says so). All channels are the same
  layer, so one is simulated and counted C times — exactly the cycles of SCALE-Sim's own ``DP``
  expansion, without simulating the same layer C times;
* a fully connected layer is a GEMM row (``input_type_gemm=True``);
* squeeze-and-excitation is global pooling (a per-channel convolution with an H×W kernel),
  two FC GEMMs and the channel-wise scaling (a per-channel 1×1 convolution).

The cycles of a layer are SCALE-Sim's "Total Cycles (incl. prefetch)": compute, memory stalls
and the DRAM fill of its operands. BN and activations are folded into the convolutions, and
residual additions are free (as in S3NAS's LUT). ``get_total_cycles()`` is broken in 3.0.0, so
``COMPUTE_REPORT.csv`` is parsed.

:class:`SimCache` stores one JSON file per (NPU, layer shape) and never runs SCALE-Sim twice for
the same key.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from tasks.common.artifacts import data_root, write_json

from .config import NPUConfig


@dataclass(frozen=True)
class NPULayer:
    """One SCALE-Sim row. ``kind='conv'``: padded ifmap h×w, filter fh×fw, channels, filters,
    stride. ``kind='gemm'``: M×K by K×N (h=M, w=K, filters=N)."""

    kind: str
    h: int
    w: int
    fh: int = 1
    fw: int = 1
    channels: int = 1
    filters: int = 1
    stride: int = 1

    def key(self) -> str:
        if self.kind == "gemm":
            return f"gemm_m{self.h}_k{self.w}_n{self.filters}"
        return f"conv_{self.h}x{self.w}_f{self.fh}x{self.fw}_c{self.channels}_n{self.filters}_s{self.stride}"

    @property
    def macs(self) -> int:
        if self.kind == "gemm":
            return self.h * self.w * self.filters
        oh, ow = self.out_hw
        return oh * ow * self.fh * self.fw * self.channels * self.filters

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "gemm":
            return self.h, 1
        s = self.stride
        return -(-(self.h - self.fh + s) // s), -(-(self.w - self.fw + s) // s)

    def gemm_dims(self) -> tuple[int, int, int]:
        """(M ofmap pixels, N filters, K window) of the layer's GEMM, as SCALE-Sim computes them."""
        if self.kind == "gemm":
            return self.h, self.filters, self.w
        oh, ow = self.out_hw
        return oh * ow, self.filters, self.fh * self.fw * self.channels

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NPULayer":
        return cls(**d)


# A network on the NPU: layers with how many times each runs (a depthwise conv over C channels
# is one single-channel layer run C times).
Network = list[tuple[NPULayer, int]]


def conv_layer(h: int, c_in: int, c_out: int, k: int, stride: int) -> NPULayer:
    """A 'same'-padded k×k convolution on an h×h input: the padded input SCALE-Sim sees."""
    out = -(-h // stride)
    padded = (out - 1) * stride + k
    return NPULayer("conv", padded, padded, k, k, c_in, c_out, stride)


def depthwise(h: int, channels: int, k: int, stride: int) -> tuple[NPULayer, int]:
    return conv_layer(h, 1, 1, k, stride), channels


def global_pool(h: int, channels: int) -> tuple[NPULayer, int]:
    return NPULayer("conv", h, h, h, h, 1, 1, 1), channels


def fc(in_features: int, out_features: int, batch: int = 1) -> NPULayer:
    return NPULayer("gemm", batch, in_features, 1, in_features, 1, out_features, 1)


def se_layers(h: int, channels: int, reduced: int) -> Network:
    """Squeeze (pool) → FC → FC → excite (per-channel scaling as a 1×1 per-channel conv)."""
    return [global_pool(h, channels), (fc(channels, reduced), 1), (fc(reduced, channels), 1),
            (NPULayer("conv", h, h, 1, 1, 1, 1, 1), channels)]


# ---------------------------------------------------------------------------- SCALE-Sim


def write_scalesim_config(path: Path, npu: NPUConfig, run_name: str = "layer") -> None:
    """SCALE-Sim 3.0 reads [layout] and [sparsity] too; in USER bandwidth mode it takes the
    ifmap/filter DRAM bandwidth from the [layout] bank bandwidths and the ofmap one from Bandwidth."""
    bw = npu.dram_bw_words
    path.write_text(f"""[general]
run_name = {run_name}

[run_presets]
InterfaceBandwidth = USER
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {npu.array_rows}
ArrayWidth = {npu.array_cols}
ifmapsramszkB = {npu.ifmap_sram_kb}
filtersramszkB = {npu.filter_sram_kb}
ofmapsramszkB = {npu.ofmap_sram_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Bandwidth = {bw}
Dataflow = {npu.dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = {bw}
IfmapSRAMBankNum = 1
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = {bw}
FilterSRAMBankNum = 1
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = False
SparseRep = ellpack_block
OptimizedMapping = False
BlockSize = 8
RandomNumberGeneratorSeed = 40
""")


_LAYOUT_ROW = "1,1,1,1,1,1, 0,1,2, 0,1,2, 0,1,2,3, 0,1,2,3,"


def write_topology(folder: Path, layer: NPULayer) -> tuple[Path, Path]:
    topo, layout = folder / "topology.csv", folder / "layout.csv"
    if layer.kind == "gemm":
        topo.write_text(f"Layer, M, N, K,\nfc, {layer.h}, {layer.filters}, {layer.w},\n")
    else:
        topo.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n"
                        f"conv, {layer.h}, {layer.w}, {layer.fh}, {layer.fw}, {layer.channels}, {layer.filters}, {layer.stride},\n")
    layout.write_text("Layer name, factors and orders,\n" + ("fc" if layer.kind == "gemm" else "conv") + ", " + _LAYOUT_ROW + "\n")
    return topo, layout


def parse_compute_report(path: Path) -> list[dict[str, float]]:
    rows = []
    with open(path) as f:
        reader = csv.reader(f)
        next(reader)
        for r in reader:
            r = [x.strip() for x in r if x.strip()]
            if not r:
                continue
            rows.append({"cycles": int(float(r[1])), "compute_cycles": int(float(r[2])),
                         "stall_cycles": int(float(r[3])), "util_pct": float(r[4]), "mapping_eff_pct": float(r[5])})
    return rows


def run_scalesim(layer: NPULayer, npu: NPUConfig) -> dict[str, float]:
    """Simulate one layer in a scratch folder; returns its compute-report row + wall seconds."""
    from scalesim.scale_sim import scalesim

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scalesim-") as d:
        folder = Path(d)
        cfg = folder / "npu.cfg"
        write_scalesim_config(cfg, npu)
        topo, layout = write_topology(folder, layer)
        with contextlib.redirect_stdout(io.StringIO()):  # SCALE-Sim prints its banner regardless
            sim = scalesim(save_disk_space=True, verbose=False, config=str(cfg), topology=str(topo),
                           layout=str(layout), input_type_gemm=layer.kind == "gemm")
            sim.run_scale(top_path=str(folder / "out"))
        rows = parse_compute_report(folder / "out" / "layer" / "COMPUTE_REPORT.csv")
    if len(rows) != 1:
        raise RuntimeError(f"SCALE-Sim reported {len(rows)} rows for one layer {layer.key()}")
    return {**rows[0], "sim_seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------- cache


def default_cache_root() -> Path:
    """``PAPERLINE_NPU_CACHE`` or ``data/s3nas/npu_cache`` (DVC-versioned with the flow)."""
    return Path(os.environ.get("PAPERLINE_NPU_CACHE", data_root() / "s3nas" / "npu_cache"))


class SimCache:
    """One JSON per (NPU config, layer shape): a layer is simulated once, ever."""

    simulate_fn = staticmethod(run_scalesim)

    def __init__(self, root: Path | str, npu: NPUConfig):
        self.npu = npu
        self.dir = Path(root) / npu.key()
        self.simulations = 0  # SCALE-Sim runs made by this object (cache misses)

    @classmethod
    def default(cls, npu: NPUConfig) -> "SimCache":
        return cls(default_cache_root(), npu)

    def path(self, layer: NPULayer) -> Path:
        return self.dir / f"{layer.key()}.json"

    def get(self, layer: NPULayer) -> dict | None:
        p = self.path(layer)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:  # a torn file cannot exist (atomic writes), but be safe
                return None
        return None

    def simulate(self, layer: NPULayer) -> dict:
        hit = self.get(layer)
        if hit is not None:
            return hit
        res = {**type(self).simulate_fn(layer, self.npu), "layer": layer.to_dict()}
        self.simulations += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "npu.json").is_file():
            write_json(self.dir / "npu.json", self.npu.model_dump())
        write_json(self.path(layer), res)
        return res

    def missing(self, layers: Iterable[NPULayer]) -> list[NPULayer]:
        """The distinct layers not simulated yet, in first-seen order."""
        seen: dict[str, NPULayer] = {}
        for l in layers:
            if l.key() not in seen and not self.path(l).is_file():
                seen[l.key()] = l
        return list(seen.values())


def network_cycles(net: Network, cache: SimCache) -> int:
    """Simulated cycles of a whole network (layers run one after the other)."""
    return sum(int(cache.simulate(layer)["cycles"]) * n for layer, n in net)


def network_sim_seconds(net: Network, cache: SimCache) -> float:
    """Wall time SCALE-Sim would spend on the whole network run as-is: every layer instance,
    every depthwise channel (from the per-layer times recorded in the cache)."""
    return sum(float(cache.simulate(layer)["sim_seconds"]) * n for layer, n in net)
