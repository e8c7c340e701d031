"""Markdown tables for reports (the Prefect artifact, ``table.md``, the README)."""
from __future__ import annotations

from typing import Any


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    if not rows:
        return "_(no rows)_"
    cols = columns or list(rows[0])
    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
