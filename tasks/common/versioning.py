"""Recording a flow's outputs in DVC and publishing its report as a Prefect artifact.

Under ``dvc repro`` / ``dvc exp run`` (DVC sets ``DVC_STAGE``) DVC holds the repo lock and
records the outputs itself, so the flow must not call DVC. Runs started from the CLI or
Prefect commit their stage (``dvc commit``) and push it when a default remote is set.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .artifacts import PROJECT_ROOT

log = logging.getLogger(__name__)


def under_dvc() -> bool:
    return bool(os.environ.get("DVC_STAGE"))


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(exe), *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=check)


def git_revision() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "uncommitted"


def default_remote() -> str | None:
    r = _dvc("remote", "default", check=False)
    name = r.stdout.strip()
    return name or None


def stage_out_hashes(stage: str) -> dict[str, str]:
    lock = PROJECT_ROOT / "dvc.lock"
    if not lock.is_file():
        return {}
    doc = yaml.safe_load(lock.read_text()) or {}
    outs = doc.get("stages", {}).get(stage, {}).get("outs", [])
    return {o["path"]: o.get("md5", "") for o in outs}


def record_outputs(stage: str) -> dict[str, Any]:
    """``dvc commit`` the stage (+ ``dvc push`` to the default remote); returns the revision."""
    info: dict[str, Any] = {"stage": stage, "git": git_revision()}
    if under_dvc():
        info["recorded_by"] = "dvc (running under dvc repro/exp run)"
        return info
    if not (PROJECT_ROOT / ".dvc").is_dir() or os.environ.get("PAPERLINE_NO_DVC"):
        info["recorded_by"] = "nobody (no DVC repository / PAPERLINE_NO_DVC set)"
        return info
    r = _dvc("commit", "--force", stage, check=False)
    if r.returncode != 0:
        log.warning("dvc commit %s failed: %s", stage, r.stderr.strip())
        info["recorded_by"] = f"dvc commit failed: {r.stderr.strip()[:300]}"
        return info
    info["recorded_by"] = "dvc commit"
    info["outs"] = stage_out_hashes(stage)
    remote = default_remote()
    if remote:
        p = _dvc("push", "-r", remote, stage, check=False)
        info["pushed_to"] = remote if p.returncode == 0 else f"push failed: {p.stderr.strip()[:300]}"
    return info


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    if not rows:
        return "_(no rows)_"
    cols = columns or list(rows[0])
    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def publish_report(flow: str, table_md: str, dvc_info: dict[str, Any], extra_md: str = "") -> None:
    """A markdown artifact in the Prefect dashboard: metrics table + DVC revision."""
    from prefect.artifacts import create_markdown_artifact

    outs = "\n".join(f"- `{p}`: `{h}`" for p, h in (dvc_info.get("outs") or {}).items())
    md = (
        f"# {flow}\n\n{table_md}\n\n{extra_md}\n\n"
        f"**DVC**: {dvc_info.get('recorded_by')} · git `{dvc_info.get('git')}`"
        + (f" · pushed to `{dvc_info['pushed_to']}`" if dvc_info.get("pushed_to") else "")
        + (f"\n\n{outs}" if outs else "")
    )
    try:
        create_markdown_artifact(markdown=md, key=f"{flow}-report", description=f"{flow} metrics and DVC revision")
    except Exception as e:  # outside a flow run context (plain function call): nothing to publish to
        log.debug("no Prefect artifact: %s", e)
