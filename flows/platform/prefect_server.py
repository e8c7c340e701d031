"""The local Prefect API server for runs on this machine: started once, reused, and only ever ours.

Prefect's ephemeral mode (no server) makes every Ray worker start its own temporary API server
on one SQLite file: slow and lock-prone. So ``paperline run`` and ``paperline serve`` use
``PREFECT_API_URL`` when it is set, else reuse or start a server bound to 127.0.0.1 whose state
lives in the project's own ``.prefect/`` folder, and hand its URL to the Ray workers.

Three rules make that safe:

- **Settings before import.** Prefect reads its settings when it is first imported, so
  :func:`prepare_environment` (API URL, ``PREFECT_HOME``, telemetry off) runs before anything in
  the process imports ``prefect``; the CLI calls it before it imports a flow, a step or Prefect.
- **Only our server.** A server already answering on the port is adopted only when its state
  folder (``home`` in its ``/api/admin/settings``) is ours; another checkout's server, or
  anything else on the port, is refused with the port and the two ways round it.
- **Offline.** The client's SDK telemetry (``DO_NOT_TRACK``) and the server's startup analytics
  (``PREFECT_SERVER_ANALYTICS_ENABLED``) are off unless the user turned them on.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import ConfigError

#: what "offline" means for Prefect: no SDK events from clients, no startup report from servers
OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


class ForeignServerError(ConfigError):
    """Something other than this project's Prefect server answers on the port we would use."""


def offline_defaults() -> None:
    """Telemetry off unless the user chose otherwise (Prefect reads these at import)."""
    for k, v in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(k, v)


def prefect_home() -> Path:
    """The state folder of the server paperline starts: ``PREFECT_HOME`` or ``<project>/.prefect``."""
    return Path(os.environ.get("PREFECT_HOME") or PROJECT_ROOT / ".prefect").expanduser().resolve()


def default_port() -> int:
    return int(os.environ.get("PAPERLINE_PREFECT_PORT", "4200"))


def default_host() -> str:
    # loopback unless configured: the API has no authentication of its own
    return os.environ.get("PAPERLINE_PREFECT_HOST", "127.0.0.1")


def api_url(host: str = "127.0.0.1", port: int | None = None) -> str:
    return f"http://{host}:{default_port() if port is None else port}/api"


def _connect_host(host: str) -> str:
    # a server bound to every interface is still reached through loopback
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _get_json(url: str, timeout: float) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read()) if r.status == 200 else None
    except Exception:
        return None


def is_healthy(url: str, timeout: float = 1.0) -> bool:
    return _get_json(url.rstrip("/") + "/health", timeout) is True


def server_home(url: str, timeout: float = 5.0) -> Path | None:
    """The state folder (``PREFECT_HOME``) of the Prefect server at ``url``, as it reports it."""
    settings = _get_json(url.rstrip("/") + "/admin/settings", timeout)
    home = settings.get("home") if isinstance(settings, dict) else None
    return Path(home).expanduser().resolve() if isinstance(home, str) and home else None


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((_connect_host(host), port)) == 0


def _refuse(port: int, what: str) -> ForeignServerError:
    return ForeignServerError(
        f"prefect server: port {port} {what}, not this project's server (state in {prefect_home()}); "
        f"use another port (PAPERLINE_PREFECT_PORT={port + 1}) or point paperline at that server on "
        f"purpose (export PREFECT_API_URL=http://127.0.0.1:{port}/api)"
    )


def check_ours(url: str, port: int) -> None:
    """Refuse a healthy server at ``url`` whose state folder is not ours."""
    home = server_home(url)
    if home is None:
        raise _refuse(port, "answers as a server that does not report its state folder")
    if home != prefect_home():
        raise _refuse(port, f"is held by another Prefect server (state in {home})")


def server_command(host: str, port: int) -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe), "server", "start", "--host", host, "--port", str(port)]


def server_env() -> dict[str, str]:
    env = {**OFFLINE_DEFAULTS, **os.environ}
    env["PREFECT_HOME"] = str(prefect_home())
    env.pop("PREFECT_API_URL", None)
    return env


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    """Two runs starting at once: the second waits, then finds the first one's server."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_server(host: str | None = None, port: int | None = None, timeout: float = 90.0) -> str:
    """URL of a healthy Prefect API: ``PREFECT_API_URL``, our running local one, or a new one."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    host = default_host() if host is None else host
    port = default_port() if port is None else port
    url = api_url(_connect_host(host), port)
    home = prefect_home()
    with _start_lock(home):
        if is_healthy(url):
            check_ours(url, port)
            return url
        if port_in_use(host, port):
            raise _refuse(port, "is taken by something that is not a healthy Prefect server")
        log = open(home / "server.log", "ab")
        # Detached: the server outlives this run so the dashboard keeps showing it and the next
        # run reuses it; `paperline server --stop` ends it.
        proc = subprocess.Popen(
            server_command(host, port), env=server_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        (home / "server.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_healthy(url):
                check_ours(url, port)
                return url
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}; see {home / 'server.log'}")
            time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout:.0f}s; see {home / 'server.log'}")


def prepare_environment() -> str:
    """Point this process (and the Ray workers it starts) at a real Prefect API, before Prefect
    is imported: ``PREFECT_API_URL`` (started or reused), ``PREFECT_HOME``, telemetry off."""
    offline_defaults()
    if not os.environ.get("PREFECT_API_URL"):
        # client and server share the project's state folder (profiles, local result storage)
        os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
        os.environ["PREFECT_API_URL"] = ensure_server()
    if "prefect" in sys.modules:
        # Something imported Prefect first: its settings were read without this URL, and this
        # process would register and run against a temporary server. Re-read them.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return os.environ["PREFECT_API_URL"]


def stop_server() -> bool:
    """End the server ``ensure_server`` started for this state folder (its whole process group)."""
    pidfile = prefect_home() / "server.pid"
    if not pidfile.is_file():
        return False
    pid = int(pidfile.read_text())
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if _is_prefect_server(pid):  # a recycled pid is not ours to kill
            os.killpg(pid, 15)
    pidfile.unlink(missing_ok=True)
    return True


def _is_prefect_server(pid: int) -> bool:
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "server" in cmd and any(c.endswith("prefect") for c in cmd)
