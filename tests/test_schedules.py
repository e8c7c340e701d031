"""Scheduled flow runs: every flow in ``FLOWS`` has a cron deployment in ``prefect.yaml`` whose
dashboard form is its pydantic config, and a cron schedule served by ``paperline serve``
against a real local Prefect server fires by itself and its run completes."""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from datetime import timezone

import pytest

from flows import FLOWS
from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import load_config
from flows.platform.deployments import load_deployments, read_deployments
from prefect_helpers import (BIN, TINY_ANIMECELEB, free_port, local_prefect_server, paperline_serve, stop, tail,
                             wait_for_deployment, write_prefect_yaml)


def entrypoint(spec) -> str:
    return f"flows/{spec.module.split('.')[-1]}.py:{spec.function}"


def test_every_flow_has_a_cron_deployment_whose_form_is_its_config():
    raw = {d["entrypoint"]: d for d in read_deployments(PROJECT_ROOT / "prefect.yaml")}
    built = {d.name: d for d in load_deployments(PROJECT_ROOT / "prefect.yaml")}
    for name, spec in FLOWS.items():
        d = raw.get(entrypoint(spec))
        assert d is not None, f"prefect.yaml has no deployment for flow {name!r} ({entrypoint(spec)})"
        crons = [s["cron"] for s in d.get("schedules") or [] if "cron" in s]
        assert crons, f"deployment {d['name']!r} has no cron schedule"
        dep = built[d["name"]]
        # the cron strings parse (Prefect's Cron refuses bad ones) and are what gets served
        assert [s.schedule.cron for s in dep.schedules] == crons
        # the form Prefect renders is the flow's parameter schema, i.e. its pydantic config
        flow, cls = spec.load_flow(), spec.load_config_class()
        form = dep._parameter_openapi_schema.model_dump_for_openapi()
        assert form == flow.parameters.model_dump_for_openapi()
        assert list(form["properties"]) == ["config"]
        ref = form["properties"]["config"]["$ref"].rsplit("/", 1)[1]
        assert ref == cls.__name__
        fields = form["definitions"][ref]
        assert set(fields["properties"]) == set(cls.model_fields) and fields["additionalProperties"] is False
        # the form opens pre-filled with params.yaml's section
        assert form["properties"]["config"]["default"] == load_config(name, cls).model_dump(mode="json")


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_cron_schedule_fires_by_itself_and_its_run_completes(tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import pandas as pd

    data = tmp_path / "data"
    spec = FLOWS["animeceleb"]
    prefect_yaml = write_prefect_yaml(tmp_path / "prefect.yaml", [{
        "name": "animeceleb-every-minute", "entrypoint": entrypoint(spec),
        "schedules": [{"cron": "* * * * *", "timezone": "UTC", "active": True}],
        "parameters": {"config": TINY_ANIMECELEB},
    }])
    t0 = time.monotonic()
    with local_prefect_server(tmp_path / "prefect_home") as url:
        t_server = time.monotonic() - t0
        with paperline_serve(prefect_yaml, url, data, tmp_path / "serve.log"), \
                temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            dep = wait_for_deployment(client, f"{spec.name}/animeceleb-every-minute", tmp_path / "serve.log")
            t_served = time.monotonic() - t0
            assert dep.schedules[0].active and dep.schedules[0].schedule.cron == "* * * * *"
            # nothing here creates a run: wait for the scheduler's one to complete
            done, seen = None, {}
            deadline = time.monotonic() + 200
            while done is None:
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                seen = {r.name: r.state.type.value for r in runs}
                assert not any(v in ("FAILED", "CRASHED") for v in seen.values()), (seen, tail(tmp_path / "serve.log"))
                done = next((r for r in runs if r.state.is_completed()), None)
                if done is None:
                    assert time.monotonic() < deadline, f"no scheduled run completed: {seen}\n" + tail(tmp_path / "serve.log")
                    time.sleep(3)
            t_done = time.monotonic() - t0
            states = [s.type.value for s in client.read_flow_run_states(done.id)]
    # the scheduler made it (not a manual trigger), for a whole minute, with the deployment's parameters
    assert done.auto_scheduled, done
    assert done.expected_start_time.astimezone(timezone.utc).second == 0
    assert states[0] == "SCHEDULED" and states[-1] == "COMPLETED", states
    assert done.parameters["config"] == TINY_ANIMECELEB
    # and it really rendered: 2 identities × (neutral basis + 1 random frame) × 1 style
    manifest = pd.read_parquet(data / "animeceleb" / "dataset" / "manifest.parquet")
    assert len(manifest) == 4 and set(manifest["style"]) == {"toon"} and set(manifest["domain"]) == {"anime"}
    print(f"\nserver up {t_server:.0f}s, deployment served {t_served:.0f}s, scheduled run "
          f"{done.name} (expected {done.expected_start_time:%H:%M:%S}) completed {t_done:.0f}s after start; states {states}")


def deployment_names(api_url: str) -> set[str]:
    req = urllib.request.Request(api_url + "/deployments/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return {d["name"] for d in json.loads(r.read())}
    except OSError:
        return set()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_plain_paperline_serve_registers_every_deployment_on_the_local_server(tmp_path):
    """The README's form, `paperline serve` with no PREFECT_API_URL exported: it starts (or reuses)
    the local server and registers prefect.yaml's deployments there, not on a temporary server."""
    from flows.platform.prefect_server import server_home

    port, home = free_port(), tmp_path / "prefect_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PAPERLINE_PREFECT_PORT=str(port), PREFECT_HOME=str(home), PAPERLINE_DATA=str(tmp_path / "data"),
               PYTHONUNBUFFERED="1")
    expected = {d["name"] for d in read_deployments(PROJECT_ROOT / "prefect.yaml")}
    url = f"http://127.0.0.1:{port}/api"
    log_path = tmp_path / "serve.log"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "paperline"), "serve"], cwd=PROJECT_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        seen: set[str] = set()
        while seen != expected:
            assert proc.poll() is None, f"paperline serve exited {proc.returncode}:\n" + tail(log_path)
            assert time.monotonic() - t0 < 300, f"listed on :{port}: {sorted(seen)}\n" + tail(log_path)
            time.sleep(2)
            seen = deployment_names(url) & expected
        served = time.monotonic() - t0
        assert server_home(url) == home.resolve()  # the server paperline started, state in PREFECT_HOME
    finally:
        stop(proc)
        subprocess.run([str(BIN / "paperline"), "server", "--stop"], env=env, capture_output=True, timeout=60)
    text = log_path.read_text(errors="replace")
    assert "temporary server" not in text.lower() and "database is locked" not in text, tail(log_path)
    print(f"\npaperline serve (no PREFECT_API_URL): {len(seen)} deployments listed by the server on :{port} "
          f"after {served:.0f}s: {sorted(seen)}")
