"""One method on every unseen identity: the evaluation loop behind ``pixelhuman.evaluate``.

For each test identity and each input-view count ``n``: the first ``n`` input cameras (spread by
farthest angle) in the input pose are the context; the held-out cameras of that pose are the
*novel views*, the held-out poses the *novel poses*. A generalisable model is loaded once and
used feed-forward (or fine-tuned on the ``n`` inputs when ``subject.finetune_steps`` > 0); the
per-subject baseline is fitted from scratch on those ``n`` images. For the identity with a walk
cycle the model with the largest count ≤ 3 also renders the walk (the turntable MP4's frames).

Writes ``rows.json`` (one row per rendered image), ``renders.npz`` (uint8 renders keyed
``<identity>|<n>|<frame>|<camera>``) and ``eval.json`` (timings).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from tasks.common.artifacts import read_json, write_json

from .bodies import load_subject
from .evaluate import image_metrics, render_image
from .fit import SkinLookup, fit_subject, make_context
from .model import build_field


def load_field(cfg, train_dir: Path, method: str, pose_dim: int, device: str):
    from safetensors.torch import load_file

    field = build_field(method, cfg.model, pose_dim)
    field.load_state_dict(load_file(str(train_dir / "field.safetensors")))
    return field.to(device).eval()


def evaluate_method(cfg, bodies: Path, train_dir: Path | None, method: str, out: Path, *, device: str = "cpu") -> None:
    split = read_json(bodies / "split.json")
    skin = SkinLookup(bodies, cfg.model.skin_vertices)
    dev = torch.device(device)
    rows, renders, t0 = [], {}, time.perf_counter()
    base = None
    fit_seconds, render_seconds, rendered_rays = 0.0, 0.0, 0
    walk_n = max([n for n in cfg.eval.view_counts if n <= 3] or [min(cfg.eval.view_counts)])
    for si, name in enumerate(split["test"]):
        info = split["subjects"][name]
        subject = load_subject(bodies, name, split["renders"][name])
        pose_dim = len(subject.frames[info["input_pose"]]["pose"])
        if base is None and train_dir is not None:
            base = load_field(cfg, train_dir, method, pose_dim, device)
        for n in cfg.eval.view_counts:
            ins = info["inputs"][:n]
            t1 = time.perf_counter()
            if method == "anerf_subject":
                torch.manual_seed(cfg.seed + 7919 * si + n)
                field = build_field(method, cfg.model, pose_dim)
                fit_subject(field, subject, info["input_pose"], ins, skin, cfg, steps=cfg.subject.steps,
                            lr=cfg.subject.lr, seed=cfg.seed + 1000 * si + n, device=dev)
            elif cfg.subject.finetune_steps > 0:
                field = copy.deepcopy(base)
                fit_subject(field, subject, info["input_pose"], ins, skin, cfg, steps=cfg.subject.finetune_steps,
                            lr=cfg.subject.lr / 10, seed=cfg.seed + 1000 * si + n, device=dev)
            else:
                field = base
            fit_seconds += time.perf_counter() - t1
            targets = [("novel_view", f, c) for f, c in info["novel_view"]] + \
                      [("novel_pose", f, c) for f, c in info["novel_pose"]]
            if n == walk_n and "walk" in info:
                targets += [("walk", f, c) for f, c in info["walk"]]
            for kind, frame, cam in targets:
                ctx = make_context(subject, info["input_pose"], ins, frame, skin)
                t2 = time.perf_counter()
                rgb, acc = render_image(field, ctx, subject.cams, subject.cam_index(cam),
                                        subject.frames[frame]["vertices"], cfg.model.samples_per_ray, cfg.model.shell,
                                        dev)
                render_seconds += time.perf_counter() - t2
                rendered_rays += rgb.shape[0] * rgb.shape[1]
                renders[f"{name}|{n}|{frame}|{cam}"] = (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
                if kind == "walk":
                    continue
                gt_rgb, gt_mask = subject.images[(frame, cam)]
                rows.append({"method": method, "identity": name, "views": n, "split": kind, "frame": frame,
                             "camera": cam, **image_metrics(rgb, gt_rgb, acc, gt_mask)})
    np.savez_compressed(out / "renders.npz", **renders)
    write_json(out / "rows.json", rows)
    write_json(out / "eval.json", {"method": method, "seconds": time.perf_counter() - t0, "fit_seconds": fit_seconds,
                                   "render_seconds": render_seconds, "rendered_rays": rendered_rays,
                                   "render_rays_per_second": rendered_rays / render_seconds if render_seconds else 0.0,
                                   "walk_views": walk_n, "device": device})
