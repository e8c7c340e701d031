"""Training and evaluation loops shared by the search, the random-search candidates and the
final nets: AdamW with cosine decay, label-smoothed cross-entropy, bf16 autocast on CUDA."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import to_input

Progress = Callable[[int, int, dict], None] | None


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(x: Tensor, y: Tensor, batch_size: int, gen: torch.Generator | None, shuffle: bool):
    idx = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        j = idx[i:i + batch_size]
        yield x[j], y[j]


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_classifier(model: nn.Module, x: Tensor, y: Tensor, *, resolution: int, epochs: int, lr: float,
                     batch_size: int, label_smoothing: float, device: torch.device, seed: int,
                     progress: Progress = None) -> dict:
    """Train ``model`` on uint8 images ``x`` [N, 28, 28] resized to ``resolution``."""
    model.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    step, t0, losses = 0, time.perf_counter(), []
    for epoch in range(epochs):
        for xb, yb in batches(x, y, batch_size, gen, shuffle=True):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, warmup=min(50, total // 10))
            inp = to_input(xb, resolution).to(device)
            with autocast(device):
                loss = F.cross_entropy(model(inp).float(), yb.to(device), label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            losses.append(float(loss))
            step += 1
            if progress:
                progress(step, total, {"loss": float(loss), "epoch": epoch})
    return {"train_seconds": time.perf_counter() - t0, "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
            "steps": step}


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, *, resolution: int, device: torch.device, batch_size: int = 256) -> Tensor:
    model.to(device).eval()
    out = []
    for i in range(0, len(x), batch_size):
        with autocast(device):
            out.append(model(to_input(x[i:i + batch_size], resolution).to(device)).float().argmax(1).cpu())
    return torch.cat(out)


def accuracy(pred: Tensor, y: Tensor) -> float:
    return float((pred == y).float().mean())
