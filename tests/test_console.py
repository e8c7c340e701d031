"""The run console: step lines and slow-loop progress on screen, everything in the run's log file."""
from __future__ import annotations

import io
import json

from rich.console import Console

from flows.platform.console import RunLog
from tasks.common.steps import STEP_EVENT


def _bar(uid: str, x: int, total: int = 100) -> str:
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    return json.dumps({"__magic_token__": RAY_TQDM_MAGIC, "x": x, "pos": 0, "desc": "train zoo MoE", "total": total,
                       "unit": "it", "ip": "127.0.0.1", "pid": 1, "uuid": uid, "closed": False})


def test_worker_lines_are_routed_step_events_to_console_noise_to_file(data_root):
    out = io.StringIO()
    log = RunLog("toy", Console(file=out, width=80), verbose=False)
    log._on_worker_lines({"task_name": "stun.evaluate", "pid": 7, "lines": [
        f"{STEP_EVENT} evaluate[owl-s65] started",
        "Loading weights: 100%|█████| 3/3",
        "13:55:48.349 | INFO    | Task run 'evaluate[owl-s65]' - Finished in state Completed()",
        f"{STEP_EVENT} evaluate[owl-s65] done in 3.1s",
        f"{STEP_EVENT} report reused (0.0s)",
    ]})
    log.close()
    screen = out.getvalue().splitlines()
    assert screen == ["  ✓ evaluate[owl-s65] done in 3.1s", "  ↺ report reused (0.0s)"]  # brackets kept, no start line
    text = log.path.read_text()
    assert "Loading weights" in text and "Finished in state Completed" in text and "started" in text


def test_without_a_terminal_a_long_loop_gets_a_plain_line_per_quarter(data_root, monkeypatch):
    out = io.StringIO()
    log = RunLog("toy", Console(file=out, width=80), verbose=False)
    log._tty = False
    clock = iter([0.0, 1.0, 25.0, 26.0, 40.0, 50.0])
    monkeypatch.setattr("flows.platform.console.time.monotonic", lambda: next(clock))
    for x in (1, 30, 60, 61, 80, 100):  # a quarter passed early (t=1 s) is not worth a line
        log._on_worker_lines({"pid": 1, "lines": [_bar("a", x)]})
    log.close()
    assert out.getvalue().splitlines() == ["    … train zoo MoE: 60/100 (60%, 25s)", "    … train zoo MoE: 80/100 (80%, 40s)"]
