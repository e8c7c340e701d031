"""s3nas's supernet on CUDA against the CPU: forward and backward, weights and thresholds.

The default supernet (``SupernetConfig()``), the same weights, a batch of real Fashion-MNIST
images, training mode (batch statistics, straight-through indicators). Tolerances: in fp32 (TF32
off) logits, the loss, the expected latency and every gradient agree to rtol 1e-3 / atol 1e-4
(kernel order only); under the bf16 autocast the GPU trains with (``tasks.s3nas.train.autocast``),
logits agree to 5 % of their scale and the gradients keep cosine ≥ 0.98 with the fp32 CPU ones.
"""
from __future__ import annotations

import copy
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _batch(n: int = 32, resolution: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz"
    if not imgs.is_file():
        pytest.skip(f"{imgs} missing (make install adds Debian's dataset-fashion-mnist)")
    with gzip.open(imgs, "rb") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(labels, "rb") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    x = torch.from_numpy(x.copy()).float() / 255.0
    x = F.interpolate((x - 0.286) / 0.353, size=resolution, mode="bilinear", align_corners=False)
    return x, torch.from_numpy(y.astype(np.int64))


def _net():
    from tasks.s3nas.config import SupernetConfig
    from tasks.s3nas.supernet import Supernet

    torch.manual_seed(0)
    sn = SupernetConfig()
    # a latency table stand-in: bigger kernels and expansions cost more (what matters is that
    # the expected latency and its gradient are computed the same way on both devices)
    return Supernet(sn, lambda slot, choice: float(sum(b.kernel * b.expansion for b in choice)), fixed_latency_us=5.0)


def _run(net, x, y, device, bf16: bool = False):
    from tasks.s3nas.supernet import latency_loss

    net = net.to(device).train()
    net.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = net(x.to(device))
    lat = net.expected_latency_us()
    loss = F.cross_entropy(logits.float(), y.to(device)) + latency_loss(lat, 20.0, 0.1, 1.0)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in net.named_parameters() if p.grad is not None}
    return logits.detach().float().cpu(), float(loss.detach()), float(lat.detach()), grads


def test_supernet_forward_backward_on_the_gpu_equals_the_cpu(gpu):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x, y = _batch()
    net = _net()
    ref = _run(copy.deepcopy(net), x, y, torch.device("cpu"))
    got = _run(copy.deepcopy(net), x, y, gpu)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=1e-4)
    assert got[1] == pytest.approx(ref[1], rel=1e-4) and got[2] == pytest.approx(ref[2], rel=1e-6)
    assert got[3].keys() == ref[3].keys()
    thresholds = [n for n in ref[3] if n.endswith("ring_t") or n.endswith("group_t")]
    assert thresholds and any(ref[3][n].abs().sum() > 0 for n in thresholds)  # the search signal exists
    for n in ref[3]:
        torch.testing.assert_close(got[3][n], ref[3][n], rtol=1e-3, atol=1e-4, msg=n)


def test_supernet_under_bf16_autocast_on_the_gpu_stays_close_to_fp32_cpu(gpu, needs_real_gpu):
    x, y = _batch()
    net = _net()
    ref = _run(copy.deepcopy(net), x, y, torch.device("cpu"))
    got = _run(copy.deepcopy(net), x, y, gpu, bf16=True)
    assert float((got[0] - ref[0]).abs().max()) <= 0.05 * float(ref[0].abs().max())
    g_ref = torch.cat([ref[3][n].reshape(-1) for n in sorted(ref[3])])
    g_got = torch.cat([got[3][n].reshape(-1) for n in sorted(ref[3])])
    assert float(F.cosine_similarity(g_got, g_ref, dim=0)) >= 0.98
