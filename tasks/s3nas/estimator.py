"""The analytical latency estimator of S3NAS (METHODS.md §8.2–8.3), fitted to the simulator.

S3NAS scales the searched net "maximally within the latency constraint" with an estimator
built on the cycle-level simulator's table, because simulating every scaling candidate is too
slow. Here a layer's cycles are modelled from its shape the way a systolic array spends them:
the GEMM (M, N, K) is laid out on the R×C array in SCALE-Sim's spatial/temporal split for the
dataflow (S_r, S_c, T), giving ⌈S_r/R⌉·⌈S_c/C⌉ folds of T streaming cycles plus an R + C fill
and drain each, and the operand traffic (ifmap, filter, ofmap words) over the DRAM bandwidth
gives the memory side. Non-negative weights of those terms are fitted per layer family
(multi-channel convolutions, single-channel ones — depthwise, pooling, scaling — and GEMMs)
by least squares on relative error, so the fit minimises percentage error like the MAPE it
is judged by. A whole network is the sum of its layers, like the simulator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import NPUConfig
from .npu import Network, NPULayer

FEATURES = ["folds*T", "folds*(R+C)", "folds", "ifmap/bw", "filter/bw", "ofmap/bw", "max(compute,memory)", "1"]


def family(layer: NPULayer) -> str:
    if layer.kind == "gemm":
        return "gemm"
    return "single" if layer.channels == 1 and layer.filters == 1 else "conv"


def spatio_temporal(layer: NPULayer, dataflow: str) -> tuple[int, int, int]:
    """SCALE-Sim's (S_r, S_c, T) for the layer under a dataflow."""
    m, n, k = layer.gemm_dims()
    if dataflow == "os":
        return m, n, k
    if dataflow == "ws":
        return k, n, m
    return k, m, n  # 'is'


def layer_features(layer: NPULayer, npu: NPUConfig) -> np.ndarray:
    r, c, bw = npu.array_rows, npu.array_cols, npu.dram_bw_words
    s_r, s_c, t = spatio_temporal(layer, npu.dataflow)
    folds = math.ceil(s_r / r) * math.ceil(s_c / c)
    m, n, k = layer.gemm_dims()
    if layer.kind == "gemm":
        ifmap, filt = layer.h * layer.w, layer.w * layer.filters
    else:
        ifmap, filt = layer.h * layer.w * layer.channels, layer.fh * layer.fw * layer.channels * layer.filters
    ofmap = m * n
    compute = folds * (t + r + c)
    memory = (ifmap + filt + ofmap) / bw
    return np.array([folds * t, folds * (r + c), folds, ifmap / bw, filt / bw, ofmap / bw, max(compute, memory), 1.0])


def nnls(a: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """Lawson–Hanson non-negative least squares: argmin ‖Ax − b‖ s.t. x ≥ 0."""
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    w = a.T @ (b - a @ x)
    for _ in range(iters):
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12 * max(1.0, np.abs(w).max()):
            break
        j = np.argmax(np.where(passive, -np.inf, w))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-12
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


@dataclass
class LatencyEstimator:
    """Per-family weights of :data:`FEATURES`; predicts cycles of a layer or a whole network."""

    npu: NPUConfig
    weights: dict[str, list[float]] = field(default_factory=dict)
    fit_stats: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def fit(cls, rows: list[tuple[NPULayer, float]], npu: NPUConfig) -> "LatencyEstimator":
        """Fit to (layer, simulated cycles) rows of the latency table."""
        est = cls(npu)
        by_family: dict[str, list[tuple[np.ndarray, float]]] = {}
        for layer, cycles in rows:
            by_family.setdefault(family(layer), []).append((layer_features(layer, npu), float(cycles)))
        for fam, pts in by_family.items():
            x = np.stack([p[0] for p in pts])
            y = np.array([p[1] for p in pts])
            # Relative error: divide each row by its target, so 10 % off costs the same everywhere.
            scale = 1.0 / np.maximum(y, 1.0)
            col = np.maximum(np.abs(x).max(axis=0), 1e-9)  # column scaling for a well-posed solve
            w = nnls(x * scale[:, None] / col, y * scale) / col
            pred = x @ w
            est.weights[fam] = w.tolist()
            est.fit_stats[fam] = {"rows": len(pts), "mape_pct": float(np.mean(np.abs(pred - y) / y) * 100)}
        return est

    def layer_cycles(self, layer: NPULayer) -> float:
        fam = family(layer)
        w = self.weights.get(fam) or self.weights.get("conv")
        return float(np.dot(layer_features(layer, self.npu), w))

    def network_cycles(self, net: Network) -> float:
        return sum(self.layer_cycles(layer) * n for layer, n in net)

    def network_us(self, net: Network) -> float:
        return self.network_cycles(net) / self.npu.clock_mhz

    def to_dict(self) -> dict:
        return {"npu": self.npu.model_dump(), "features": FEATURES, "weights": self.weights, "fit_stats": self.fit_stats}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyEstimator":
        return cls(NPUConfig(**d["npu"]), d["weights"], d.get("fit_stats", {}))


def mape(pred: list[float], true: list[float]) -> float:
    p, t = np.asarray(pred, float), np.asarray(true, float)
    return float(np.mean(np.abs(p - t) / t) * 100)
