"""What a person sees while ``paperline run`` works, and where everything else goes.

The console shows one line when each step starts and ends (with its time, or that it was
reused), live progress bars drawn in place (``tqdm_ray`` from the Ray workers), warnings, the
final table and where things are. Everything — Prefect's logs, every Ray worker line, library
warnings and loading bars — goes to one log file per run, ``data/<flow>/logs/<time>.log``.
``paperline -v run`` shows everything on the console as well.

Ray prints its workers' lines from a dispatcher in the driver; we replace that handler (after
starting Ray ourselves, before the flow's task runner reuses it) with one that routes each
line: progress-bar state to Ray's bar manager, step events to the console, the rest to the file.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from rich.console import Console

from tasks.common.artifacts import data_root
from tasks.common.steps import STEP_EVENT

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class RunLog:
    """One run's log file, and the routing of worker lines and log records into it."""

    def __init__(self, flow: str, console: Console, *, verbose: bool = False):
        self.flow, self.console, self.verbose = flow, console, verbose
        folder = data_root() / flow / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / time.strftime("%Y%m%d-%H%M%S.log")
        self._fh: IO[str] = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._handler = logging.StreamHandler(self._fh)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        self._quieted: list[tuple[logging.Handler, int]] = []
        self._tty = sys.stderr.isatty()
        self._bars: dict[str, tuple[float, int]] = {}  # bar uuid → (first seen, last quarter shown)
        self.line_every_s = 20.0

    # ------------------------------------------------------------------ python logging

    def _console_handlers(self) -> Iterator[logging.Handler]:
        loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        seen: set[int] = set()
        for lg in loggers:
            for h in getattr(lg, "handlers", []):
                if id(h) in seen or h is self._handler:
                    continue
                seen.add(id(h))
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stdout, sys.stderr) \
                        or type(h).__name__ == "PrefectConsoleHandler":
                    yield h

    def attach_logging(self) -> None:
        """Every logger's records to the file; consoles keep only warnings unless verbose."""
        for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "paperline"):
            lg = logging.getLogger(name)
            if self._handler not in lg.handlers:
                lg.addHandler(self._handler)
        if not self.verbose:
            for h in self._console_handlers():
                self._quieted.append((h, h.level))
                h.setLevel(logging.WARNING)

    # ------------------------------------------------------------------ ray worker lines

    def attach_ray(self) -> None:
        """Route Ray worker output (call after ``ray.init`` in this process)."""
        from ray._private import worker as ray_worker

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", self._on_worker_lines)

    def _on_worker_lines(self, data: dict[str, Any]) -> None:
        from ray._private import worker as ray_worker
        from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

        lines = data.get("lines", [])
        who = data.get("task_name") or data.get("actor_name") or f"pid={data.get('pid')}"
        for line in lines:
            if RAY_TQDM_MAGIC not in line:
                self._fh.write(f"[{who}] {_ANSI.sub('', line)}\n")
        if self.verbose:
            ray_worker.print_to_stdstream(data, ignore_prefix=False)
            return
        bars = [ln for ln in lines if RAY_TQDM_MAGIC in ln]
        if bars and self._tty:
            ray_worker.print_worker_logs({**data, "lines": bars}, sys.stderr)
        elif bars:
            self._plain_progress(bars)
        for line in lines:
            if STEP_EVENT in line:
                self.step_event(line.split(STEP_EVENT, 1)[1].strip())

    def _plain_progress(self, bars: list[str]) -> None:
        """Without a terminal (CI, a pipe) a redrawn bar is noise: a loop that has run for
        ``line_every_s`` seconds gets one plain line as it passes each quarter instead."""
        import json

        now = time.monotonic()
        for line in bars:
            try:
                state = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            uid, total, x = state.get("uuid"), state.get("total") or 0, state.get("x", 0)
            started, shown = self._bars.setdefault(uid, (now, 0))
            quarter = int(4 * x / total) if total else 0
            if state.get("closed") or now - started < self.line_every_s or quarter <= shown or quarter >= 4:
                continue
            self._bars[uid] = (started, quarter)
            self.console.print(f"    … {state.get('desc', '')}: {x}/{total} ({100 * x / total:.0f}%, "
                               f"{now - started:.0f}s)", highlight=False, soft_wrap=True, markup=False)

    def step_event(self, text: str) -> None:
        """One console line per finished step (a start line would double the log; long steps
        show a live bar instead)."""
        from rich.markup import escape

        for verb, mark, style in (("done", "✓", "green"), ("reused", "↺", "cyan"), ("failed", "✗", "red")):
            head, sep, tail = text.rpartition(f" {verb}")
            if sep:
                self.console.print(f"  [{style}]{mark}[/] {escape(head)} [{style}]{verb}{escape(tail)}[/]",
                                   highlight=False, soft_wrap=True)
                return

    def close(self) -> None:
        for h, level in self._quieted:
            h.setLevel(level)
        for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "paperline"):
            logging.getLogger(name).removeHandler(self._handler)
        self._fh.close()


@contextmanager
def run_console(flow: str, console: Console, *, verbose: bool = False) -> Iterator[RunLog]:
    """Start the embedded Ray (unless ``RAY_ADDRESS``) with worker lines routed through the run log."""
    import ray

    from .runner import ray_init_kwargs

    log = RunLog(flow, console, verbose=verbose)
    started_ray = False
    try:
        log.attach_logging()
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            kwargs = ray_init_kwargs(address)
            ray.init(address=address, **kwargs) if address else ray.init(**kwargs)
            started_ray = True
        log.attach_ray()
        yield log
    finally:
        if started_ray:
            ray.shutdown()
        log.close()


def tail(path: Path, n: int = 30) -> str:
    lines = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])
