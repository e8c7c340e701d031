"""Report figures: one way to open a matplotlib figure off-screen and write it atomically as PNG."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .artifacts import atomic_path


@contextmanager
def png_figure(path: Path | str, *, ncols: int = 1, size: tuple[float, float] = (6, 4), dpi: int = 120,
               title: str | None = None) -> Iterator[tuple[Any, Any]]:
    """``with png_figure(out / "pareto.png") as (fig, ax): ax.plot(...)`` — Agg backend (no
    display on workers), tight layout, written through a temp file, the figure closed after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size)
    try:
        yield fig, axes
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
