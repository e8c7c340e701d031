"""Progress of long loops: a live bar on the console and, for loops that really are long, a
Prefect progress artifact in the dashboard.

Where the loop runs decides how the bar is drawn: inside a Ray worker, ``ray.experimental.
tqdm_ray`` sends the bar's state to the driver, which draws it in place (a carriage-return bar
printed by a worker would arrive as a pipe of separate lines); in a terminal, a tqdm bar; in a
plain pipe, one line every ``line_every_s`` seconds. The count is clamped to the total, and a
callback that reports a different total than the one the bar was made with adopts it — so a
bar never shows ``8/1 (800%)`` or a negative ETA. The dashboard artifact is created only once
a loop has run for ``artifact_after_s`` seconds, so short steps do not litter the run page.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def _in_ray_worker() -> bool:
    try:
        import ray
        from ray._private import worker

        return ray.is_initialized() and worker.global_worker.mode == ray.WORKER_MODE
    except Exception:
        return False


def _in_prefect_run() -> bool:
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        return bool(TaskRunContext.get() or FlowRunContext.get())
    except Exception:
        return False


class Progress:
    """``with Progress("train zoo", total) as p: p.update(1, loss=...)``."""

    def __init__(self, description: str, total: int, *, artifact_after_s: float = 15.0, line_every_s: float = 30.0):
        self.description, self.total, self.n = description, max(int(total), 1), 0
        self._t0 = self._last_line = self._last_artifact = time.monotonic()
        self._artifact_after, self._line_every = artifact_after_s, line_every_s
        self._artifact_id: Any = None
        self._bar: Any = None
        if _in_ray_worker():
            from ray.experimental.tqdm_ray import tqdm as ray_tqdm

            self._bar = ray_tqdm(desc=description, total=self.total, flush_interval_s=1.0)
        elif sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=description, mininterval=0.5, dynamic_ncols=True, leave=False)

    # ------------------------------------------------------------------ counting

    def update(self, n: int = 1, **postfix: Any) -> None:
        step = max(0, min(int(n), self.total - self.n))
        self.n += step
        now = time.monotonic()
        if self._bar is not None:
            if step:
                self._bar.update(step)
        elif now - self._last_line >= self._line_every or self.n >= self.total:
            self._last_line = now
            print(self.line(postfix), flush=True)
        self._update_artifact(now)

    def callback(self, step: int, total: int, info: dict | None = None) -> None:
        """Adapter for ``progress(step, total, info)`` callbacks of the method functions."""
        if int(total) > 0 and int(total) != self.total:
            self.total = int(total)
            if self._bar is not None and hasattr(self._bar, "total"):
                self._bar.total = self.total
            elif self._bar is not None:  # tqdm_ray keeps it private
                self._bar._total = self.total
        self.update(int(step) - self.n, **(info or {}))

    def line(self, postfix: dict[str, Any] | None = None) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = max(0.0, (self.total - self.n) / rate) if rate > 0 else None
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (postfix or {}).items())
        left = f", ~{eta:.0f}s left" if eta is not None and self.n < self.total else ""
        return (f"{self.description}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) "
                f"{elapsed:.0f}s{left} {shown}").rstrip()

    # ------------------------------------------------------------------ dashboard

    def _update_artifact(self, now: float) -> None:
        if now - self._t0 < self._artifact_after and self._artifact_id is None:
            return
        if now - self._last_artifact < 2.0 and self.n < self.total:
            return
        self._last_artifact = now
        try:
            if self._artifact_id is None:
                if not _in_prefect_run():
                    self._artifact_after = float("inf")
                    return
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(progress=100.0 * self.n / self.total,
                                                             description=self.description)
            else:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact_id, progress=100.0 * self.n / self.total)
        except Exception as e:  # a dashboard hiccup must never stop the loop
            log.debug("progress artifact: %s", e)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
