"""What paperline exposes on the network: the embedded Ray listens on loopback only and starts no
dashboard UI; a Prefect server is adopted only when it is this project's (its state folder), and
anything else on the port is refused with a message that says how to get round it."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from prefect_helpers import local_prefect_server

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listeners(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every TCP socket these processes listen on."""
    out = []
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((p.pid, name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return out


def ray_processes(before: set[int]) -> list[psutil.Process]:
    """This process (the driver's core worker listens in it) and every process Ray started."""
    me = psutil.Process()
    return [me] + [p for p in me.children(recursive=True) if p.pid not in before]


def exercise_ray() -> None:
    """A task and an actor, as steps and worker pools do: each runs in its own worker process."""
    import ray

    @ray.remote(num_cpus=0)
    class Pinger:
        def ping(self) -> int:
            return os.getpid()

    @ray.remote(num_cpus=0)
    def task() -> int:
        return os.getpid()

    actor = Pinger.remote()
    assert ray.get(task.remote()) != ray.get(actor.ping.remote())
    time.sleep(2)  # let the agents finish binding


def test_the_embedded_ray_of_a_flow_run_listens_on_loopback_only(monkeypatch):
    import ray
    from ray._private import ray_constants

    from flows.platform.runner import make_task_runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("PAPERLINE_RAY_CPUS", "1")
    ray.shutdown()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    own = {(ip, port) for _, _, ip, port in listeners([psutil.Process()])}

    # Control: Ray's own defaults, so the probe is known to see what it is looking for.
    with monkeypatch.context() as m:
        m.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
        ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=128 * 2**20)
        try:
            exercise_ray()
            default = [x for x in listeners(ray_processes(before)) if (x[2], x[3]) not in own]
        finally:
            ray.shutdown()
    default_open = [x for x in default if x[2] not in LOOPBACK]
    assert default_open, "Ray's defaults should listen on all interfaces; the probe saw none"

    # Exactly what a flow run does: the scaffold's task runner, entered by the flow engine.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    runner = make_task_runner()
    assert runner.address is None
    with runner:
        exercise_ray()
        procs = ray_processes(before)
        seen = [x for x in listeners(procs) if (x[2], x[3]) not in own]
        cmdlines = {p.pid: " ".join(p.cmdline()) for p in procs if p.is_running()}
        node_ip = ray._private.worker.global_worker.node.node_ip_address
    open_ = [x for x in seen if x[2] not in LOOPBACK]
    print(f"\nRay defaults: {len(default)} listening sockets, {len(default_open)} outside loopback "
          f"({sorted({x[2] for x in default_open})}); paperline's embedded Ray: {len(seen)} listening "
          f"sockets in {len({x[0] for x in seen})} processes, {len(open_)} outside loopback")
    assert node_ip == "127.0.0.1"
    assert len({x[0] for x in seen}) >= 5, seen  # GCS, raylet, agents, workers, the driver all probed
    assert not open_, f"listening outside loopback: {open_}"
    # No dashboard UI: its head process (Ray always starts it) loads only the usage module, with no
    # frontend, and the usage report is off; nothing serves the dashboard port.
    heads = [c for c in cmdlines.values() if "dashboard/dashboard.py" in c]
    assert heads and all("--modules-to-load=UsageStatsHead" in c and "--disable-frontend" in c for c in heads)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert not [x for x in seen if x[3] == 8265]


def test_cluster_mode_is_left_to_the_cluster(monkeypatch):
    from flows.platform.runner import make_task_runner, ray_init_kwargs

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    runner = make_task_runner()
    assert runner.address == "10.0.0.5:6379"
    # a driver joining a cluster takes the cluster's settings: no node options, no loopback pin
    assert set(ray_init_kwargs("10.0.0.5:6379")) == {"runtime_env", "log_to_driver"}


def test_the_cli_turns_telemetry_off_and_imports_no_prefect_or_ray():
    """`paperline run` validates the config before it sets the Prefect API URL: neither the CLI
    module nor any flow's config may import Prefect (it would read its settings without the URL)."""
    code = ("import sys, os; import flows.cli; from flows import FLOWS; "
            "[s.load_config_class() for s in FLOWS.values()]; "
            "print(json.dumps({'prefect': 'prefect' in sys.modules, 'ray': 'ray' in sys.modules, "
            "'env': {k: os.environ.get(k) for k in ('DO_NOT_TRACK', 'PREFECT_SERVER_ANALYTICS_ENABLED')}}))")
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    r = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"prefect": False, "ray": False,
                   "env": {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}}


# ------------------------------------------------------------------------- whose Prefect server


class FakePrefect(http.server.BaseHTTPRequestHandler):
    """Answers like a healthy Prefect API whose state folder is ``home``."""

    home: str | None = "/elsewhere/.prefect"

    def do_GET(self):
        routes = {"/api/health": True, "/api/admin/settings": {"home": self.home} if self.home else {}}
        body = routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server(tmp_path, monkeypatch):
    handler = type("Handler", (FakePrefect,), {})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ours"))
    yield handler, srv.server_address[1]
    srv.shutdown()


def test_a_server_with_another_state_folder_is_refused(fake_server, tmp_path):
    from flows.platform import prefect_server

    handler, port = fake_server
    with pytest.raises(prefect_server.ForeignServerError) as e:
        prefect_server.ensure_server(port=port)
    msg = str(e.value)
    assert f"port {port}" in msg and "/elsewhere/.prefect" in msg
    assert "PAPERLINE_PREFECT_PORT=" in msg and f"PREFECT_API_URL=http://127.0.0.1:{port}/api" in msg
    assert not (tmp_path / "ours" / "server.pid").exists()  # nothing was started instead

    handler.home = None  # healthy, but says nothing about its state: not known to be ours
    with pytest.raises(prefect_server.ForeignServerError):
        prefect_server.ensure_server(port=port)

    handler.home = str(tmp_path / "ours")  # the same state folder: ours, adopted
    assert prefect_server.ensure_server(port=port) == f"http://127.0.0.1:{port}/api"


def test_a_port_held_by_something_else_is_refused_without_starting_a_server(tmp_path, monkeypatch):
    from flows.platform import prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "ours"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(prefect_server.ForeignServerError, match=f"port {port} is taken"):
            prefect_server.ensure_server(port=port, timeout=5)
    assert not (tmp_path / "ours" / "server.pid").exists()


def test_paperline_run_refuses_another_checkouts_server_with_exit_2(fake_server, tmp_path):
    _, port = fake_server
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PAPERLINE_PREFECT_PORT=str(port), PREFECT_HOME=str(tmp_path / "ours"),
               PAPERLINE_DATA=str(tmp_path / "data"))
    params = tmp_path / "params.yaml"
    params.write_text("stun: {}\n")  # a valid config: the refusal must come from the server check
    r = subprocess.run([str(Path(sys.executable).with_name("paperline")), "run", "stun", "--params", str(params)], env=env,
                       capture_output=True, text=True, timeout=300)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, out
    assert f"port {port}" in out and "PAPERLINE_PREFECT_PORT" in out and "PREFECT_API_URL" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()  # refused before any work


@pytest.mark.slow
def test_a_real_prefect_server_of_another_checkout_is_refused_and_ours_is_adopted(tmp_path, monkeypatch):
    from flows.platform import prefect_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with local_prefect_server(tmp_path / "other_checkout" / ".prefect") as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "this_checkout" / ".prefect"))
        with pytest.raises(prefect_server.ForeignServerError, match=str(tmp_path / "other_checkout")):
            prefect_server.ensure_server(port=port)
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "other_checkout" / ".prefect"))
        assert prefect_server.ensure_server(port=port) == url
