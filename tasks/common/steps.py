"""Step plumbing, written once for every domain's ``steps.py``.

``@step("stun.evaluate", run_name="evaluate[{variant}]")`` turns a plain path-in / path-out
function into a Prefect task with the platform's options (no Prefect result cache — the
step's own (inputs, config, code) cache decides —, no result persistence, one task retry for
transient faults, never for configuration or data errors). While it runs,
:func:`tasks.common.artifacts.cache_key` takes the step's code fingerprint from its real import
closure (:mod:`tasks.common.codehash`), and a step whose every output was reused ends in
Prefect's ``Cached`` state, so the dashboard tells reuse from work.

A step folder filled piece by piece (render shards, training checkpoints) is a
:class:`ResumableStep`: it keeps the pieces made for its key across a crash, verifies each
piece it reuses against the sizes and hashes recorded when it was written, and redoes a piece
that fails.
"""
from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .artifacts import CURRENT_STEP, note_reuse, file_manifest, is_complete, mark_complete, read_json, verify, write_json
from .codehash import code_fingerprint

F = TypeVar("F", bound=Callable[..., Any])

#: Errors that a retry cannot fix: bad configuration or damaged data. They fail the step once.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError)


def is_transient(exc: BaseException) -> bool:
    """Worth a retry: a lost worker, a timeout, an OS hiccup — not a config or data error
    (looked for through the wrappers an error travels in, e.g. Ray's ``RayTaskError.cause``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DETERMINISTIC_ERRORS):
            return False
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__
    return True


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except BaseException as e:  # noqa: BLE001 - classifying the step's own failure
        return is_transient(e)
    return True


#: prefix of the one-line step start/end events the CLI console shows (and the run log keeps)
STEP_EVENT = "paperline ▸"


def _task_run_name(default: str) -> str:
    try:
        from prefect.context import TaskRunContext

        ctx = TaskRunContext.get()
        return ctx.task_run.name if ctx else default
    except Exception:
        return default


@dataclass
class StepRun:
    """What a running step knows about itself: its code fingerprint and whether it reused."""

    name: str
    code: str
    reused: bool | None = None


def step(name: str, *, run_name: str | None = None, retries: int = 1) -> Callable[[F], F]:
    """Decorate a domain step: a Prefect task named ``name`` with derived code fingerprint."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            # Only module-level names in here: Ray pickles this closure by value.
            return _execute(name, fn, args, kwargs)

        from prefect import task
        from prefect.cache_policies import NO_CACHE

        return task(
            name=name, task_run_name=run_name or name.split(".", 1)[-1], cache_policy=NO_CACHE,
            persist_result=False, retries=retries, retry_delay_seconds=2, retry_condition_fn=_retry_transient,
        )(run)

    return deco


_CODE: dict[Any, str] = {}


def _execute(name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run a step body with its code fingerprint in context; report start/end; mark reuse."""
    if fn not in _CODE:
        _CODE[fn] = code_fingerprint(fn)
    ctx = StepRun(name, _CODE[fn])
    label = _task_run_name(name)
    token = CURRENT_STEP.set(ctx)
    t0 = time.perf_counter()
    print(f"{STEP_EVENT} {label} started", flush=True)
    try:
        out = fn(*args, **kwargs)
    except BaseException as e:
        print(f"{STEP_EVENT} {label} failed after {time.perf_counter() - t0:.1f}s: {type(e).__name__}", flush=True)
        raise
    finally:
        CURRENT_STEP.reset(token)
    seconds = time.perf_counter() - t0
    if ctx.reused:
        from prefect.states import Completed

        print(f"{STEP_EVENT} {label} reused ({seconds:.1f}s)", flush=True)
        # Prefect's own name for a completed run that reused a result: the dashboard shows "Cached".
        return Completed(name="Cached", data=out, message=f"{name}: reused outputs whose key matched")
    print(f"{STEP_EVENT} {label} done in {seconds:.1f}s", flush=True)
    return out


def step_logger(name: str = "paperline") -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a step; a plain logger when called outside Prefect (tests, bench)."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:
        return logging.getLogger(name)


def set_threads(n: int) -> int:
    """Intra-op threads for this worker: the CPUs Ray gave the step (at least one)."""
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    return n


class ResumableStep:
    """A step folder filled piece by piece, resumable after a crash without trusting a marker.

    ``claim`` keeps what was made for this key and clears a folder made for another; each
    finished piece is ``record``-ed with its files' sizes and hashes; ``done(piece)`` is true
    only while every recorded file of that piece is intact, so a truncated or deleted shard
    is made again; ``complete`` writes the step marker over the whole folder.
    """

    CLAIM = ".claim.json"

    def __init__(self, out: Path | str, key: str):
        self.out, self.key = Path(out), key

    def is_complete(self) -> bool:
        """Every piece made and intact (then the step is reused and shows as Cached)."""
        done = is_complete(self.out, self.key)
        if done:
            note_reuse(True)
        return done

    def claim(self) -> "ResumableStep":
        marker = self.out / self.CLAIM
        try:
            same = marker.is_file() and read_json(marker).get("key") == self.key
        except ValueError:
            same = False
        if self.out.exists() and not same:
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER_DIR).mkdir(exist_ok=True)
        if not marker.is_file():
            write_json(marker, {"key": self.key})
        (self.out / ".step.json").unlink(missing_ok=True)  # the whole is done only once more
        return self

    def _piece(self, piece: str) -> Path:
        return self.out / MARKER_DIR / f"{piece}.json"

    def record(self, piece: str, files: Iterable[str]) -> None:
        """Call after the piece's files were written (atomically) into the folder."""
        manifest = {f: m for f, m in file_manifest(self.out).items() if f in set(files)}
        missing = set(files) - set(manifest)
        if missing:
            raise FileNotFoundError(f"{self.out}: piece {piece!r} lacks {sorted(missing)}")
        write_json(self._piece(piece), {"files": manifest})

    def done(self, piece: str) -> bool:
        rec = self._piece(piece)
        if not rec.is_file():
            return False
        try:
            files = read_json(rec)["files"]
        except (ValueError, KeyError):
            return False
        if verify(self.out, files):
            rec.unlink(missing_ok=True)
            return False
        return True

    def complete(self, **info: Any) -> None:
        mark_complete(self.out, self.key, **info)


#: where a ResumableStep keeps its per-piece records (a hidden folder: not content)
MARKER_DIR = ".pieces"
