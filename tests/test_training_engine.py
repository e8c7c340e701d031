"""The shared training engine: plain torch, DeepSpeed ZeRO-2 bf16 in one CPU process, resume after kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tasks.common.training import TrainingConfig, checkpoints, latest_checkpoint, load_weights, seeded_generator, train

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class TinyRecipe:
    """y = x·w* + noise-free target; a 'critic' learns the net's squared error from its output,
    so the engine's two-model ordering, freezing and the cache are exercised."""

    micro_batch = 16

    def __init__(self, steps: int = 40, seed: int = 0, sleep: float = 0.0):
        self.steps, self.seed, self.sleep = steps, seed, sleep
        self.w_true = torch.tensor([[1.5], [-2.0], [0.5], [0.25]])

    def build(self):
        torch.manual_seed(self.seed)
        return {"net": torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)),
                "critic": torch.nn.Linear(1, 1)}

    def optimizer(self, name, module):
        return torch.optim.Adam(module.parameters(), lr=3e-2 if name == "net" else 1e-2)

    def batch(self, step, rank, device):
        if self.sleep:
            time.sleep(self.sleep)
        g = seeded_generator(self.seed, step, rank)
        x = torch.randn(self.micro_batch, 4, generator=g)
        return {"x": x.to(device), "y": (x @ self.w_true).to(device)}

    def loss(self, name, models, batch, cache, step):
        if name == "net":
            pred = models["net"](batch["x"])
            cache["pred"] = pred.detach()
            loss = ((pred.float() - batch["y"].float()) ** 2).mean()
            return loss, {"mse": loss.item()}
        err = (cache["pred"].float() - batch["y"].float()) ** 2
        loss = ((models["critic"](cache["pred"]).float() - err) ** 2).mean()
        return loss, {"mse": loss.item()}


def test_torch_backend_learns_and_writes_safetensors_checkpoints(tmp_path):
    cfg = TrainingConfig(backend="torch", checkpoint_every=10, keep_checkpoints=2, log_every=5)
    res = train(TinyRecipe(steps=60), cfg, tmp_path / "ckpt")
    assert res.backend == "torch" and res.start_step == 0
    first, last = res.history[0]["net/mse"], res.history[-1]["net/mse"]
    assert last < 0.05 * first, (first, last)
    kept = checkpoints(tmp_path / "ckpt")
    assert [p.name for p in kept] == ["step_00000050", "step_00000060"]
    files = sorted(f.name for f in kept[-1].iterdir())
    assert files == ["meta.json", "model-critic.safetensors", "model-net.safetensors",
                     "optim-critic.safetensors", "optim-net.safetensors"]
    assert not list(kept[-1].glob("*.pt")) and not list(kept[-1].glob("*.bin"))
    # A finished run is not redone: rerunning returns at once from the final checkpoint.
    again = train(TinyRecipe(steps=60), cfg, tmp_path / "ckpt")
    assert again.start_step == 60 and again.wall_seconds == 0.0


_CHILD = """
import sys; sys.path.insert(0, {here!r}); sys.path.insert(0, {root!r})
from test_training_engine import TinyRecipe
from tasks.common.training import TrainingConfig, train
train(TinyRecipe(steps=60, sleep=0.05), TrainingConfig(backend="torch", checkpoint_every=5, log_every=5), {ckpt!r})
"""


def test_resume_after_a_real_kill_continues_from_the_saved_step_and_matches_an_unbroken_run(tmp_path):
    ckpt = tmp_path / "killed"
    code = _CHILD.format(here=str(HERE), root=str(ROOT), ckpt=str(ckpt))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            latest = latest_checkpoint(ckpt)
            if latest is not None and int(latest.name.split("_")[1]) >= 20:
                break
            assert proc.poll() is None, "child exited before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = int(latest_checkpoint(ckpt).name.split("_")[1])
    assert 20 <= saved < 60

    cfg = TrainingConfig(backend="torch", checkpoint_every=5, log_every=5)
    resumed = train(TinyRecipe(steps=60), cfg, ckpt)
    assert resumed.start_step == saved
    unbroken = train(TinyRecipe(steps=60), cfg, tmp_path / "unbroken")
    for name in ("net", "critic"):
        a, b = load_weights(resumed.checkpoint, name), load_weights(unbroken.checkpoint, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert [h["step"] for h in resumed.history] == [h["step"] for h in unbroken.history]


@pytest.fixture
def one_process_group():
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_deepspeed_zero2_bf16_runs_on_cpu_in_one_process_and_resumes(tmp_path, one_process_group, monkeypatch):
    pytest.importorskip("deepspeed")
    # No C++ op may be compiled: a fresh extensions folder must stay empty.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    cfg = TrainingConfig(backend="deepspeed", precision="bf16", zero_stage=2, checkpoint_every=15, log_every=5)
    t0 = time.time()
    res = train(TinyRecipe(steps=30), cfg, tmp_path / "ds")
    assert time.time() - t0 < 60
    assert res.backend == "deepspeed" and res.precision == "bf16" and res.device == "cpu"
    assert res.history[-1]["net/mse"] < 0.2 * res.history[0]["net/mse"]
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").rglob("*.so"))
    w = load_weights(res.checkpoint, "net")
    assert all(v.dtype == torch.float32 for v in w.values())
    # The fp32 master weights went into the checkpoint, not the bf16 working copy.
    assert any((v != v.to(torch.bfloat16).float()).any() for v in w.values())
    # Resume: a longer run continues from step 30 with the saved fp32 master weights, Adam
    # moments and step count, and ends exactly where an unbroken 40-step run ends.
    more = train(TinyRecipe(steps=40), cfg, tmp_path / "ds")
    assert more.start_step == 30 and more.history[-1]["step"] == 40
    unbroken = train(TinyRecipe(steps=40), cfg, tmp_path / "ds_unbroken")
    for name in ("net", "critic"):
        a, b = load_weights(more.checkpoint, name), load_weights(unbroken.checkpoint, name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
