"""Typed flow configs: one pydantic model per flow, defaults from its ``params.yaml`` section.

The same model feeds the CLI (``--set key=value``), DVC experiments (``dvc exp run -S
flow.key=value`` edits ``params.yaml``), and the Prefect dashboard form (Prefect renders the
flow's pydantic parameter as a form, using the attribute docstrings as descriptions).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .artifacts import PROJECT_ROOT

C = TypeVar("C", bound="FlowConfig")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""


class FlowConfig(BaseModel):
    """Base of every flow config: unknown keys are errors, docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def default_params_path() -> Path:
    return PROJECT_ROOT / "params.yaml"


def read_section(flow: str, params_path: Path | str | None = None) -> dict[str, Any]:
    path = Path(params_path) if params_path else default_params_path()
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    section = doc.get(flow, {}) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: section '{flow}' must be a mapping, got {type(section).__name__}")
    return section


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b.c=[0.4, 0.5]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, int) and ":" in raw:  # YAML 1.1 reads '2:4' as base-60 124
            value = raw.strip()
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def validate(cls: type[C], values: dict[str, Any], *, flow: str = "") -> C:
    """Build ``cls`` from ``values``; raise :class:`ConfigError` naming every bad field."""
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, flow or cls.__name__)) from None


def format_validation_error(e: ValidationError, prefix: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got_s = "" if err["type"] == "missing" else f" (got {err.get('input')!r})"
        m = re.match(r"^(\w+)[:=]", msg) if err["type"] == "value_error" else None
        if not loc or (m and isinstance(err.get("input"), dict) and m.group(1) in err["input"]):
            # A cross-field check (of the config or of a nested section): its message starts
            # with the field it is about ("nm: ...").
            field = m.group(1) if m else "<config>"
            loc = f"{loc}.{field}" if loc else field
            got_s = ""
            msg = msg.split(": ", 1)[1] if m and msg.startswith(f"{field}: ") else msg
        lines.append(f"{prefix}.{loc}: {msg}{got_s}")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(
    flow: str,
    cls: type[C],
    *,
    params_path: Path | str | None = None,
    overrides: Iterable[str] = (),
) -> C:
    """Defaults of ``cls`` ← ``params.yaml[flow]`` ← ``--set`` overrides, validated once."""
    values = _merge(read_section(flow, params_path), parse_overrides(overrides))
    return validate(cls, values, flow=flow)


def describe(cls: type[BaseModel]) -> list[dict[str, str]]:
    """Rows (name, type, default, description) for ``paperline show``."""
    rows = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        default = f.get_default(call_default_factory=True)
        constraints = " ".join(str(m) for m in f.metadata)
        rows.append(
            {
                "name": name,
                "type": tname + (f" [{constraints}]" if constraints else ""),
                "default": repr(default),
                "description": (f.description or "").strip(),
            }
        )
    return rows
