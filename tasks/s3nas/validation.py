"""Held-out check of S3NAS's analytical latency estimator against the simulator (METHODS.md §8.2–8.3).

The estimator is only worth using for scaling if it predicts networks it was not fitted on.
:func:`heldout_archs` draws whole random networks of the search space at widths and resolutions
*outside* the fit set (so most of their layers are new to the estimator), half of them finished
with SE + h-swish like the scaled nets; :func:`validate_estimator` simulates them, estimates them
and reports the error (MAPE, worst case), the share of layers new to the fit, and what each
side cost in seconds. The flow's estimator step and ``bench/npu_estimator.py`` both use it.
"""
from __future__ import annotations

import random
import time
from typing import Callable

from .config import SupernetConfig
from .estimator import LatencyEstimator, mape
from .npu import SimCache
from .scaling import finish
from .space import Arch, network_layers, random_arch, scaled_supernet

HELDOUT_WIDTHS = [0.75, 0.875, 1.125, 1.25, 1.75, 2.0]
HELDOUT_RESOLUTIONS = [0.875, 1.125, 1.5]


def heldout_archs(sn: SupernetConfig, n: int, seed: int, se_ratio: float) -> list[Arch]:
    """``n`` random networks at held-out scales; every odd one finished (SE + h-swish)."""
    rng = random.Random(seed + 7)
    archs = []
    for i in range(n):
        space = scaled_supernet(sn, rng.choice(HELDOUT_WIDTHS), rng.choice(HELDOUT_RESOLUTIONS))
        a = random_arch(space, rng, name=f"heldout-{i}")
        archs.append(finish(a, se_ratio) if i % 2 else a)
    return archs


def validate_estimator(est: LatencyEstimator, archs: list[Arch], simulate_us: Callable[[list[Arch]], list[float]],
                       cache: SimCache, fit_keys: set[str]) -> dict:
    """Simulated vs estimated latency of ``archs``; ``simulate_us`` fills ``cache`` as it goes."""
    t0 = time.perf_counter()
    sim = simulate_us(archs)
    sim_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = [est.network_us(network_layers(a)) for a in archs]
    est_s = time.perf_counter() - t0
    nets = []
    for a, s, p in zip(archs, sim, pred):
        net = network_layers(a)
        keys = {l.key() for l, _ in net}
        nets.append({"name": a.name, "sim_us": s, "est_us": p, "err_pct": 100 * (p - s) / s,
                     "new_layer_fraction": len(keys - fit_keys) / len(keys), "arch": a.describe(),
                     # what SCALE-Sim would spend on the network run as-is (every layer, every channel)
                     "scalesim_seconds_as_run": sum(cache.get(l)["sim_seconds"] * n for l, n in net)})
    return {"networks": len(archs), "mape_pct": mape(pred, sim),
            "max_abs_err_pct": max(abs(n["err_pct"]) for n in nets),
            "mean_new_layer_fraction": sum(n["new_layer_fraction"] for n in nets) / len(nets),
            "estimate_seconds_total": est_s, "simulate_wall_seconds": sim_wall,
            "scalesim_seconds_as_run_total": sum(n["scalesim_seconds_as_run"] for n in nets),
            "per_network": nets}
