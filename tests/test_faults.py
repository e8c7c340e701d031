"""Faults, each injected for real: the flow still completes, nothing is missing or duplicated,
and what is redone is only what was lost (counted from the shard log)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from ops_helpers import BIN, TINY_ANIMECELEB, flow_env, make_dvc_repo, sh

pytestmark = pytest.mark.slow  # real flow runs, each ~1-2 min on 2 cores

#: more shards than TINY_ANIMECELEB, so there is something to lose mid-render
FAULT_RUN = {**TINY_ANIMECELEB, "identities": 3, "frames_per_identity": 5, "frames_per_shard": 2, "test_fraction": 0.34}
N_SHARDS = 3 * 3  # 3 identities × (1 basis + 5 random) frames / 2 per shard


def wait_for(pred, timeout=300.0, poll=0.2):
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("condition not met")
        time.sleep(poll)


def tars(data: Path) -> list[Path]:
    return sorted((data / "animeceleb" / "shards").glob("*.tar"))


def check_complete(data: Path) -> pd.DataFrame:
    manifest = pd.read_parquet(data / "animeceleb" / "dataset" / "manifest.parquet")
    plan = pd.read_parquet(data / "animeceleb" / "plan" / "plan.parquet")
    assert manifest["frame_id"].is_unique and set(manifest["frame_id"]) == set(plan["frame_id"])
    assert len(tars(data)) == plan["shard"].nunique() == N_SHARDS
    return manifest


def render_log(data: Path) -> list[dict]:
    return json.loads((data / "animeceleb" / "render_log" / "runs.json").read_text())


def run_cli(data: Path, **popen) -> subprocess.Popen:
    sets = [f"{k}={v}" for k, v in FAULT_RUN.items()]
    return subprocess.Popen([str(BIN / "paperline"), "run", "animeceleb", "--set", *sets],
                            env=flow_env(data, PAPERLINE_NO_DVC="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def test_killing_a_ray_worker_mid_step_is_survived_by_a_flow_retry(prefect_server, tmp_path, monkeypatch):
    """SIGKILL the Ray worker process that runs the render step (and so owns the Blender actors)."""
    import psutil
    import ray

    from flows.animeceleb import animeceleb
    from tasks.animeceleb.config import AnimeCelebConfig
    from flows.platform.runner import make_task_runner, ray_init_kwargs

    data = tmp_path / "data"
    monkeypatch.setenv("PAPERLINE_DATA", str(data))
    monkeypatch.setenv("PAPERLINE_NO_DVC", "1")
    ray.shutdown()
    ray.init(**ray_init_kwargs(None))
    killed: list[int] = []

    def kill_render_step():
        wait_for(lambda: len(tars(data)) >= 2)
        for p in psutil.process_iter(["pid", "cmdline"]):
            if "ray::animeceleb.render" in " ".join(p.info["cmdline"] or []):
                killed.append(len(tars(data)))
                os.kill(p.info["pid"], signal.SIGKILL)
                return

    killer = threading.Thread(target=kill_render_step, daemon=True)
    killer.start()
    t0 = time.perf_counter()
    try:
        animeceleb.with_options(task_runner=make_task_runner())(config=AnimeCelebConfig(**FAULT_RUN))
    finally:
        ray.shutdown()
    wall = time.perf_counter() - t0
    killer.join(timeout=5)
    assert killed, "the render step's worker was never found"
    check_complete(data)
    log = render_log(data)
    assert len(log) == 1  # the killed attempt never finished; the retry resumed it
    redone = log[0]["shards_rendered"]
    assert log[0]["shards_skipped"] >= killed[0] and redone <= N_SHARDS - killed[0]
    print(f"\nkill Ray worker mid-step: {killed[0]} shards done at the kill; the retry skipped "
          f"{log[0]['shards_skipped']} and rendered {redone}; run incl. recovery {wall:.1f} s")


def test_killing_the_flow_process_then_rerunning_redoes_only_missing_shards(prefect_server, tmp_path):
    repo = make_dvc_repo(tmp_path / "repo", params=FAULT_RUN)
    data = repo / "data"
    env = flow_env(data)
    first = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(tars(data)) >= 3)
    done_at_kill = len(tars(data))
    os.killpg(first.pid, signal.SIGKILL)  # the flow, its embedded Ray and DVC, all at once
    first.wait()
    t0 = time.perf_counter()
    sh(str(BIN / "dvc"), "repro", cwd=repo, env=env)
    recovery = time.perf_counter() - t0
    check_complete(data)
    log = render_log(data)
    assert log[-1]["shards_skipped"] >= done_at_kill
    assert log[-1]["shards_rendered"] == N_SHARDS - log[-1]["shards_skipped"]
    status = sh(str(BIN / "dvc"), "status", cwd=repo, env=env).stdout
    assert "up to date" in status, status  # DVC's checksums match what is on disk
    print(f"\nkill flow process: {done_at_kill} shards done at the kill, rerun rendered "
          f"{log[-1]['shards_rendered']} of {N_SHARDS} in {recovery:.1f} s")


def test_two_runs_at_once_render_every_shard_once(prefect_server, tmp_path):
    data = tmp_path / "data"
    t0 = time.perf_counter()
    a, b = run_cli(data), run_cli(data)
    out_a, _ = a.communicate(timeout=900)
    out_b, _ = b.communicate(timeout=900)
    wall = time.perf_counter() - t0
    assert a.returncode == 0, out_a[-3000:]
    assert b.returncode == 0, out_b[-3000:]
    assert "waiting" in out_a + out_b  # one run waited for the other's lock
    check_complete(data)
    log = render_log(data)
    assert len(log) == 1 and log[0]["shards_rendered"] == N_SHARDS  # the second run rendered nothing
    print(f"\ntwo runs at once: both completed in {wall:.1f} s, {log[0]['shards_rendered']} shards rendered once")


def test_two_dvc_repros_at_once_one_is_refused_by_dvcs_lock_and_a_rerun_is_a_no_op(prefect_server, tmp_path):
    repo = make_dvc_repo(tmp_path / "repo", params=TINY_ANIMECELEB)
    env = flow_env(repo / "data")
    first = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (repo / "data" / "animeceleb" / "plan").exists() or first.poll() is not None)
    second = sh(str(BIN / "dvc"), "repro", cwd=repo, env=env, check=False)
    assert second.returncode != 0 and "lock" in (second.stdout + second.stderr).lower()
    out, _ = first.communicate(timeout=900)
    assert first.returncode == 0, out[-3000:]
    again = sh(str(BIN / "dvc"), "repro", cwd=repo, env=env).stdout
    assert "didn't change" in again or "up to date" in again, again
    assert sh(str(BIN / "dvc"), "status", cwd=repo, env=env).stdout.strip().endswith("up to date.")
