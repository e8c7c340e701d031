"""Image conversions of the RobustSwap package: renders (uint8 HWC) ↔ model space (float CHW in [-1, 1])."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_model_space(images: np.ndarray | torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or float [N, H, W, 3] in [0, 1]) → float [N, 3, S, S] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.permute(0, 3, 1, 2) * 2 - 1
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def to_uint8(x: torch.Tensor, size: int | None = None) -> np.ndarray:
    """float [N, 3, S, S] in [-1, 1] → uint8 [N, H, W, 3] (resized to ``size`` when given)."""
    x = x.detach().float()
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
