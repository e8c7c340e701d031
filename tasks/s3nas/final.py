"""The last stage of S3NAS (METHODS.md §8.3): evaluate a finished net, and its selective SE removal.

:func:`evaluate_net` measures what the report compares at equal latency: test accuracy (with the
per-image correctness vector, for the paired McNemar tests), simulated and estimated latency,
MACs and parameters. :func:`selective_se_removal` is S3NAS's "rmSE": record every SE block's
excitation vectors on the validation images, score each block by how much its excitation varies
across images (mean over channels of the standard deviation), and drop SE from the
``fraction`` of blocks whose excitation is the least input-dependent — they act as a fixed
channel scaling and cost latency for little. The remaining weights carry over unchanged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .models import ChildNet, without_se
from .scaling import excitation_scores, remove_se
from .space import Arch, network_macs
from .supernet import count_params
from .train import accuracy, predict


def evaluate_net(model: ChildNet, arch: Arch, test_x: Tensor, test_y: Tensor, device: torch.device, *,
                 sim_us: float, est_us: float, train_seconds: float) -> dict:
    pred = predict(model, test_x, resolution=arch.resolution, device=device)
    correct = pred == test_y
    return {"test_acc": accuracy(pred, test_y), "correct": int(correct.sum()), "n_test": len(correct),
            "correct_mask": correct.int().tolist(), "sim_latency_us": sim_us, "est_latency_us": est_us,
            "macs": network_macs(arch), "params": count_params(model), "train_seconds": train_seconds,
            "arch_describe": arch.describe(), "arch": arch.to_dict()}


@torch.no_grad()
def record_excitations(model: ChildNet, x: Tensor, resolution: int, device: torch.device) -> list:
    """Per SE block (in model order): its excitation vectors [N, C] on images ``x``."""
    se = model.se_modules()
    for _, m in se:
        m.recorded = []
    try:
        predict(model, x, resolution=resolution, device=device)
        return [torch.cat(m.recorded).numpy() for _, m in se]
    finally:
        for _, m in se:
            m.recorded = None


def selective_se_removal(model: ChildNet, arch: Arch, val_x: Tensor, fraction: float,
                         device: torch.device) -> tuple[ChildNet, Arch, list[float], list[int]]:
    """(net without the dropped SEs, its arch, per-SE scores, dropped SE indices)."""
    scores = excitation_scores(record_excitations(model, val_x, arch.resolution, device))
    arch_rm, dropped = remove_se(arch, scores, fraction)
    return without_se(model.cpu(), arch_rm), arch_rm, scores, dropped
