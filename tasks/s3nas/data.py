"""Fashion-MNIST for the S3NAS flow: the real 28×28 images Debian's ``dataset-fashion-mnist``
ships (DATA.md), read from their IDX files, subset with a fixed seed and resized on the fly
to each network's input resolution (the scaled nets differ in resolution)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set pixel statistics
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path = FASHION_DIR) -> dict[str, np.ndarray]:
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {root}: install Debian's dataset-fashion-mnist (make install does)")
    return {
        "train_x": read_idx(root / "train-images-idx3-ubyte.gz"), "train_y": read_idx(root / "train-labels-idx1-ubyte.gz"),
        "test_x": read_idx(root / "t10k-images-idx3-ubyte.gz"), "test_y": read_idx(root / "t10k-labels-idx1-ubyte.gz"),
    }


def stratified(labels: np.ndarray, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """n indices with (almost) equal counts per class."""
    pool = np.setdiff1d(np.arange(len(labels)), exclude) if exclude is not None else np.arange(len(labels))
    classes = np.unique(labels)
    per = [pool[labels[pool] == c] for c in classes]
    take = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    idx = np.concatenate([rng.choice(p, t, replace=False) for p, t in zip(per, take)])
    return np.sort(idx)


def make_splits(n_train: int, n_val: int, n_test: int, seed: int, root: Path = FASHION_DIR) -> dict[str, torch.Tensor]:
    raw = load_fashion_mnist(root)
    rng = np.random.default_rng(seed)
    tr = stratified(raw["train_y"], n_train, rng)
    va = stratified(raw["train_y"], n_val, rng, exclude=tr)
    te = stratified(raw["test_y"], n_test, rng)
    return {
        "train_x": torch.from_numpy(raw["train_x"][tr].copy()), "train_y": torch.from_numpy(raw["train_y"][tr].astype(np.int64)),
        "val_x": torch.from_numpy(raw["train_x"][va].copy()), "val_y": torch.from_numpy(raw["train_y"][va].astype(np.int64)),
        "test_x": torch.from_numpy(raw["test_x"][te].copy()), "test_y": torch.from_numpy(raw["test_y"][te].astype(np.int64)),
    }


def to_input(x_uint8: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, 28, 28] uint8 → [N, 1, r, r] normalised float, bilinear resize."""
    x = x_uint8.float().div(255.0).unsqueeze(1)
    if resolution != x.shape[-1]:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (x - MEAN) / STD


def save_splits(splits: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in splits.items()}, str(path))


def load_splits(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
