"""Recording a flow's outputs in DVC and publishing its report as a Prefect artifact.

Under ``dvc repro`` / ``dvc exp run`` (DVC sets ``DVC_STAGE``) DVC holds the repo lock and
records the outputs itself, so the flow must not call DVC. Runs started from the CLI or
Prefect commit their stage (``dvc commit``) and push it when a default remote is set — but
only when the record would be true:

- the DVC repository is the one that holds the data root (``PAPERLINE_DATA`` outside any DVC
  repository records nothing, and says so, rather than the hashes of some other ``data/``);
- the run's resolved config equals that repository's ``params.yaml`` section: ``dvc commit``
  records ``params.yaml``'s values beside the outputs, so a ``--set`` run would be filed under
  parameters it was not made with. Such a run is left unrecorded, with the ``dvc exp run -S``
  command that would version it.

After a commit, ``dvc.lock`` is staged in git when the repository's ``core.autostage`` is on.
"""
from __future__ import annotations

import configparser
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tasks.common.artifacts import data_root
from tasks.common.config import ConfigError, read_section, validate

log = logging.getLogger(__name__)


def under_dvc() -> bool:
    return bool(os.environ.get("DVC_STAGE"))


def dvc_repo_of(path: Path) -> Path | None:
    """The DVC repository (a folder with ``.dvc/``) that contains ``path``, if any."""
    path = Path(path).resolve()
    for d in (path, *path.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(exe), *args], cwd=repo, capture_output=True, text=True)


def git_revision(repo: Path | None = None) -> str:
    from tasks.common.artifacts import PROJECT_ROOT

    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo or PROJECT_ROOT, capture_output=True, text=True)
    return r.stdout.strip() or "uncommitted"


def default_remote(repo: Path) -> str | None:
    name = _dvc(repo, "remote", "default").stdout.strip()
    return name or None


def autostage(repo: Path) -> bool:
    cp = configparser.ConfigParser()
    cp.read([repo / ".dvc" / "config", repo / ".dvc" / "config.local"])
    return cp.get("core", "autostage", fallback="false").strip().lower() in ("true", "1", "yes")


def stage_out_hashes(repo: Path, stage: str) -> dict[str, str]:
    lock = repo / "dvc.lock"
    if not lock.is_file():
        return {}
    doc = yaml.safe_load(lock.read_text()) or {}
    outs = doc.get("stages", {}).get(stage, {}).get("outs", [])
    return {o["path"]: o.get("md5", "") for o in outs}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_drift(stage: str, cfg: BaseModel, params_file: Path) -> dict[str, tuple[Any, Any]]:
    """Fields where the run's config differs from ``params_file``'s section: {key: (run, file)}."""
    try:
        recorded = validate(type(cfg), read_section(stage, params_file), flow=stage).model_dump(mode="json")
    except ConfigError as e:
        return {"<params.yaml>": (None, str(e).splitlines()[-1].strip())}
    ran, filed = _flat(cfg.model_dump(mode="json")), _flat(recorded)
    return {k: (ran.get(k), filed.get(k)) for k in sorted(set(ran) | set(filed)) if ran.get(k) != filed.get(k)}


def exp_run_command(stage: str, drift: dict[str, tuple[Any, Any]]) -> str:
    sets = " ".join(f"-S '{stage}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix(chr(10) + '...').strip()}'"
                    for k, (v, _) in drift.items() if not k.startswith("<"))
    return f"dvc exp run {sets} {stage}".replace("  ", " ")


@dataclass
class Record:
    """What happened to a run's outputs in DVC; ``recorded`` is False whenever nothing was."""

    stage: str
    git: str
    recorded_by: str
    recorded: bool = False
    outs: dict[str, str] | None = None
    pushed_to: str | None = None
    staged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, {}, False) or k == "recorded"}

    def summary(self) -> str:
        extra = f"; pushed to {self.pushed_to}" if self.pushed_to else ""
        return f"{self.recorded_by}{extra} (git {self.git})"


def record_outputs(stage: str, cfg: BaseModel | None = None) -> dict[str, Any]:
    """``dvc commit`` the stage (+ ``dvc push`` to the default remote) when the record is true."""
    repo = dvc_repo_of(data_root())
    git = git_revision(repo)

    def nothing(why: str) -> dict[str, Any]:
        return Record(stage, git, f"not recorded in DVC: {why}").as_dict()

    if under_dvc():
        return Record(stage, git, "dvc (this run is a dvc repro / exp run stage: DVC records it)", recorded=True).as_dict()
    if os.environ.get("PAPERLINE_NO_DVC"):
        return nothing("PAPERLINE_NO_DVC is set")
    if repo is None:
        return nothing(f"the data root {data_root()} is not inside a DVC repository")
    stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {}) if (repo / "dvc.yaml").is_file() else {}
    if stage not in stages:
        return nothing(f"{repo / 'dvc.yaml'} has no stage {stage!r}")
    if cfg is not None:
        drift = config_drift(stage, cfg, repo / "params.yaml")
        if drift:
            keys = ", ".join(f"{stage}.{k}" for k in list(drift)[:6]) + (" …" if len(drift) > 6 else "")
            return nothing(f"this run's config differs from params.yaml at {keys} (DVC would file these outputs "
                           f"under params.yaml's values); to version a run with these values: "
                           f"{exp_run_command(stage, drift)}")
    r = _dvc(repo, "commit", "--force", stage)
    if r.returncode != 0:
        log.warning("dvc commit %s failed: %s", stage, r.stderr.strip())
        return nothing(f"dvc commit failed: {r.stderr.strip()[:300]}")
    rec = Record(stage, git, "dvc commit", recorded=True, outs=stage_out_hashes(repo, stage))
    if autostage(repo):
        g = subprocess.run(["git", "add", "dvc.lock"], cwd=repo, capture_output=True, text=True)
        rec.staged = g.returncode == 0
    remote = default_remote(repo)
    if remote:
        p = _dvc(repo, "push", "-r", remote, stage)
        rec.pushed_to = remote if p.returncode == 0 else f"push failed: {p.stderr.strip()[:300]}"
    return rec.as_dict()


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
