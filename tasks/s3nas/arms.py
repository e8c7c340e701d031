"""The arms of the NPU-awareness experiment (issue 14): which search feeds which scaling.

The paper's claim is that searching with the NPU's real latency, then scaling to the target,
beats designs made without it *at equal NPU latency*. Each arm changes one thing:

* ``s3nas`` — search at ``search_target_ratio``·T with the simulated NPU's table, scale to T
  (estimator fitted to the simulator, every scaling confirmed by it);
* ``mac_proxy`` — the same search with a MAC-count proxy (:mod:`tasks.s3nas.proxy`) calibrated
  on the largest network of the space, then scaled to T on the simulator like ``s3nas``: only
  the search's cost model differs;
* ``mac_proxy_as_found`` — the proxy's net scaled to T *by the proxy* (what an NPU-unaware flow
  would ship): its simulated latency shows how far the proxy misses T;
* ``at_target`` — search directly at T (ratio 1), then the same scaling (the paper's recipe is
  to search tighter, then scale);
* ``s3nas_32px`` — ``s3nas``'s searched net scaled with the input resolution held at the
  supernet's (diagnosis: does the scaling's choice of resolution cost accuracy?);
* ``s3nas_adam`` — the search as it was before (thresholds trained by Adam, which moves every
  threshold alike and undershot the search target): diagnosis of the threshold training;
* ``random_search`` — the best of random in-space nets at the search target, same image budget;
* ``hand_designed`` — an EfficientNet-B0-style net on the same macro-architecture.

``npu2`` is the ``s3nas`` search rerun on the second NPU's table (not trained: it shows which
blocks change when the NPU changes).
"""
from __future__ import annotations

from .config import S3NASConfig
from .lut import LatencyTable
from .proxy import MacProxy
from .space import fixed_layers, largest_arch

#: search arms: the cost model the supernet sees, and the search target as a fraction of T
#: (None = ``search_target_ratio``)
SEARCHES: dict[str, dict] = {
    "s3nas": {"cost": "npu", "ratio": None},
    "at_target": {"cost": "npu", "ratio": 1.0},
    "mac_proxy": {"cost": "mac", "ratio": None},
    "npu2": {"cost": "npu2", "ratio": None},
    # the search as it was before issue 14: thresholds on Adam (diagnosis of the threshold training)
    "s3nas_adam": {"cost": "npu", "ratio": None, "overrides": {"threshold_optimizer": "adam", "threshold_lr": 0.005}},
}

#: trained arms: (search it scales — None = the hand-designed net —, the cost model that scales
#: it, resolution fixed at the base net's)
FINALS: dict[str, dict] = {
    "s3nas": {"search": "s3nas", "scale_cost": "npu", "fix_resolution": False},
    "mac_proxy": {"search": "mac_proxy", "scale_cost": "npu", "fix_resolution": False},
    "mac_proxy_as_found": {"search": "mac_proxy", "scale_cost": "mac", "fix_resolution": False},
    "at_target": {"search": "at_target", "scale_cost": "npu", "fix_resolution": False},
    "s3nas_32px": {"search": "s3nas", "scale_cost": "npu", "fix_resolution": True},
    "s3nas_adam": {"search": "s3nas_adam", "scale_cost": "npu", "fix_resolution": False},
    "random_search": {"search": "random_search", "scale_cost": "npu", "fix_resolution": False},
    "hand_designed": {"search": None, "scale_cost": "npu", "fix_resolution": False},
}

#: arms that must sit at equal simulated latency (within ``latency_tolerance``); the as-found
#: proxy net is reported wherever its own cost model put it
EQUAL_LATENCY = [k for k in FINALS if k != "mac_proxy_as_found"]


def search_cost(cfg: S3NASConfig, spec: dict, lut: LatencyTable, ref_lut: LatencyTable | None = None) -> tuple[S3NASConfig, dict]:
    """(the config the search runs with — its target —, the cost model: block/fixed/arch µs)."""
    target = cfg.target_latency_us
    if spec["cost"] == "mac":
        proxy = MacProxy.calibrated(cfg.supernet, lut.arch_us)
        cost = {"block_us": proxy.block_us, "fixed_us": proxy.fixed_us(cfg.supernet), "arch_us": proxy.arch_us,
                "describe": {"kind": "mac_proxy", **proxy.to_dict()}}
    else:
        cost = {"block_us": lut.block_us, "fixed_us": lut.net_us(fixed_layers(cfg.supernet)), "arch_us": lut.arch_us,
                "describe": {"kind": "simulated NPU table", "npu": spec["cost"]}}
        if ref_lut is not None:
            # The same relative tightness on the other NPU: T scaled by the ratio of the largest nets.
            big = largest_arch(cfg.supernet)
            target *= lut.arch_us(big) / ref_lut.arch_us(big)
            cost["describe"]["target_us_carried_over"] = target
    ratio = spec["ratio"] if spec["ratio"] is not None else cfg.search_target_ratio
    update = {"target_latency_us": target, "search_target_ratio": ratio, **spec.get("overrides", {})}
    return cfg.model_copy(update=update), cost
