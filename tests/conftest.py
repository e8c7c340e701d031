"""Shared fixtures: an isolated data root, global torch state reset, and (for flow tests) a
Prefect test server plus an embedded Ray that are started once per session."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _reset_torch_state():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("PAPERLINE_DATA", str(root))
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """A real (temporary) Prefect API for the session; its URL is handed to Ray workers."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        yield PREFECT_API_URL.value()
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def ray_local(prefect_server):
    import ray

    from tasks.common.runner import ray_init_kwargs

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(None))
    yield
    ray.shutdown()
