"""Training: the generalisable recipe (ours, pose-unaware baseline) and per-subject fits.

Generalisable training (a recipe of the shared engine, :mod:`tasks.common.training`): every
step draws — as a pure function of (seed, step) — a training identity, a source pose, 1 to
``max_input_views`` of its cameras as input views, and a target: another camera of the same
pose (novel view) or another pose (novel pose), half the time each. ``rays`` target pixels
(¾ inside the mask's box, ¼ anywhere) are rendered and scored by MSE on colour plus
``mask_weight`` × binary cross-entropy of the opacity against the mask.

Per subject (``anerf_subject``, and ours' optional fine-tuning): the same loss on rays of the
subject's own input views only — the few images in one pose are all it has.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.training import seeded_generator

from .bodies import Subject, load_subject, lookup_vertices
from .model import Context, HumanField, build_field
from .render import body_box, render_rays
from .cameras import pixel_rays

BACKGROUND = (1.0, 1.0, 1.0)


class SkinLookup:
    """anny's weights at the fixed vertex subsample used for the nearest-vertex lookup."""

    def __init__(self, bodies: Path | str, k: int):
        w = np.load(Path(bodies) / "weights.npy")
        self.idx = lookup_vertices(len(w), k)
        self.weights = torch.from_numpy(w)[self.idx].float()


def make_context(subject: Subject, in_frame: str, in_cams: list[str], tgt_frame: str, skin: SkinLookup) -> Context:
    idx = [subject.cam_index(c) for c in in_cams]
    imgs = torch.stack([subject.images[(in_frame, c)][0] for c in in_cams]).permute(0, 3, 1, 2).contiguous()
    T_in = subject.frames[in_frame]["transforms"]
    tgt = subject.frames[tgt_frame]
    return Context(images=imgs, cams=subject.cams.subset(idx), in_transforms=T_in.expand(len(in_cams), -1, -1, -1),
                   tgt_transforms=tgt["transforms"], tgt_verts=tgt["vertices"][skin.idx], vert_weights=skin.weights,
                   tgt_pose=tgt["pose"])


def sample_pixels(mask: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` pixel indices (row, col): ¾ uniformly inside the mask's box (dilated 3 px), ¼ anywhere."""
    H, W = mask.shape
    ys, xs = (mask > 0.5).nonzero(as_tuple=True)
    n_in = (3 * n) // 4 if len(ys) else 0
    if n_in:
        y0, y1 = max(0, int(ys.min()) - 3), min(H, int(ys.max()) + 4)
        x0, x1 = max(0, int(xs.min()) - 3), min(W, int(xs.max()) + 4)
        inside = torch.stack([torch.randint(y0, y1, (n_in,), generator=g), torch.randint(x0, x1, (n_in,), generator=g)], 1)
    else:
        inside = torch.zeros(0, 2, dtype=torch.long)
    rest = torch.stack([torch.randint(0, H, (n - n_in,), generator=g), torch.randint(0, W, (n - n_in,), generator=g)], 1)
    return torch.cat([inside, rest])


def ray_loss(field: HumanField, ctx: Context, subject: Subject, frame: str, cam: str, n_rays: int, samples: int,
             mask_weight: float, pad: float, g: torch.Generator, device: torch.device) -> tuple[torch.Tensor, dict]:
    rgb_gt, mask_gt = subject.images[(frame, cam)]
    pix = sample_pixels(mask_gt, n_rays, g)
    o, d = pixel_rays(subject.cams, subject.cam_index(cam), pix)
    verts = subject.frames[frame]["vertices"].to(device)
    lo, hi = body_box(verts, pad)
    ctx = field.encode(ctx.to(device))
    bg = torch.tensor(BACKGROUND, device=device)
    out = render_rays(lambda x: field(x, ctx), o.to(device), d.to(device), lo, hi, samples, jitter=True,
                      background=bg, generator=g)
    target = rgb_gt[pix[:, 0], pix[:, 1]].to(device)
    m = mask_gt[pix[:, 0], pix[:, 1]].to(device)
    mse = F.mse_loss(out["rgb"].float(), target)
    a = out["acc"].float().clamp(1e-4, 1 - 1e-4)  # written out: F.binary_cross_entropy refuses autocast
    bce = -(m * torch.log(a) + (1 - m) * torch.log(1 - a)).mean()
    loss = mse + mask_weight * bce
    return loss, {"mse": float(mse.detach()), "bce": float(bce.detach()),
                  "psnr": -10 * math.log10(max(float(mse.detach()), 1e-10))}


class GeneralisableRecipe:
    """Ours or the pose-unaware baseline, trained across the training identities."""

    micro_batch = 1

    def __init__(self, cfg, bodies: Path | str, method: str, split: dict[str, Any]):
        self.cfg, self.bodies, self.method, self.split = cfg, str(bodies), method, split
        self.steps = cfg.train.steps
        self._subjects: list[Subject] | None = None
        self._skin: SkinLookup | None = None

    @property
    def subjects(self) -> list[Subject]:
        if self._subjects is None:
            self._subjects = [load_subject(self.bodies, n, self.split["renders"][n]) for n in self.split["train"]]
            self._skin = SkinLookup(self.bodies, self.cfg.model.skin_vertices)
        return self._subjects

    def build(self) -> dict[str, torch.nn.Module]:
        torch.manual_seed(self.cfg.seed)
        pose_dim = len(next(iter(self.subjects[0].frames.values()))["pose"])
        return {"field": build_field(self.method, self.cfg.model, pose_dim)}

    def optimizer(self, name: str, module: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.cfg.train.lr)

    def schedule(self, name: str, opt: torch.optim.Optimizer, step: int) -> None:
        frac = min(1.0, step / max(1, self.steps))
        lr = self.cfg.train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for gr in opt.param_groups:
            gr["lr"] = lr

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"step": torch.tensor([step])}

    def draw(self, step: int) -> tuple[Subject, str, list[str], str, str, torch.Generator]:
        """The step's identity, source pose, input views and target (a pure function of seed and step)."""
        g = seeded_generator(self.cfg.seed, step)
        s = self.subjects[int(torch.randint(len(self.subjects), (1,), generator=g))]
        frames = list(s.frames)
        src = frames[int(torch.randint(len(frames), (1,), generator=g))]
        cams = [c for (f, c) in s.images if f == src]
        n_in = int(torch.randint(1, min(self.cfg.train.max_input_views, len(cams) - 1) + 1, (1,), generator=g))
        perm = torch.randperm(len(cams), generator=g).tolist()
        ins = [cams[i] for i in perm[:n_in]]
        if len(frames) > 1 and float(torch.rand(1, generator=g)) < 0.5:
            tgt = [f for f in frames if f != src][int(torch.randint(len(frames) - 1, (1,), generator=g))]
            tcams = [c for (f, c) in s.images if f == tgt]
            tcam = tcams[int(torch.randint(len(tcams), (1,), generator=g))]
        else:
            tgt, tcam = src, cams[perm[n_in]]
        return s, src, ins, tgt, tcam, g

    def loss(self, name: str, models: dict[str, Callable], batch: dict[str, torch.Tensor], cache: dict[str, Any],
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        field = models[name]
        device = next(field.parameters()).device if hasattr(field, "parameters") else torch.device("cpu")
        s, src, ins, tgt, tcam, g = self.draw(step)
        assert self._skin is not None
        ctx = make_context(s, src, ins, tgt, self._skin)
        m = self.cfg.model
        return ray_loss(field, ctx, s, tgt, tcam, self.cfg.train.rays, m.samples_per_ray, self.cfg.train.mask_weight,
                        m.shell, g, device)


def fit_subject(field: HumanField, subject: Subject, in_frame: str, in_cams: list[str], skin: SkinLookup, cfg, *,
                steps: int, lr: float, seed: int, device: torch.device) -> list[dict[str, float]]:
    """Optimise ``field`` on the subject's input views (per-subject baseline, or fine-tuning ours)."""
    field.to(device).train()
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    history = []
    for step in range(steps):
        g = seeded_generator(seed, step)
        cam = in_cams[int(torch.randint(len(in_cams), (1,), generator=g))]
        ctx = make_context(subject, in_frame, in_cams, in_frame, skin)
        loss, logs = ray_loss(field, ctx, subject, in_frame, cam, cfg.subject.rays, cfg.model.samples_per_ray,
                              cfg.train.mask_weight, cfg.model.shell, g, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(field.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            history.append({"step": step, **logs})
    field.eval()
    return history
