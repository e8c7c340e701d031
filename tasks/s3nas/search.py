"""The S3NAS search (METHODS.md §8.2) and its random-search baseline with the same budget.

:class:`SupernetSearchRecipe` is the supernet training as a recipe on the shared engine
(:mod:`tasks.common.training`), so the search checkpoints every epoch and resumes after a kill:
``warmup_epochs`` of equal-selection warm-up (latency loss off, thresholds frozen, gradients
clipped to 10), then the latency phase — dropout off, thresholds trained, loss
CE + λ·log(1 + m·ReLU(LAT − T)) with LAT the differentiable expected latency from the
simulator's table. One AdamW holds two parameter groups: the weights (cosine-decayed ``lr``,
weight decay 1e-5) and the thresholds (constant ``threshold_lr``, no decay — Adam). In the
warm-up the thresholds get no gradient at all, so their Adam moments start with the latency
phase. :func:`single_path_search` runs it and reads out the architecture whose indicators are on.

:func:`random_search` spends the same budget (image passes: ``search_epochs`` × training set)
on random architectures of the same space that meet the same search target by the same table,
training each for ``random_epochs_each`` (a :class:`~tasks.s3nas.train.ClassifierRecipe`, each
resumable) and keeping the best on the validation split.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.common.training import load_weights, train

from .config import S3NASConfig
from .data import to_input
from .space import Arch, BlockSlot, Branch, random_arch
from .supernet import Supernet, latency_loss
from .train import (CLIP_NORM, ClassifierRecipe, EpochBatches, accuracy, cosine_lr, predict, step_seed,
                    train_classifier, training_config, warmup_steps)

Progress = Callable[[int, int, dict], None] | None


class SupernetSearchRecipe:
    """Single-path supernet training at the search target, in two phases."""

    def __init__(self, cfg: S3NASConfig, x: Tensor, y: Tensor,
                 block_latency_us: Callable[[BlockSlot, tuple[Branch, ...]], float], fixed_latency_us: float,
                 arch_latency_us: Callable[[Arch], float]):
        self.cfg = cfg
        self.block_latency_us, self.fixed_latency_us, self.arch_latency_us = block_latency_us, fixed_latency_us, arch_latency_us
        self.data = EpochBatches(x, y, cfg.batch_size, cfg.seed)
        self.micro_batch = cfg.batch_size
        self.steps = cfg.search_epochs * self.data.per_epoch
        self.warmup = warmup_steps(self.steps)
        self.target_us = cfg.search_target_us

    def warm(self, step: int) -> bool:
        """Equal-selection warm-up (True) or latency phase (False) at ``step``."""
        return step // self.data.per_epoch < self.cfg.warmup_epochs

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.cfg.seed)
        return {"supernet": Supernet(self.cfg.supernet, self.block_latency_us, self.fixed_latency_us)}

    def optimizer(self, name: str, module: Supernet) -> torch.optim.Optimizer:
        groups = [{"params": module.weight_parameters(), "lr": self.cfg.lr, "weight_decay": 1e-5},
                  {"params": module.threshold_parameters(), "lr": self.cfg.threshold_lr, "weight_decay": 0.0}]
        if self.cfg.threshold_optimizer == "sgd":
            groups[1]["sgd"] = True
            return AdamWWithSGDGroups(groups)
        return torch.optim.AdamW(groups)

    def schedule(self, name: str, optimizer: torch.optim.Optimizer, step: int) -> None:
        optimizer.param_groups[0]["lr"] = cosine_lr(step, self.steps, self.cfg.lr, self.warmup)
        optimizer.param_groups[1]["lr"] = self.cfg.threshold_lr

    def grad_clip(self, name: str, step: int) -> float:
        return CLIP_NORM if self.warm(step) else 0.0  # S3NAS clips in the first phase only

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, Tensor]:
        xb, yb = self.data(step)
        return {"x": to_input(xb, self.cfg.supernet.resolution).to(device), "y": yb.to(device)}

    def loss(self, name: str, models: dict, batch: dict[str, Tensor], cache: dict, step: int):
        model: Supernet = models["supernet"]
        warm = self.warm(step)
        model.train()
        for p in model.threshold_parameters():  # frozen in the warm-up: no gradient, no Adam moments
            p.requires_grad_(not warm)
        torch.manual_seed(step_seed(self.cfg.seed, step))  # this step's equal-selection draws
        logits = model(batch["x"], dropout=warm)
        ce = F.cross_entropy(logits.float(), batch["y"], label_smoothing=self.cfg.label_smoothing)
        lat = model.expected_latency_us()
        loss = ce if warm else ce + latency_loss(lat, self.target_us, self.cfg.latency_lambda, self.cfg.latency_m)
        info = {"ce": ce.item(), "lat_us": lat.item(), "warmup": float(warm)}
        if (step + 1) % self.data.per_epoch == 0:  # end of an epoch: where the readout stands
            info["readout_latency_us"] = self.arch_latency_us(model.readout())
        return loss, info


class AdamWWithSGDGroups(torch.optim.Optimizer):
    """AdamW on every group, except plain SGD on groups marked ``sgd=True`` (the thresholds).

    Why (issue 14's diagnosis): Adam divides each parameter's step by its own gradient scale, so
    every threshold moves by about ``lr`` per step whatever the latency its indicator gates —
    the table's cost differences only set the sign. All thresholds then cross their (similar)
    weight norms together: one epoch after the latency phase starts every block lost the same
    groups and the net fell far under the search target. With SGD the step is proportional to
    the gradient, i.e. to the latency (and accuracy) at stake, so expensive choices go first.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(groups, dict(lr=1e-3, weight_decay=0.0, sgd=False, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if g["sgd"]:
                    p.add_(p.grad, alpha=-g["lr"])
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.zeros(())
                    st["exp_avg"], st["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                t, (b1, b2) = float(st["step"]), g["betas"]
                p.mul_(1 - g["lr"] * g["weight_decay"])
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(g["eps"])
                p.addcdiv_(st["exp_avg"], denom, value=-g["lr"] / (1 - b1 ** t))


def indicator_summary(model: Supernet) -> list[dict]:
    """Per block and branch: the score (RMS − threshold) of every ring and group indicator, for
    the diagnosis of the threshold training (a positive score = on)."""
    out = []
    for i, b in enumerate(model.blocks):
        for j, br in enumerate(b.branches):
            out.append({"block": i, "branch": j, "ring_scores": [round(float(x), 4) for x in br.ring_scores().detach()],
                        "group_scores": [round(float(x), 4) for x in br.group_scores().detach()],
                        "ring_t": [round(float(x), 4) for x in br.ring_t.detach()], "group_t": [round(float(x), 4) for x in br.group_t.detach()]})
    return out


def single_path_search(recipe: SupernetSearchRecipe, splits: dict, ckpt_dir: Path | str, device: torch.device,
                       progress: Progress = None) -> tuple[Arch, dict]:
    """Train (or resume) the supernet; the architecture read out of it and the search record."""
    t0 = time.perf_counter()
    res = train(recipe, training_config(device, recipe.data.per_epoch), ckpt_dir, progress=progress)
    model: Supernet = recipe.build()["supernet"]
    model.load_state_dict(load_weights(res.checkpoint, "supernet"))
    model.to(device)
    arch = model.readout(name="s3nas")
    val_acc = accuracy(_predict_supernet(model, splits["val_x"], recipe.cfg.supernet.resolution, device), splits["val_y"])
    history = [{"epoch": h["step"] // recipe.data.per_epoch - 1, "step": h["step"],
                "phase": "warmup" if h.get("supernet/warmup") else "latency", "ce": h.get("supernet/ce"),
                "expected_latency_us": h.get("supernet/lat_us"),
                "readout_latency_us": h.get("supernet/readout_latency_us")}
               for h in res.history if h["step"] % recipe.data.per_epoch == 0]
    return arch, {"history": history, "search_seconds": time.perf_counter() - t0, "supernet_val_acc": val_acc,
                  "target_us": recipe.target_us, "latency_us": recipe.arch_latency_us(arch), "steps": res.steps,
                  "resumed_from": res.start_step, "image_passes": res.steps * recipe.cfg.batch_size,
                  "indicators": indicator_summary(model), "distinct_blocks": len({b.branches for b in arch.active_blocks()}),
                  "train_history": res.history}


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


def random_candidates(cfg: S3NASConfig, arch_latency_us: Callable[[Arch], float]) -> list[Arch]:
    """The random-search candidates: as many as the search budget buys, each within the target."""
    rng = random.Random(cfg.seed + 1)
    archs = []
    for i in range(max(2, cfg.search_epochs // cfg.random_epochs_each)):
        a = sample_within(cfg, arch_latency_us, rng, cfg.search_target_us)
        a.name = f"random-{i}"
        archs.append(a)
    return archs


def random_search(cfg: S3NASConfig, splits: dict, arch_latency_us: Callable[[Arch], float], ckpt_root: Path | str,
                  device: torch.device, progress: Progress = None) -> tuple[Arch, dict]:
    """Train every candidate (resuming any a killed run left), keep the best on validation."""
    t0 = time.perf_counter()
    archs = random_candidates(cfg, arch_latency_us)
    cands = []
    for i, arch in enumerate(archs):
        recipe = ClassifierRecipe(arch, splits["train_x"], splits["train_y"], epochs=cfg.random_epochs_each, lr=cfg.lr,
                                  batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing, seed=cfg.seed + i,
                                  init_seed=cfg.seed + 100 + i)
        model, _ = train_classifier(recipe, Path(ckpt_root) / arch.name, device)
        acc = accuracy(predict(model, splits["val_x"], resolution=arch.resolution, device=device), splits["val_y"])
        cands.append({"arch": arch.to_dict(), "val_acc": acc, "latency_us": arch_latency_us(arch),
                      "describe": arch.describe()})
        if progress:
            progress(i + 1, len(archs), {"val_acc": acc})
    best = max(cands, key=lambda c: c["val_acc"])
    arch = Arch.from_dict(best["arch"])
    arch.name = "random_search"
    return arch, {"candidates": cands, "search_seconds": time.perf_counter() - t0,
                  "image_passes": len(archs) * cfg.random_epochs_each * len(splits["train_x"]),
                  "target_us": cfg.search_target_us, "latency_us": best["latency_us"]}
