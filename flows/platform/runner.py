"""The one factory for task runners: prefect-ray's ``RayTaskRunner``.

Embedded local Ray by default (all cores, token auth off), closed to the network: every Ray
process binds 127.0.0.1, no dashboard UI, no usage report. ``RAY_ADDRESS`` points at an
existing cluster instead, which is configured where it is started (``ray start``). Prefect owns
retries, so Ray task retries are off for steps (:func:`step_options`); heavy resources live in
restartable actors (``workers/``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from tasks.common.artifacts import data_root

#: environment every Ray worker must share with the flow process
_FORWARDED_ENV = ("PREFECT_API_URL", "PAPERLINE_DATA", "PREFECT_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "DO_NOT_TRACK")


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env.setdefault("PAPERLINE_DATA", str(data_root()))
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def bind_loopback() -> None:
    """Make the Ray node this process starts listen on 127.0.0.1 only.

    Ray binds its gRPC servers (GCS, raylet, object manager, every worker) and its agents to
    loopback exactly when the node's IP is 127.0.0.1, and otherwise to all interfaces. But
    ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten to the machine's routable IP unless
    Ray considers multi-node clusters disabled — its macOS/Windows default, which Linux gets
    from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` read when ``ray`` is imported. ``ray`` is already
    imported here (prefect-ray imports it), so set the value it read. This only decides the IP
    of a node started by this process: a driver joining a cluster (``RAY_ADDRESS``) takes its
    raylet's address, so cluster mode is unchanged.
    """
    import ray  # noqa: F401  the real package first: prefect-ray may leave only a lazy stub in sys.modules
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def ray_init_kwargs(address: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env()},
        "log_to_driver": True,
    }
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray renices its workers to 15 by default; on a shared workstation that starves the
        # very steps the user is waiting for.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # Offline: the usage-stats module of Ray's head process would report to ray.io.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        bind_loopback()
        dashboard = os.environ.get("PAPERLINE_RAY_DASHBOARD", "") not in ("", "0", "false")
        kwargs.update(
            # a fresh node of our own, never a cluster some `ray start` left running here
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=int(os.environ.get("PAPERLINE_RAY_CPUS", os.cpu_count() or 1)),
            # Off by default; when on, it listens on loopback unless told otherwise. (Ray still
            # starts its head's API process and the node's agent, without the UI: the raylet
            # refuses to run without its agent. Both bind loopback, like everything above.)
            include_dashboard=dashboard,
            dashboard_host=os.environ.get("PAPERLINE_RAY_DASHBOARD_HOST", "127.0.0.1"),
            # Steps exchange paths, not tensors: a small object store is plenty.
            object_store_memory=int(os.environ.get("PAPERLINE_RAY_OBJECT_STORE", 256 * 2**20)),
            _temp_dir=os.environ.get("PAPERLINE_RAY_TMP") or None,
        )
        if kwargs["_temp_dir"] is None:
            kwargs.pop("_temp_dir")
    return kwargs


def make_task_runner() -> RayTaskRunner:
    address = os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("PAPERLINE_DATA", str(data_root()))
    return RayTaskRunner(address=address, init_kwargs=ray_init_kwargs(address))


def cluster_resources() -> dict[str, float]:
    """Resources of the Ray cluster this process is connected to (CPU/GPU counts)."""
    import ray

    if not ray.is_initialized():
        return {"CPU": float(os.cpu_count() or 1), "GPU": 0.0}
    return dict(ray.cluster_resources())


@contextmanager
def step_options(*, num_cpus: float = 1, num_gpus: float = 0) -> Iterator[None]:
    """Ray options for the Prefect tasks submitted inside: no Ray retries, sized resources."""
    with remote_options(max_retries=0, num_cpus=num_cpus, num_gpus=num_gpus):
        yield


__all__ = ["make_task_runner", "step_options", "cluster_resources", "worker_env"]
