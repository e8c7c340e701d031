"""Servers paperline starts listen on loopback unless configured otherwise."""
from __future__ import annotations

import os
import time

import psutil
import pytest

from ops_helpers import free_port


def listening_addresses(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections(kind="inet") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.mark.slow
def test_the_prefect_server_binds_loopback(tmp_path, monkeypatch):
    from flows.platform import prefect_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    port = free_port()
    url = prefect_server.ensure_server(port=port, timeout=120)
    try:
        assert url == f"http://127.0.0.1:{port}/api"
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        assert prefect_server.stop_server()


def test_the_ray_dashboard_binds_loopback_when_enabled(monkeypatch):
    import ray

    from flows.platform.runner import ray_init_kwargs

    monkeypatch.setenv("PAPERLINE_RAY_DASHBOARD", "1")
    port = free_port()
    kwargs = {**ray_init_kwargs(None), "num_cpus": 1, "dashboard_port": port}
    assert kwargs["include_dashboard"] and kwargs["dashboard_host"] == "127.0.0.1"
    ray.shutdown()
    ray.init(**kwargs)
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        ray.shutdown()


def test_the_dashboard_is_off_by_default(monkeypatch):
    from flows.platform.runner import ray_init_kwargs

    monkeypatch.delenv("PAPERLINE_RAY_DASHBOARD", raising=False)
    assert ray_init_kwargs(None)["include_dashboard"] is False
    assert os.environ.get("PAPERLINE_PREFECT_HOST", "127.0.0.1") == "127.0.0.1"
