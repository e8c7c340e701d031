"""Progress of long loops, shown twice: a tqdm bar in the terminal and a Prefect progress
artifact in the dashboard (only when running inside a Prefect task or flow)."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class Progress:
    """``with Progress("train zoo", total) as p: p.update(1, loss=...)``."""

    def __init__(self, description: str, total: int, *, min_interval_s: float = 2.0):
        self.description, self.total, self.n = description, max(int(total), 1), 0
        # In a Ray worker stderr is a pipe whose lines are forwarded to the driver: a carriage-
        # return bar would never show, so print a plain line every few seconds instead.
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(total=self.total, desc=description, mininterval=1.0, dynamic_ncols=True) if self._tty else None
        self._t0 = self._last_line = time.monotonic()
        self._postfix: dict[str, Any] = {}
        self._artifact_id: Any = None
        self._last = 0.0
        self._min_interval = min_interval_s
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import TaskRunContext, FlowRunContext

            if TaskRunContext.get() or FlowRunContext.get():
                self._artifact_id = create_progress_artifact(progress=0.0, description=description)
        except Exception as e:
            log.debug("no Prefect progress artifact: %s", e)

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(n)
            if shown:
                self._bar.set_postfix(shown)
        elif now - self._last_line >= 10.0 or self.n >= self.total:
            self._last_line = now
            rate = self.n / max(now - self._t0, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            extra = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"{self.description}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) "
                  f"{now - self._t0:.0f}s elapsed, ~{eta:.0f}s left {extra}", flush=True)
        if self._artifact_id is not None and (now - self._last >= self._min_interval or self.n >= self.total):
            self._last = now
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact_id, progress=100.0 * self.n / self.total)
            except Exception as e:
                log.debug("progress artifact update failed: %s", e)

    def callback(self, step: int, total: int, info: dict | None = None) -> None:
        """Adapter for ``progress(step, total, info)`` callbacks of the task functions."""
        self.update(max(step - self.n, 0), **(info or {}))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
