"""S3 as configuration: a DVC remote and Prefect result storage on a local S3 endpoint (moto).

Credentials live in the environment or DVC's git-ignored local config — never in the repo and
never in what the tools print.
"""
from __future__ import annotations

import shutil

import pytest

from ops_helpers import BIN, checksums, flow_env, make_dvc_repo, moto_s3, s3_keys, sh

pytestmark = pytest.mark.slow  # each test runs real flows (~1-2 min on 2 cores)


@pytest.fixture
def s3():
    pytest.importorskip("moto")
    with moto_s3() as creds:
        yield creds


def test_dvc_push_wipe_pull_restores_every_output_and_exp_run_diffs_metrics(prefect_server, tmp_path, s3):
    repo = make_dvc_repo(tmp_path / "repo")
    dvc = lambda *a, **kw: sh(str(BIN / "dvc"), *a, cwd=repo, env=env, **kw)  # noqa: E731
    env = flow_env(repo / "data")
    dvc("remote", "add", "-d", "s3", f"s3://{s3['bucket']}/store")
    dvc("remote", "modify", "s3", "endpointurl", s3["endpoint"])
    dvc("remote", "modify", "s3", "region", s3["region"])
    dvc("remote", "modify", "--local", "s3", "access_key_id", s3["key"])
    dvc("remote", "modify", "--local", "s3", "secret_access_key", s3["secret"])
    printed = []

    printed.append(dvc("repro").stdout)
    printed.append(dvc("push").stdout)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "first run", cwd=repo)
    tracked = ("animeceleb/plan", "animeceleb/shards", "animeceleb/dataset/manifest.parquet", "animeceleb/dataset/stats.json")
    outs = lambda: {k: v for k, v in checksums(repo / "data").items() if k.startswith(tracked)}  # noqa: E731
    before = outs()
    assert any(k.endswith(".tar") for k in before) and "animeceleb/dataset/stats.json" in before
    assert len(s3_keys(s3, "store/")) >= len(before) // 2  # directory outs are stored per file

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    printed.append(dvc("pull").stdout)
    assert outs() == before

    printed.append(dvc("exp", "run", "-S", "animeceleb.frames_per_identity=3").stdout)
    diff = dvc("metrics", "diff", "--json").stdout
    printed.append(diff)
    import json

    frames = json.loads(diff)["data/animeceleb/dataset/stats.json"]["frames"]
    assert frames["old"] == 2 * (1 + 2) and frames["new"] == 2 * (1 + 3)

    tracked = sh("git", "ls-files", cwd=repo).stdout.split()
    assert ".dvc/config.local" not in tracked
    assert s3["secret"] not in (repo / ".dvc" / "config").read_text()
    assert s3["secret"] in (repo / ".dvc" / "config.local").read_text()
    assert not any(s3["secret"] in out for out in printed)


def test_flow_results_persist_to_s3_when_configured(prefect_server, tmp_path, s3):
    """Prefect result storage on S3 (through s3fs) is environment, not code."""
    import subprocess

    from ops_helpers import TINY_ANIMECELEB

    block = "paperline-results-" + s3["secret"][-6:]
    env = flow_env(tmp_path / "data", AWS_ACCESS_KEY_ID=s3["key"], AWS_SECRET_ACCESS_KEY=s3["secret"],
                   AWS_ENDPOINT_URL=s3["endpoint"], AWS_DEFAULT_REGION=s3["region"], PAPERLINE_NO_DVC="1")
    save = (
        "from prefect.filesystems import RemoteFileSystem\n"
        f"RemoteFileSystem(basepath='s3://{s3['bucket']}/prefect-results').save('{block}', overwrite=True)\n"
    )
    sh(str(BIN / "python"), "-c", save, env=env)
    env.update(PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
               PREFECT_DEFAULT_RESULT_STORAGE_BLOCK=f"remote-file-system/{block}")
    sets = [f"{k}={v}" for k, v in TINY_ANIMECELEB.items()]
    r = subprocess.run([str(BIN / "paperline"), "run", "animeceleb", "--set", *sets], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert s3_keys(s3, "prefect-results/"), "the flow's result was not written to S3"
    assert s3["secret"] not in r.stdout + r.stderr
