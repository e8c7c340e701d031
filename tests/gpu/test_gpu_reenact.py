"""reenact's training path on one GPU: DeepSpeed ZeRO-2 in bf16 (the engine's ``backend="auto"``
choice for one GPU) runs the generator + discriminator recipe, checkpoints, and resumes; its
first step agrees with the plain-torch fp32 CPU reference on the same batch.

Tolerances: the step-1 losses (same initial weights, same batch) agree within 5 % relative
(bf16 activations); the first weight update, Δ = W₁ − W₀ of every tensor taken together, has
cosine ≥ 0.8 with the CPU's (Adam's first step is ≈ −lr·sign(g), so only gradients near 0 may
flip sign); a run resumed from the step-1 checkpoint ends within 0.5·lr (mean |Δ| ≤ 0.05·lr) of
the unbroken two-step run (GPU atomics make it not bit-exact).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
LR = 2e-3


class FashionPairs:
    """Self-reenactment-shaped pairs from real images: a Fashion-MNIST item (source) and the same
    item shifted (driving frame), with a pose vector that encodes the shift."""

    def __init__(self, n: int = 64, size: int = 32):
        if not FASHION.is_file():
            pytest.skip(f"{FASHION} missing (make install adds Debian's dataset-fashion-mnist)")
        with gzip.open(FASHION, "rb") as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        img = torch.nn.functional.interpolate(torch.from_numpy(raw.copy()).float()[:, None] / 255.0, size=size,
                                              mode="bilinear", align_corners=False)
        self.images = img.repeat(1, 3, 1, 1)  # [n, 3, S, S]

    def sample(self, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        from tasks.reenact.generator import POSE_DIM

        idx = torch.randint(0, len(self.images), (n,), generator=g)
        shift = torch.randint(-3, 4, (n, 2), generator=g)
        src = self.images[idx]
        tgt = torch.stack([torch.roll(s, (int(dy), int(dx)), (1, 2)) for s, (dy, dx) in zip(src, shift)])
        pose = torch.zeros(n, POSE_DIM)
        pose[:, :2] = shift.float() / 3.0
        return {"source": src, "target": tgt, "pose": pose}


def _recipe(steps: int):
    from tasks.reenact.config import GeneratorConfig
    from tasks.reenact.generator import GeneratorRecipe

    cfg = GeneratorConfig(image_size=32, steps=steps, batch=4, lr=LR, channels=8, descriptor=16, depth=2, w_warp=1.0,
                          w_final=1.0, w_adv=0.1, w_perceptual=0.0, edit_start=0, adv_start=0, warp_pool=1)
    return GeneratorRecipe(FashionPairs(), cfg, seed=0)


@pytest.fixture
def process_group():
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[k].float().reshape(-1) for k in sorted(weights)])


def test_deepspeed_zero2_bf16_step_on_the_gpu_matches_the_cpu_and_resumes(gpu, tmp_path, process_group):
    pytest.importorskip("deepspeed")
    from tasks.common.training import TrainingConfig, load_weights, train

    w0 = {name: {k: v.detach().float().clone() for k, v in m.state_dict().items()} for name, m in _recipe(1).build().items()}

    cpu = train(_recipe(1), TrainingConfig(backend="torch", precision="fp32", checkpoint_every=1).on("cpu"),
                tmp_path / "cpu")
    dev_cfg = TrainingConfig(backend="auto" if gpu.type == "cuda" else "deepspeed", precision="auto" if gpu.type == "cuda"
                             else "bf16", zero_stage=2, checkpoint_every=1, log_every=1).on(gpu.type)
    one = train(_recipe(1), dev_cfg, tmp_path / "gpu")
    assert one.backend == "deepspeed" and one.precision == "bf16", (one.backend, one.precision)
    assert one.device.startswith(gpu.type)

    # step 1: same weights, same batch → same losses within bf16 tolerance
    for key, ref in cpu.history[0].items():
        if key == "step":
            continue
        assert abs(one.history[0][key] - ref) <= 0.05 * abs(ref) + 1e-4, (key, one.history[0][key], ref)
    # the first update points the same way (fp32 master weights are what the checkpoint holds)
    for name in w0:
        d_cpu = _flat(load_weights(cpu.checkpoint, name)) - _flat(w0[name])
        d_gpu = _flat(load_weights(one.checkpoint, name)) - _flat(w0[name])
        assert d_gpu.abs().sum() > 0, f"{name} did not move"
        cos = float(torch.nn.functional.cosine_similarity(d_cpu, d_gpu, dim=0))
        assert cos >= 0.8, (name, cos)

    # resume from the step-1 checkpoint vs an unbroken 2-step run, both on the GPU
    more = train(_recipe(2), dev_cfg, tmp_path / "gpu")
    assert more.start_step == 1 and more.history[-1]["step"] == 2
    unbroken = train(_recipe(2), dev_cfg, tmp_path / "gpu_unbroken")
    for name in w0:
        a, b = _flat(load_weights(more.checkpoint, name)), _flat(load_weights(unbroken.checkpoint, name))
        diff = (a - b).abs()
        assert float(diff.max()) <= 0.5 * LR and float(diff.mean()) <= 0.05 * LR, (name, float(diff.max()))
