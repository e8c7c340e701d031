"""STUN's expert-behaviour profiling sweep on a pool of Ray actors that each hold one copy of the MoE.

The sweep (router logits → co-activation counts a_ij, :mod:`tasks.stun.profiling`) is
data-parallel: the calibration set is cut into shards of whole batches
(:func:`~tasks.stun.profiling.shard_calibration`), one actor per GPU — or a few single-threaded
ones on a CPU node — runs them through its model, and the per-shard profiles are summed.
:func:`profile_calibration` runs the shards on :func:`workers.pool.run_pool`, so an actor that
dies is replaced wherever the cluster has room and its shard is run again; each finished shard
is recorded with its files' sizes and hashes (:class:`~tasks.common.steps.ResumableStep`), so a
rerun after a crash skips the shards that are intact and redoes the rest.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import ray
import torch

from tasks.common.steps import ResumableStep
from tasks.stun.profiling import META_FILE, PROFILE_BATCH, TENSORS_FILE, RouterProfile, merge_profiles, shard_calibration

from .pool import run_pool


# The pool replaces a dead actor itself (on whatever node has room): no in-place restarts.
@ray.remote(max_restarts=0)
class RouterProfiler:
    """One MoE model, loaded on the first shard (so a model that cannot load fails that job with
    its own error, once, instead of killing actor after actor at construction)."""

    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 1):
        self.model_dir, self.threads = model_dir, threads
        self.device_spec = device
        self.model: Any = None

    def _load(self) -> None:
        from tasks.common.devices import compute_dtype, pick_device
        from tasks.stun.adapters import check_model_folder
        from tasks.stun.checkpoint import load_checkpoint

        # A folder damaged since the flow checked it fails here with that check's one-line reason.
        check_model_folder(self.model_dir)
        torch.set_num_threads(max(1, self.threads))
        self.device = pick_device(self.device_spec)
        self.model, _ = load_checkpoint(self.model_dir, device=self.device, dtype=compute_dtype(self.device))

    def profile_shard(self, ids: torch.Tensor, batch_size: int, pair_k: int, out_path: str) -> str:
        """Profile ``ids`` [N, T] in batches and write the shard's profile atomically (a rerun of
        the same shard overwrites it with the same counts)."""
        from tasks.stun.profiling import profile_router

        if self.model is None:
            self._load()
        batches = [ids[i : i + batch_size].to(self.device) for i in range(0, len(ids), batch_size)]
        prof = profile_router(self.model, batches, pair_k=pair_k)
        prof.save(Path(out_path))  # a folder renamed into place
        return out_path


def profile_calibration(
    model_dir: Path | str,
    ids: torch.Tensor,  # [N, T] calibration token ids
    shards_dir: ResumableStep,
    *,
    workers: int,
    num_gpus: float = 0,
    threads: int = 1,
    pair_k: int = 2,
    batch_size: int = PROFILE_BATCH,
    on_done: Callable[[str], None] | None = None,
) -> tuple[RouterProfile, dict[str, Any]]:
    """Profile the calibration set over ``workers`` actors; return the summed profile and stats.

    ``shards_dir`` is the claimed scratch folder of this profile's key: a shard recorded there
    intact is reused, anything else is (re)computed. Stats: ``workers`` (actors started),
    ``shards``, ``shards_reused``, ``workers_replaced``, ``failures``, ``forward_passes``,
    ``tokens``, ``seconds``.
    """
    t0 = time.perf_counter()
    shards = shard_calibration(ids, workers, batch_size)
    todo = {name: rows for name, rows in shards.items() if not shards_dir.done(name)}
    device = "cuda" if num_gpus else "cpu"

    def start() -> Any:
        return RouterProfiler.options(num_cpus=threads, num_gpus=num_gpus).remote(str(model_dir), device, threads)

    def finished(name: str, _path: str) -> None:
        shards_dir.record(name, [f"{name}/{TENSORS_FILE}", f"{name}/{META_FILE}"])
        if on_done is not None:
            on_done(name)

    pool = run_pool(start, todo,
                    lambda actor, name, rows: actor.profile_shard.remote(rows, batch_size, pair_k,
                                                                         str(shards_dir.out / name)),
                    size=workers, on_done=finished)
    total = merge_profiles(shards_dir.out / name for name in shards)
    return total, {
        "workers": len(pool.per_slot),
        "shards": len(shards),
        "shards_reused": len(shards) - len(todo),
        "workers_replaced": pool.replaced,
        "failures": pool.failures,
        "forward_passes": total.forward_passes,
        "tokens": total.tokens,
        "seconds": time.perf_counter() - t0,
    }
