"""README "Scaling out", the production path, run exactly as written: a Prefect server whose state
is in PostgreSQL (Debian's package: a throwaway cluster on 127.0.0.1), a process work pool,
``prefect deploy --all`` from ``prefect.yaml``, ``prefect worker start``; then a tiny
``animeceleb`` run triggered through the API completes on that worker, with its outputs in a
temp data root and its DVC record in a throwaway DVC repository.

The commands are read from the README's block and run line by line with the placeholders filled
in, so the README cannot drift from what is tested. Debian's ``postgresql`` is installed when it
is missing and the test runs as root (CI does); elsewhere the test is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from ops_helpers import make_dvc_repo, project_stage, sh
from prefect_helpers import BIN, TINY_ANIMECELEB, free_port, healthy, stop, tail
from tasks.common.artifacts import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD = "pl-" + os.urandom(6).hex()
FLOW, DEPLOYMENT = "animeceleb", "animeceleb-nightly"


def readme_commands() -> list[str]:
    """The bash block under the README's "A Prefect server", one command a line, comments dropped."""
    text = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text[text.index("**A Prefect server**"):], re.S).group(1)
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def fill(cmd: str, pg_port: int, api_port: int) -> str:
    """The README's placeholders → this test's database and server."""
    cmd = re.sub(r"\bPASSWORD\b", PASSWORD, cmd)
    cmd = re.sub(r"\b(DBHOST|SERVER)\b", "127.0.0.1", cmd)
    return cmd.replace("5432", str(pg_port)).replace("4200", str(api_port))


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def ensure_postgres() -> Path:
    """Debian's PostgreSQL server binaries, installed with apt when missing and we are root."""
    if postgres_bindir() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], env=env, capture_output=True)
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server (Debian: apt-get install postgresql; CI installs it)")
    return bindir


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[dict]:
    """A PostgreSQL cluster in a temp dir, on 127.0.0.1:<free port>, with the README's role and
    database (``prefect``, password auth over TCP). PostgreSQL refuses to run as root: as root,
    its commands run as the ``postgres`` user the package creates."""
    bindir = ensure_postgres()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="plpg", dir="/tmp"))  # short: a unix socket path is <108 bytes
    if as_user:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data)]
    sh(*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
       "--auth-local=trust", "--auth-host=scram-sha-256")
    sh(*pg_ctl, "-l", str(base / "postgres.log"), "-w", "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
       "start")
    try:
        admin = ["-h", str(base), "-p", str(port), "-U", "postgres"]
        psql = [str(bindir / "psql"), *admin, "-v", "ON_ERROR_STOP=1", "-qtA"]
        # the README's one-time set-up on the database host
        sh(*psql, "-c", f"CREATE ROLE prefect LOGIN PASSWORD '{PASSWORD}'")
        sh(str(bindir / "createdb"), *admin, "--owner", "prefect", "prefect")
        yield {"port": port, "psql": psql}
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_the_readme_production_path_runs_a_flow_on_a_worker_against_postgresql(tmp_path):
    import pandas as pd
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.animeceleb.config import AnimeCelebConfig

    commands = readme_commands()
    assert any("deploy --all" in c for c in commands) and any("worker start" in c for c in commands), commands
    expected = {d["name"] for d in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]}
    # Where the worker's runs write: a DVC repo whose params.yaml is this run's config, so the
    # run's DVC record is true (a config other than params.yaml's is left unrecorded, by design).
    tiny = AnimeCelebConfig(**TINY_ANIMECELEB).model_dump(mode="json")
    repo = make_dvc_repo(tmp_path / "repo", FLOW, params=tiny, stage=project_stage(FLOW))
    api_port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "DVC_")) and k not in ("RAY_ADDRESS", "PAPERLINE_NO_DVC")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PREFECT_HOME=str(tmp_path / "prefect_home"),
               PAPERLINE_DATA=str(repo / "data"), PAPERLINE_RAY_CPUS="2", PYTHONUNBUFFERED="1")
    services: list[subprocess.Popen] = []
    timings: list[tuple[str, float]] = []
    t_start = time.monotonic()
    with throwaway_postgres() as pg:
        try:
            for raw in commands:
                cmd, t0 = fill(raw, pg["port"], api_port), time.monotonic()
                export = re.fullmatch(r"export (\w+)=(\S+)", cmd)
                if export:
                    env[export[1]] = export[2]
                    continue
                service = re.search(r"prefect (server|worker) start", cmd)
                if service:  # a long-running service: started in its own session, stopped at the end
                    log = tmp_path / f"{service[1]}.log"
                    with open(log, "wb") as out:
                        services.append(subprocess.Popen(["bash", "-c", cmd], cwd=PROJECT_ROOT, env=dict(env),
                                                         stdout=out, stderr=subprocess.STDOUT,
                                                         stdin=subprocess.DEVNULL, start_new_session=True))
                    if service[1] == "server":
                        url = f"http://127.0.0.1:{api_port}/api"
                        while not healthy(url):
                            assert services[-1].poll() is None, "prefect server exited:\n" + tail(log)
                            assert time.monotonic() - t0 < 180, "prefect server not healthy:\n" + tail(log)
                            time.sleep(1)
                else:
                    sh("bash", "-c", cmd, cwd=PROJECT_ROOT, env=dict(env), timeout=300)
                timings.append((raw.split("=")[0] if raw.startswith("prefect config") else raw.split("  ")[0],
                                time.monotonic() - t0))

            api = env["PREFECT_API_URL"]
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                assert {d.name for d in client.read_deployments()} == expected  # `deploy --all`: every flow
                dep = client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
                assert dep.work_pool_name == "paperline"
                t0 = time.monotonic()
                run = client.create_flow_run_from_deployment(dep.id, parameters={"config": TINY_ANIMECELEB})
                while not (run := client.read_flow_run(run.id)).state.is_final():
                    assert all(p.poll() is None for p in services), tail(tmp_path / "worker.log")
                    assert time.monotonic() - t0 < 300, f"{run.state}\n" + tail(tmp_path / "worker.log")
                    time.sleep(3)
                t_run = time.monotonic() - t0
                states = [s.type.value for s in client.read_flow_run_states(run.id)]
                artifacts = client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
            with urllib.request.urlopen(f"{api}/admin/settings", timeout=5) as r:
                server_settings = json.loads(r.read())
            # the run is in PostgreSQL: the server's state lives there, not in a SQLite file
            in_postgres = sh(*pg["psql"], "-d", "prefect", "-c",
                             f"SELECT state_type FROM flow_run WHERE id = '{run.id}'").stdout.strip()
        finally:
            for p in reversed(services):  # the worker first, while its server still answers
                stop(p)
    total = time.monotonic() - t_start

    worker_log = tail(tmp_path / "worker.log", 6000)
    assert run.state.is_completed(), f"{run.state}\n{worker_log}"
    assert states[0] == "SCHEDULED" and "RUNNING" in states and states[-1] == "COMPLETED", states
    assert run.work_pool_name == "paperline" and run.deployment_id == dep.id
    assert in_postgres == "COMPLETED"
    assert not (tmp_path / "prefect_home" / "prefect.db").exists()
    assert server_settings["server"]["analytics_enabled"] is False  # the README's offline line
    assert "telemetry" not in (tmp_path / "server.log").read_text(errors="replace").lower()
    # the worker's run rendered for real: 2 identities × (neutral basis + 1 random frame) × toon
    out = repo / "data" / FLOW
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    assert len(manifest) == 4 and set(manifest["style"]) == {"toon"} and set(manifest["domain"]) == {"anime"}
    # and recorded itself in DVC: dvc.lock holds a hash for every declared output, and DVC agrees
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][FLOW]
    stage = project_stage(FLOW)
    declared = {next(iter(o)) if isinstance(o, dict) else o
                for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])}
    recorded = {o["path"]: o.get("md5") for o in lock["outs"]}
    assert set(recorded) == declared and all(recorded.values()), recorded
    assert lock["params"]["params.yaml"][FLOW] == tiny
    status = sh(str(BIN / "dvc"), "status", FLOW, cwd=repo).stdout
    assert "up to date" in status, status
    report = next(a for a in artifacts if a.key == f"{FLOW}-report")
    assert "dvc commit" in report.data, report.data
    print(f"\nproduction path: {total:.0f}s in all; "
          + ", ".join(f"{c} {t:.0f}s" for c, t in timings)
          + f"; triggered run {run.name} {' → '.join(states)} in {t_run:.0f}s on the worker; "
          f"{len(recorded)} outputs recorded in dvc.lock")
