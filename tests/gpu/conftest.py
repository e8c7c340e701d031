"""GPU-vs-CPU checks (`make gpu-check`): every test here compares a flow's GPU path with its CPU
reference on the same tiny input. Without a visible CUDA device each is skipped with the reason.

``PAPERLINE_GPU_DRYRUN=1`` runs the same tests with the CPU standing in for the GPU side (CPU vs
CPU, fp32 where the GPU would use bf16), so the test code itself is exercised on a machine
without a GPU; the assertions that only mean something on CUDA (allocator peaks, Cycles on the
GPU) are skipped there with that reason.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def dry_run() -> bool:
    return os.environ.get("PAPERLINE_GPU_DRYRUN", "") not in ("", "0")


def no_cuda_reason() -> str:
    built = torch.version.cuda or "none (a CPU-only build)"
    return (f"no CUDA device visible: torch {torch.__version__} reports torch.cuda.is_available() = False "
            f"(CUDA build {built}); run `make gpu-check` on a GPU machine")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or dry_run():
        return
    skip = pytest.mark.skip(reason=no_cuda_reason())
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:  # this folder's tests only
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu() -> torch.device:
    """The device under test: the first CUDA device (the CPU in a dry run)."""
    if torch.cuda.is_available() and not dry_run():
        return torch.device("cuda", 0)
    if dry_run():
        return torch.device("cpu")
    pytest.skip(no_cuda_reason())


@pytest.fixture
def needs_real_gpu(gpu):
    if gpu.type != "cuda":
        pytest.skip("dry run (PAPERLINE_GPU_DRYRUN=1): this assertion is about CUDA itself")
