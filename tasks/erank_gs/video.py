"""Turntable MP4 of a trained Gaussian scene: the RGB render beside its normal map.

Frames are rendered from cameras circling the scene at the training views' mean distance
(camera intrinsics of the first test view) and encoded with PyAV's bundled libx264.
"""
from __future__ import annotations


import numpy as np
import torch

from .gaussians import GaussianModel
from .procedural import turntable_views
from .render import Camera, render
from .scene_io import GL_TO_CV


def turntable_frames(model: GaussianModel, like: Camera, radius: float, center: torch.Tensor, n: int,
                     renderer: str, background: torch.Tensor) -> list[np.ndarray]:
    frames = []
    with torch.no_grad():
        for c2w in turntable_views(n, radius):
            c2w = c2w.copy()
            c2w[:3, 3] += center.cpu().numpy()
            cam = Camera(torch.from_numpy(np.linalg.inv(c2w @ GL_TO_CV)).float(), like.K, like.width, like.height)
            out = render(renderer, model, cam, background)
            nrm = torch.nn.functional.normalize(out.normal, dim=-1)
            # normal colours: world normal → RGB, white where nothing was rendered
            nrm_rgb = (nrm * 0.5 + 0.5) * out.alpha[..., None] + (1 - out.alpha[..., None])
            frame = torch.cat([out.rgb.clamp(0, 1), nrm_rgb.clamp(0, 1)], 1)
            frames.append((frame.cpu().numpy() * 255).round().astype(np.uint8))
    return frames
