"""``paperline status``: DVC's view of each flow, said the way a person needs it.

``dvc status`` on a fresh clone lists every stage that never ran here as a wall of
"modified"/"deleted" lines, indistinguishable from a real problem. This reads the same JSON
and says, per flow, one of: never run here (with the two ways to get its outputs), up to
date, or what changed (code, parameters, outputs missing or edited) and what to do about it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class StageStatus:
    stage: str
    state: str  # "never run" | "up to date" | "changed"
    detail: str = ""
    hint: str = ""


def _dvc_status(repo: Path) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("dvc")
    r = subprocess.run([str(exe), "status", "--json"], cwd=repo, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"dvc status failed: {r.stderr.strip()[:300]}")
    return json.loads(r.stdout or "{}")


def classify(stages: list[str], status: dict[str, Any], locked: set[str]) -> list[StageStatus]:
    out = []
    for stage in stages:
        if stage not in locked:
            out.append(StageStatus(stage, "never run", "no record in dvc.lock",
                                   f"paperline run {stage}  (or: dvc pull {stage} when a remote has it)"))
            continue
        changes = status.get(stage)
        if not changes:
            out.append(StageStatus(stage, "up to date"))
            continue
        deps: dict[str, str] = {}
        outs: dict[str, str] = {}
        for item in changes if isinstance(changes, list) else []:
            if isinstance(item, dict):
                deps.update(item.get("changed deps", {}))
                outs.update(item.get("changed outs", {}))
        code = [p for p in deps if p != "params.yaml"]
        parts = []
        if code:
            parts.append("code changed: " + ", ".join(code))
        if "params.yaml" in deps:
            parts.append("parameters changed")
        missing = [p for p, how in outs.items() if how in ("deleted", "not in cache")]
        edited = [p for p, how in outs.items() if how not in ("deleted", "not in cache")]
        if missing:
            parts.append("outputs missing: " + ", ".join(missing))
        if edited:
            parts.append("outputs differ from the record: " + ", ".join(edited))
        hint = f"dvc pull {stage}" if missing and not code and "params.yaml" not in deps else f"paperline run {stage}  (reruns only what changed)"
        out.append(StageStatus(stage, "changed", "; ".join(parts) or "see dvc status " + stage, hint))
    return out


def flow_status(repo: Path) -> list[StageStatus]:
    doc = yaml.safe_load((repo / "dvc.yaml").read_text()) or {}
    stages = list((doc.get("stages") or {}).keys())
    lock = repo / "dvc.lock"
    locked = set((yaml.safe_load(lock.read_text()) or {}).get("stages", {})) if lock.is_file() else set()
    return classify(stages, _dvc_status(repo), locked)
