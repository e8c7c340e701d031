"""The S3NAS search (METHODS.md §8.2) and its random-search baseline with the same budget.

``single_path_search`` trains the supernet: ``warmup_epochs`` of equal-selection warm-up
(latency loss off, thresholds frozen), then the latency phase — dropout off, thresholds
trained, loss CE + λ·log(1 + m·ReLU(LAT − T)) with LAT the differentiable expected latency
from the simulator's table — and reads out the architecture whose indicators are on.

``random_search`` spends the same budget (image passes: ``search_epochs`` × training set) on
random architectures of the same space that meet the same search target by the same table,
training each for ``random_epochs_each`` and keeping the best on the validation split.
"""
from __future__ import annotations

import math
import random
import time
from typing import Callable

import torch
import torch.nn.functional as F

from .config import S3NASConfig
from .data import to_input
from .models import ChildNet
from .space import Arch, random_arch
from .supernet import Supernet, latency_loss
from .train import accuracy, autocast, batches, cosine_lr, predict, train_classifier

Progress = Callable[[int, int, dict], None] | None


def single_path_search(cfg: S3NASConfig, splits: dict, block_latency_us, fixed_latency_us: float,
                       arch_latency_us: Callable[[Arch], float], device: torch.device,
                       progress: Progress = None) -> tuple[Arch, dict]:
    sn = cfg.supernet
    torch.manual_seed(cfg.seed)
    model = Supernet(sn, block_latency_us, fixed_latency_us).to(device)
    opt_w = torch.optim.AdamW(model.weight_parameters(), lr=cfg.lr, weight_decay=1e-5)
    opt_t = torch.optim.Adam(model.threshold_parameters(), lr=cfg.threshold_lr)
    x, y = splits["train_x"], splits["train_y"]
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = cfg.search_epochs * steps_per_epoch
    target = cfg.search_target_us
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(cfg.search_epochs):
        warm = epoch < cfg.warmup_epochs
        model.train()
        ce_sum = lat_sum = n = 0.0
        for xb, yb in batches(x, y, cfg.batch_size, gen, shuffle=True):
            for g in opt_w.param_groups:
                g["lr"] = cosine_lr(step, total, cfg.lr, warmup=min(50, total // 10))
            inp = to_input(xb, sn.resolution).to(device)
            with autocast(device):
                logits = model(inp, dropout=warm)
            ce = F.cross_entropy(logits.float(), yb.to(device), label_smoothing=cfg.label_smoothing)
            loss = ce
            lat = model.expected_latency_us()
            if not warm:
                loss = loss + latency_loss(lat, target, cfg.latency_lambda, cfg.latency_m)
            opt_w.zero_grad(set_to_none=True)
            opt_t.zero_grad(set_to_none=True)
            loss.backward()
            if warm:  # S3NAS clips gradients to 10 in the first phase
                torch.nn.utils.clip_grad_norm_(model.weight_parameters(), 10.0)
            opt_w.step()
            if not warm:
                opt_t.step()
            ce_sum += ce.item()
            lat_sum += lat.item()
            n += 1
            step += 1
            if progress:
                progress(step, total, {"phase": "warmup" if warm else "latency", "ce": ce.item(), "lat_us": lat.item()})
        arch = model.readout()
        history.append({"epoch": epoch, "phase": "warmup" if warm else "latency", "ce": ce_sum / n,
                        "expected_latency_us": lat_sum / n, "readout_latency_us": arch_latency_us(arch),
                        "readout": arch.describe(), "seconds": time.perf_counter() - t0})
    arch = model.readout(name="s3nas")
    val_acc = accuracy(_predict_supernet(model, splits["val_x"], sn.resolution, device), splits["val_y"])
    return arch, {"history": history, "search_seconds": time.perf_counter() - t0, "supernet_val_acc": val_acc,
                  "target_us": target, "latency_us": arch_latency_us(arch), "steps": step,
                  "image_passes": step * cfg.batch_size}


@torch.no_grad()
def _predict_supernet(model: Supernet, x, resolution: int, device) -> torch.Tensor:
    model.eval()
    out = []
    for i in range(0, len(x), 256):
        out.append(model(to_input(x[i:i + 256], resolution).to(device)).argmax(1).cpu())
    return torch.cat(out)


def sample_within(cfg: S3NASConfig, arch_latency_us: Callable[[Arch], float], rng: random.Random, target_us: float,
                  tries: int = 20000) -> Arch:
    """A uniformly random architecture of the space meeting ``target_us`` (rejection sampling)."""
    best = None
    for _ in range(tries):
        a = random_arch(cfg.supernet, rng)
        lat = arch_latency_us(a)
        if lat <= target_us:
            return a
        if best is None or lat < best[0]:
            best = (lat, a)
    return best[1]


def random_search(cfg: S3NASConfig, splits: dict, arch_latency_us: Callable[[Arch], float], device: torch.device,
                  progress: Progress = None) -> tuple[Arch, dict]:
    rng = random.Random(cfg.seed + 1)
    n_cand = max(2, cfg.search_epochs // cfg.random_epochs_each)
    t0 = time.perf_counter()
    cands = []
    for i in range(n_cand):
        arch = sample_within(cfg, arch_latency_us, rng, cfg.search_target_us)
        arch.name = f"random-{i}"
        torch.manual_seed(cfg.seed + 100 + i)
        model = ChildNet(arch)
        train_classifier(model, splits["train_x"], splits["train_y"], resolution=arch.resolution,
                         epochs=cfg.random_epochs_each, lr=cfg.lr, batch_size=cfg.batch_size,
                         label_smoothing=cfg.label_smoothing, device=device, seed=cfg.seed + i)
        acc = accuracy(predict(model, splits["val_x"], resolution=arch.resolution, device=device), splits["val_y"])
        cands.append({"arch": arch.to_dict(), "val_acc": acc, "latency_us": arch_latency_us(arch),
                      "describe": arch.describe()})
        if progress:
            progress(i + 1, n_cand, {"val_acc": acc})
    best = max(cands, key=lambda c: c["val_acc"])
    arch = Arch.from_dict(best["arch"])
    arch.name = "random_search"
    return arch, {"candidates": cands, "search_seconds": time.perf_counter() - t0,
                  "image_passes": n_cand * cfg.random_epochs_each * len(splits["train_x"]),
                  "target_us": cfg.search_target_us, "latency_us": best["latency_us"]}
