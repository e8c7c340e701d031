"""Markdown tables for reports (the Prefect artifact, ``table.md``, the README), by pandas/tabulate."""
from __future__ import annotations

from typing import Any

import pandas as pd


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = ".4g") -> str:
    """A GitHub-style pipe table of ``rows`` (missing cells blank, floats to ``floatfmt``)."""
    if not rows:
        return "_(no rows)_"
    frame = pd.DataFrame(rows, columns=columns or list(rows[0]))
    frame = frame.astype(object).where(frame.notna(), None)  # tabulate blanks None, not NaN
    return frame.to_markdown(index=False, tablefmt="github", floatfmt=floatfmt, missingval="")
