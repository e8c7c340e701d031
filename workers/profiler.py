"""Ray actors that hold one copy of a MoE model and run calibration shards through it.

STUN's profiling sweep (router logits → co-activation counts) is data-parallel: the
calibration batches are sharded over these actors — one per GPU, or a few on a CPU node — and
the per-shard :class:`~tasks.stun.profiling.RouterProfile` files are summed. An actor keeps its
model between shards; a crashed actor is restarted by Ray and its shard redone, and a shard
whose file already exists is never recomputed.
"""
from __future__ import annotations

from pathlib import Path

import ray
import torch


@ray.remote(max_restarts=2, max_task_retries=2)
class RouterProfiler:
    def __init__(self, model_dir: str, device: str = "cpu", threads: int = 1):
        from tasks.common.devices import compute_dtype, pick_device
        from tasks.stun.checkpoint import load_checkpoint

        torch.set_num_threads(max(1, threads))
        self.device = pick_device(device)
        self.model, _ = load_checkpoint(model_dir, device=self.device, dtype=compute_dtype(self.device))

    def profile_shard(self, ids: torch.Tensor, batch_size: int, pair_k: int, out_path: str) -> str:
        """Profile ``ids`` [N, T] in batches and write the shard's profile atomically."""
        from tasks.stun.profiling import META_FILE, profile_router

        out = Path(out_path)
        if (out / META_FILE).is_file():  # finished before a crash: never redo a shard
            return out_path
        batches = [ids[i : i + batch_size].to(self.device) for i in range(0, len(ids), batch_size)]
        prof = profile_router(self.model, batches, pair_k=pair_k)
        prof.save(out)  # atomic: a folder renamed into place
        return out_path

    def device_name(self) -> str:
        return str(self.device)
