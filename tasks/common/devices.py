"""Device and dtype placement: GPU with bf16 where one is visible, CPU float32 otherwise."""
from __future__ import annotations

import random

import numpy as np
import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} but no CUDA device is visible")
    return dev


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it (halves memory, same range as fp32); fp32 on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
