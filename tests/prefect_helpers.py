"""A throwaway local Prefect server (API + dashboard) and ``paperline serve`` processes for the
schedule and dashboard tests. Everything binds 127.0.0.1 on a free port and keeps its state
in a temp folder; every process is started in its own session and ended by its group id."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import yaml

from tasks.common.artifacts import PROJECT_ROOT

BIN = Path(sys.executable).parent

#: the smallest real ``animeceleb`` run: two anime identities, toon only, 32², one Blender worker
#: (``resources`` spelt out whole: a form sends every field of the section back)
TINY_ANIMECELEB = {
    "identities": 2, "frames_per_identity": 1, "sequences_per_identity": 0, "resolution": 32,
    "samples": 1, "domains": ["anime"], "styles": ["toon"], "contact_sheet_samples": 2,
    "resources": {"device": "auto", "cpus_per_step": 0, "workers": 1, "threads_per_worker": 1},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url + "/health", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group (serve → its flow-run children), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (Ray, Blender workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@contextlib.contextmanager
def local_prefect_server(home: Path, timeout: float = 150.0) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1:<free port> with its own PREFECT_HOME; yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
        # the scheduler looks for new schedules every 5 s instead of every minute
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_SHOW_PROMOTIONAL_CONTENT="false",
    )
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited {proc.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect server not healthy in {timeout:.0f}s:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop(proc)
        log.close()


def write_prefect_yaml(path: Path, deployments: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"name": "paperline-test", "deployments": deployments}, sort_keys=False))
    return path


@contextlib.contextmanager
def paperline_serve(prefect_yaml: Path, api_url: str, data: Path, log_path: Path,
                    activate: bool = False) -> Iterator[subprocess.Popen]:
    """``paperline serve --file prefect_yaml`` against ``api_url``, flows writing under ``data``."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    # A Ray temp dir of its own: ray.init() would otherwise join any cluster another process on
    # this machine started with `ray start` (its address file lives in /tmp/ray). Short, for
    # Ray's unix-socket path limit.
    ray_tmp = tempfile.mkdtemp(prefix="plray", dir="/tmp")
    env.update(
        PREFECT_API_URL=api_url, PAPERLINE_DATA=str(data), PAPERLINE_NO_DVC="1", RAY_AUTH_MODE="disabled",
        PREFECT_RUNNER_POLL_FREQUENCY="3", PYTHONUNBUFFERED="1", PAPERLINE_RAY_TMP=ray_tmp,
    )
    cmd = [str(BIN / "paperline"), "serve", "--file", str(prefect_yaml)] + (["--activate"] if activate else [])
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def wait_for_deployment(client, name: str, log: Path, timeout: float = 90.0):
    """The deployment ``flow/deployment`` once ``serve`` has registered it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.read_deployment_by_name(name)
        except Exception:
            assert time.monotonic() < deadline, "serve never registered the deployment:\n" + tail(log)
            time.sleep(1)


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""
