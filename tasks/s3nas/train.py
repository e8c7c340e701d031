"""How every S3NAS classifier is trained (METHODS.md §8.3): a recipe on the shared engine.

The random-search candidates, the three scaled final nets and the rmSE fine-tuning all train a
:class:`~tasks.s3nas.models.ChildNet` the same way — AdamW (weight decay 1e-4) with a linear
warm-up into cosine decay, label-smoothed cross-entropy on Fashion-MNIST resized to the net's
resolution, gradients clipped to norm 10, bf16 autocast on CUDA — so :class:`ClassifierRecipe`
states that once and :func:`tasks.common.training.train` runs it: checkpoints every epoch,
resume after a kill. The batch of a step and the dropout noise of a step are pure functions of
(seed, step), so a resumed run sees exactly what the unbroken one did.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.common.training import TrainingConfig, load_weights, seeded_generator, train

from .data import to_input
from .models import ChildNet
from .space import Arch

Progress = Callable[[int, int, dict], None] | None

#: gradient-norm clip of every classifier run (S3NAS clips to 10)
CLIP_NORM = 10.0


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def warmup_steps(total: int) -> int:
    """Linear warm-up length: 10 % of the run, at most 50 steps."""
    return min(50, total // 10)


class EpochBatches:
    """Shuffled mini-batches, epoch after epoch, as a pure function of (seed, step): the order
    of an epoch is a permutation drawn from a generator seeded by (seed, epoch)."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.per_epoch = math.ceil(len(x) / batch_size)
        self._perm: tuple[int, Tensor] | None = None

    def indices(self, step: int) -> Tensor:
        epoch, i = divmod(step, self.per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, torch.randperm(len(self.x), generator=seeded_generator(self.seed, epoch)))
        return self._perm[1][i * self.batch_size:(i + 1) * self.batch_size]

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        j = self.indices(step)
        return self.x[j], self.y[j]


def step_seed(seed: int, step: int) -> int:
    """Seed of the global RNG for one step (dropout, equal-selection sampling)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


class ClassifierRecipe:
    """Train one ChildNet on uint8 images ``x`` [N, 28, 28] resized to the arch's resolution."""

    micro_batch: int

    def __init__(self, arch: Arch, x: Tensor, y: Tensor, *, epochs: int, lr: float, batch_size: int,
                 label_smoothing: float, seed: int, init_seed: int | None = None,
                 init_state: dict[str, Tensor] | None = None):
        self.arch, self.lr, self.label_smoothing, self.seed = arch, lr, label_smoothing, seed
        self.init_seed = seed if init_seed is None else init_seed
        self.init_state = init_state  # start from these weights (fine-tuning) instead of a fresh init
        self.data = EpochBatches(x, y, batch_size, seed)
        self.micro_batch = batch_size
        self.steps = epochs * self.data.per_epoch
        self.warmup = warmup_steps(self.steps)

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.init_seed)
        model = ChildNet(self.arch)
        if self.init_state is not None:
            model.load_state_dict(self.init_state)
        return {"net": model}

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=1e-4)

    def schedule(self, name: str, optimizer: torch.optim.Optimizer, step: int) -> None:
        for g in optimizer.param_groups:
            g["lr"] = cosine_lr(step, self.steps, self.lr, self.warmup)

    def grad_clip(self, name: str, step: int) -> float:
        return CLIP_NORM

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, Tensor]:
        xb, yb = self.data(step)
        return {"x": to_input(xb, self.arch.resolution).to(device), "y": yb.to(device)}

    def loss(self, name: str, models: dict, batch: dict[str, Tensor], cache: dict, step: int):
        model = models["net"]
        model.train()
        torch.manual_seed(step_seed(self.seed, step))  # this step's dropout, whatever ran before
        loss = F.cross_entropy(model(batch["x"]).float(), batch["y"], label_smoothing=self.label_smoothing)
        return loss, {"loss": loss.item()}


def training_config(device: torch.device, per_epoch: int, *, log_every: int | None = None) -> TrainingConfig:
    """The engine settings of every s3nas run: plain torch (the nets are small), bf16 autocast
    on CUDA, a checkpoint per epoch (the unit a kill may cost), the last one kept."""
    return TrainingConfig(backend="torch", checkpoint_every=per_epoch, keep_checkpoints=1, grad_clip=CLIP_NORM,
                          log_every=log_every or per_epoch).on(device.type)


def train_classifier(recipe: ClassifierRecipe, ckpt_dir: Path | str, device: torch.device,
                     progress: Progress = None) -> tuple[ChildNet, dict]:
    """Run (or resume, or reuse) ``recipe`` in ``ckpt_dir``; the trained net and its record."""
    res = train(recipe, training_config(device, recipe.data.per_epoch), ckpt_dir, progress=progress)
    model = recipe.build()["net"]
    model.load_state_dict(load_weights(res.checkpoint, "net"))
    losses = [h["net/loss"] for h in res.history if "net/loss" in h]
    return model.to(device), {"train_seconds": res.wall_seconds, "steps": res.steps, "resumed_from": res.start_step,
                              "final_loss": losses[-1] if losses else float("nan"), "history": res.history}


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
