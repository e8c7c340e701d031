"""One run of a flow at a time per data folder.

Two runs of the same flow on the same ``data/<flow>/`` (a schedule firing while a user runs
it, two dashboard clicks) would render or train the same outputs twice and race on
``dvc commit``. The flow holds an exclusive lock file for its whole run; a second run waits,
then finds every step finished and reuses it. (``dvc repro`` has DVC's own repo lock on top.)
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks.common.artifacts import data_root


@contextmanager
def run_lock(flow: str, *, timeout: float | None = None, poll: float = 1.0) -> Iterator[Path]:
    path = data_root() / flow / ".run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    t0, announced = time.monotonic(), False
    try:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    fh.seek(0)
                    print(f"{flow}: another run holds {path} ({fh.read().strip() or 'unknown'}); waiting", flush=True)
                    announced = True
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"{flow}: {path} still locked after {timeout:.0f}s") from None
                time.sleep(poll)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield path
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
