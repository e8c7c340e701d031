"""Helpers for the operations tests: a tiny real flow run, a throwaway DVC repo, a local S3."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import yaml

from prefect_helpers import free_port

BIN = Path(sys.executable).parent
#: the smallest real `animeceleb` run: two anime identities, toon only, 32², three shards
TINY_ANIMECELEB = {
    "identities": 2, "domains": ["anime"], "styles": ["toon"], "frames_per_identity": 2,
    "sequences_per_identity": 0, "resolution": 32, "samples": 1, "frames_per_shard": 2,
    "test_fraction": 0.5, "contact_sheet_samples": 4,
    "resources": {"device": "auto", "cpus_per_step": 0, "workers": 2, "threads_per_worker": 1},
}


def sh(*cmd: str, cwd: Path | None = None, env: dict | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def flow_env(data: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PAPERLINE_DATA=str(data), RAY_AUTH_MODE="disabled", PAPERLINE_RAY_CPUS="2", PYTHONUNBUFFERED="1")
    env.pop("DVC_STAGE", None)
    env.update(extra)
    return env


def project_stage(flow: str) -> dict:
    """The project's own ``dvc.yaml`` stage for ``flow``, minus its code deps (they are files of
    the project, not of a throwaway repo): the outputs, metrics and plots a real run records."""
    from tasks.common.artifacts import PROJECT_ROOT

    stage = dict(yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][flow])
    stage.pop("deps", None)
    return stage


def make_dvc_repo(root: Path, flow: str = "animeceleb", params: dict | None = None, stage: dict | None = None) -> Path:
    """A git + DVC repo whose one stage runs a paperline flow with this repo's params.yaml
    (``stage``: that stage's definition, by default a small one for ``animeceleb``)."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump({flow: params or TINY_ANIMECELEB}, sort_keys=False))
    stage = stage or {
        "cmd": f"{BIN / 'paperline'} run {flow} --params params.yaml",
        "params": [flow],
        "outs": [{f"data/{flow}/plan": {"persist": True}}, {f"data/{flow}/shards": {"persist": True}},
                 {f"data/{flow}/dataset/manifest.parquet": {"persist": True}}],
        "metrics": [{f"data/{flow}/dataset/stats.json": {"persist": True}}],
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {flow: stage}}, sort_keys=False))
    (root / ".gitignore").write_text("/data/\n")
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "ci@paperline", cwd=root)
    sh("git", "config", "user.name", "ci", cwd=root)
    sh(str(BIN / "dvc"), "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "init", cwd=root)
    return root


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def moto_s3(bucket: str = "paperline") -> Iterator[dict[str, str]]:
    """An S3 endpoint on 127.0.0.1 (moto_server) with one bucket; yields endpoint + credentials."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"endpoint": endpoint, "bucket": bucket, "key": "AKIAPAPERLINETEST", "secret": "paperline-secret-" + os.urandom(6).hex(),
             "region": "us-east-1"}
    try:
        import boto3

        deadline = time.monotonic() + 30
        while True:
            try:
                s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=creds["key"],
                                  aws_secret_access_key=creds["secret"], region_name=creds["region"])
                s3.create_bucket(Bucket=bucket)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        yield creds
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_keys(creds: dict[str, str], prefix: str = "") -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=creds["endpoint"], aws_access_key_id=creds["key"],
                      aws_secret_access_key=creds["secret"], region_name=creds["region"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=creds["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
