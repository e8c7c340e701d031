"""A local Prefect API server for runs on this machine, started once and reused.

Prefect's ephemeral mode (no server) makes every Ray worker start its own temporary API
server on one SQLite file: slow and lock-prone. So ``paperline run`` uses ``PREFECT_API_URL``
when set, else reuses or starts a server bound to 127.0.0.1 whose state lives in the
project's own ``.prefect/`` folder, and hands its URL to the Ray workers.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .artifacts import PROJECT_ROOT

DEFAULT_PORT = int(os.environ.get("PAPERLINE_PREFECT_PORT", "4200"))
#: loopback unless configured: the API has no authentication of its own
DEFAULT_HOST = os.environ.get("PAPERLINE_PREFECT_HOST", "127.0.0.1")


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", PROJECT_ROOT / ".prefect"))


def api_url(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def server_command(host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe), "server", "start", "--host", host, "--port", str(port)]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(prefect_home())
    env.pop("PREFECT_API_URL", None)
    return env


def ensure_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 90.0) -> str:
    """URL of a healthy Prefect API: ``PREFECT_API_URL``, a running local one, or a new one."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    url = api_url(host, port)
    if is_healthy(url):
        return url
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "ab")
    # Detached: the server outlives this run so the dashboard keeps showing it and the next
    # run reuses it; `paperline server --stop` ends it.
    proc = subprocess.Popen(
        server_command(host, port), env=server_env(), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    (home / "server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(url):
            return url
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {home / 'server.log'}")
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s; see {home / 'server.log'}")


def stop_server() -> bool:
    pidfile = prefect_home() / "server.pid"
    if not pidfile.is_file():
        return False
    pid = int(pidfile.read_text())
    try:
        os.killpg(pid, 15)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)
    return True
