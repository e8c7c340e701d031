"""The profiling pool (workers/profiler.py): sharded counts equal one in-process sweep exactly, a
killed profiler is replaced and its shard redone, a rerun reuses only intact shards, and a model
that cannot load fails the sweep once with its own error."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, MixtralConfig

    from tasks.stun.tokenizer import train_bpe

    d = tmp_path_factory.mktemp("moe")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(MixtralConfig(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2, max_position_embeddings=64))
    with torch.no_grad():  # routers with spread, so the counts are not near-uniform
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 1.0)
    model.save_pretrained(d)
    train_bpe(["to be or not to be"] * 20, 300).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randint(0, 300, (44, 16), generator=torch.Generator().manual_seed(1))  # 6 batches of 8 (last: 4)


@pytest.fixture(scope="module")
def reference(tiny_moe, calib):
    """One sweep in this process over the same batches of 8."""
    from tasks.stun.checkpoint import load_checkpoint
    from tasks.stun.profiling import profile_router

    model, _ = load_checkpoint(tiny_moe)
    return profile_router(model, [calib[i : i + 8] for i in range(0, len(calib), 8)])


def _same(a, b) -> None:
    assert (a.tokens, a.forward_passes) == (b.tokens, b.forward_passes)
    for x, y in zip(a.coactivation + a.frequency, b.coactivation + b.frequency):
        assert torch.equal(x, y)


def _claim(tmp_path: Path, key: str = "k"):
    from tasks.common.steps import ResumableStep

    return ResumableStep(tmp_path / "shards", key).claim()


def test_sharded_counts_equal_one_sweep_in_process(ray_two_cpus, tiny_moe, calib, reference, tmp_path):
    from workers.profiler import profile_calibration

    prof, stats = profile_calibration(tiny_moe, calib, _claim(tmp_path), workers=2)
    _same(prof, reference)
    assert reference.coactivation[0].sum() > 0
    assert stats["workers"] == 2 and stats["shards"] == 2 and stats["forward_passes"] == 6
    assert stats["tokens"] == calib.numel() and stats["workers_replaced"] == 0
    # another worker count cuts other shards of the same batches: the same counts
    prof3, stats3 = profile_calibration(tiny_moe, calib, _claim(tmp_path, "k3"), workers=3)
    _same(prof3, reference)
    assert stats3["shards"] == 3


def test_a_killed_profiler_is_replaced_and_its_shard_redone(ray_two_cpus, tiny_moe, calib, reference, tmp_path):
    import psutil

    from workers.profiler import profile_calibration

    killed: list[int] = []

    def kill_one(_name: str) -> None:
        if killed:
            return
        for p in psutil.process_iter(["cmdline"]):
            if any("RouterProfiler" in part for part in (p.info["cmdline"] or [])):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
                return

    prof, stats = profile_calibration(tiny_moe, calib, _claim(tmp_path), workers=6, on_done=kill_one)
    assert killed and stats["workers_replaced"] >= 1 and stats["failures"], stats
    _same(prof, reference)


def test_a_rerun_reuses_intact_shards_and_redoes_a_damaged_one(ray_two_cpus, tiny_moe, calib, reference, tmp_path):
    from tasks.stun.profiling import TENSORS_FILE
    from workers.profiler import profile_calibration

    shards = _claim(tmp_path)
    profile_calibration(tiny_moe, calib, shards, workers=3)
    victim = sorted(shards.out.glob(f"batches-*/{TENSORS_FILE}"))[1]
    victim.write_bytes(victim.read_bytes()[:100])  # truncated after it was recorded
    prof, stats = profile_calibration(tiny_moe, calib, _claim(tmp_path), workers=3)
    assert stats["shards"] == 3 and stats["shards_reused"] == 2
    _same(prof, reference)


def test_a_model_that_cannot_load_fails_the_sweep_once_with_its_own_error(ray_two_cpus, tiny_moe, calib, tmp_path):
    import shutil

    from tasks.stun.adapters import MoEModelError
    from workers.pool import PoolError
    from workers.profiler import profile_calibration

    broken = tmp_path / "broken"
    shutil.copytree(tiny_moe, broken)
    (broken / "model.safetensors").unlink()
    t0 = time.perf_counter()
    with pytest.raises(MoEModelError, match="no safetensors weights") as e:
        profile_calibration(broken, calib, _claim(tmp_path), workers=2)
    assert not isinstance(e.value, PoolError)
    assert time.perf_counter() - t0 < 60
