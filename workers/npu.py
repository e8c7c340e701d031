"""Ray actors that own SCALE-Sim runs for the ``s3nas`` flow, on the shared worker pool.

Building the latency table, checking the estimator on held-out networks and confirming the
scaled nets all need cycle-level simulations. Each distinct layer is simulated once: the
driver drops the layers already in the on-disk cache (``data/s3nas/npu_cache/<npu>/``) and
hands the rest, one layer per job and largest first, to :func:`workers.pool.run_pool` — which
replaces an actor that dies (wherever the cluster has room) and queues its layer again. An
actor writes every result to the cache atomically as soon as it has it, so a lost actor or a
crashed flow never loses — and never redoes — a finished simulation.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import ray

from workers.pool import run_pool

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0)  # the pool replaces a dead simulator; Ray must not restart it in place
class NPUSimulator:
    def __init__(self, npu: dict, cache_root: str):
        from tasks.s3nas.config import NPUConfig
        from tasks.s3nas.npu import SimCache

        self.cache = SimCache(cache_root, NPUConfig(**npu))

    def simulate(self, layer: dict) -> dict:
        """Simulate (or read from the cache) one layer; its cycles, whether SCALE-Sim ran, and
        which process ran it."""
        from tasks.s3nas.npu import NPULayer

        before = self.cache.simulations
        row = self.cache.simulate(NPULayer.from_dict(layer))
        return {"cycles": row["cycles"], "simulated": self.cache.simulations > before, "pid": os.getpid()}


def simulate_layers(layers: list, npu, cache_root: str, workers: int,
                    progress: Callable[[int, int, dict], None] | None = None,
                    on_done: Callable[[str, dict], None] | None = None) -> int:
    """Fill the cache for ``layers`` (NPULayer objects) on up to ``workers`` actors; returns how
    many SCALE-Sim runs were made. Without a running Ray, or with one worker, it simulates here.
    ``on_done(layer key, result)`` is called in the driver as each pooled layer finishes."""
    from tasks.s3nas.npu import SimCache

    cache = SimCache(cache_root, npu)
    todo = cache.missing(layers)
    if not todo:
        return 0
    if not ray.is_initialized() or workers <= 1 or len(todo) == 1:
        for i, layer in enumerate(todo):
            cache.simulate(layer)
            if progress:
                progress(i + 1, len(todo), {})
        return cache.simulations
    # Largest layers first, so the pool does not end waiting on one big layer.
    todo.sort(key=lambda l: -l.macs)
    jobs = {l.key(): l.to_dict() for l in todo}
    done: list[str] = []

    def finished(name: str, value: Any) -> None:
        done.append(name)
        if progress:
            progress(len(done), len(jobs), {})
        if on_done:
            on_done(name, value)

    res = run_pool(lambda: NPUSimulator.options(num_cpus=1).remote(npu.model_dump(), str(cache_root)), jobs,
                   lambda actor, name, layer: actor.simulate.remote(layer), size=workers, on_done=finished)
    if res.replaced:
        log.warning("NPU pool: %d simulator(s) lost and replaced; their layers were simulated again", res.replaced)
    return sum(1 for v in res.results.values() if v["simulated"])


def simulate_archs(archs: list, npu, cache_root: str, workers: int) -> list[float]:
    """Simulated latency (µs) of whole networks (``Arch`` objects); new layers run on the pool."""
    from tasks.s3nas.npu import SimCache, network_cycles
    from tasks.s3nas.space import network_layers

    nets = [network_layers(a) for a in archs]
    simulate_layers([layer for net in nets for layer, _ in net], npu, cache_root, workers)
    cache = SimCache(cache_root, npu)
    return [network_cycles(net, cache) / npu.clock_mhz for net in nets]
