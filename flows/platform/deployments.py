"""Deployments of ``prefect.yaml`` turned into served deployments (``paperline serve``).

``prefect.yaml`` is the one description of every flow's deployment and cron schedule; it is
valid input for ``prefect deploy`` (work pool ``paperline``) and is what ``paperline serve``
serves in-process. Schedules ship inactive: ``--activate`` (or ``active: true``) turns them on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_deployments(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    deps = doc.get("deployments") or []
    for d in deps:
        for field in ("name", "entrypoint"):
            if field not in d:
                raise ValueError(f"{path}: a deployment lacks '{field}': {d}")
    return deps


def load_deployments(path: Path, *, activate: bool = False) -> list[Any]:
    from prefect.schedules import Cron

    from flows import FLOWS

    by_entry = {f"flows/{s.module.split('.')[-1]}.py:{s.function}": s for s in FLOWS.values()}
    out = []
    for d in read_deployments(path):
        spec = by_entry.get(d["entrypoint"])
        if spec is None:
            raise ValueError(f"{path}: deployment {d['name']!r} has unknown entrypoint {d['entrypoint']!r}")
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=bool(activate or s.get("active", False)))
            for s in d.get("schedules") or []
            if "cron" in s
        ]
        out.append(
            spec.load_flow().to_deployment(
                name=d["name"], schedules=schedules, description=d.get("description"),
                tags=d.get("tags"), parameters=d.get("parameters") or None,
            )
        )
    return out
