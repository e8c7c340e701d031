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

    from flows.platform.runner import ray_init_kwargs

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(None))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_two_cpus():
    """A fresh embedded Ray with two CPUs for one test module (worker-pool tests)."""
    import ray

    from flows.platform.runner import ray_init_kwargs

    ray.shutdown()
    ray.init(**{**ray_init_kwargs(None), "num_cpus": 2})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_flow(tmp_path_factory, prefect_server):
    """``toy_flow(name, overrides)`` → (data root, config, first result, rerun): the real flow on
    a fresh embedded Ray, outputs in a temp data root, DVC off; environment restored after."""
    import contextlib

    import ray

    stack = contextlib.ExitStack()

    def start(name: str, overrides: list[str]):
        from flows import get_flow
        from tasks.common.config import load_config
        from flows.platform.runner import make_task_runner, ray_init_kwargs

        spec = get_flow(name)
        root = tmp_path_factory.mktemp("data")
        saved = {k: os.environ.get(k) for k in ("PAPERLINE_DATA", "PAPERLINE_NO_DVC", "PAPERLINE_NPU_CACHE")}
        stack.callback(_restore_env, saved)
        stack.callback(ray.shutdown)
        os.environ.update(PAPERLINE_DATA=str(root), PAPERLINE_NO_DVC="1")
        os.environ.pop("PAPERLINE_NPU_CACHE", None)
        ray.shutdown()
        ray.init(**ray_init_kwargs(None))
        cfg = load_config(name, spec.load_config_class(), overrides=overrides)
        flow = spec.load_flow()
        run = lambda: flow.with_options(task_runner=make_task_runner())(config=cfg)  # noqa: E731
        return root, cfg, run(), run

    with stack:
        yield start


def _restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
