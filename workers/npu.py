"""Ray actors that own SCALE-Sim runs for the ``s3nas`` flow.

Building the latency table, checking the estimator on held-out networks and confirming the
scaled nets all need cycle-level simulations. Each distinct layer is simulated once: the
driver drops the layers already in the on-disk cache (``data/s3nas/npu_cache/<npu>/``) and
deals the rest out to these actors, one layer list each. An actor writes every result to the
cache atomically as soon as it has it, so a crashed actor (restarted by Ray) or a crashed flow
never loses — and never redoes — a finished simulation.
"""
from __future__ import annotations

import ray


@ray.remote(max_restarts=2, max_task_retries=2)
class NPUSimulator:
    def __init__(self, npu: dict, cache_root: str):
        from tasks.s3nas.config import NPUConfig
        from tasks.s3nas.npu import SimCache

        self.cache = SimCache(cache_root, NPUConfig(**npu))

    def simulate(self, layers: list[dict]) -> list[dict]:
        """Simulate (or read from the cache) each layer; returns their compute-report rows."""
        from tasks.s3nas.npu import NPULayer

        return [self.cache.simulate(NPULayer.from_dict(d)) for d in layers]

    def simulations(self) -> int:
        return self.cache.simulations


ACTOR_START_TIMEOUT_S = 20.0


def simulate_layers(layers: list, npu, cache_root: str, workers: int) -> int:
    """Fill the cache for ``layers`` (NPULayer objects) on ``workers`` actors; returns how
    many SCALE-Sim runs were made. Without a running Ray it simulates in-process."""
    from tasks.s3nas.npu import SimCache

    cache = SimCache(cache_root, npu)
    todo = cache.missing(layers)
    if not todo:
        return 0
    if not ray.is_initialized() or workers <= 1 or len(todo) == 1:
        for layer in todo:
            cache.simulate(layer)
        return len(todo)
    n = min(workers, len(todo))
    actors = [NPUSimulator.options(num_cpus=1).remote(npu.model_dump(), str(cache_root)) for _ in range(n)]
    try:
        # Use the actors that get a CPU soon. Waiting for all of them could wait forever: two
        # steps that each got one of their two actors would hold the CPUs the other needs.
        pings = {a.simulations.remote(): a for a in actors}
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=ACTOR_START_TIMEOUT_S)
        live = [pings[r] for r in ready]
        if not live:  # the cluster is full: simulate here rather than wait
            for layer in todo:
                cache.simulate(layer)
            return len(todo)
        # Largest layers first, dealt round-robin, so the actors finish together.
        todo.sort(key=lambda l: -l.macs)
        shards = [[l.to_dict() for l in todo[i::len(live)]] for i in range(len(live))]
        ray.get([a.simulate.remote(sh) for a, sh in zip(live, shards)])
        return sum(ray.get([a.simulations.remote() for a in live]))
    finally:
        for a in actors:
            ray.kill(a)
