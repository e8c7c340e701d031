"""Artifact IO for every step: atomic writes and the (inputs, config, code) step cache.

A step owns one folder, ``data/<flow>/<step>/``. It is either complete — its outputs exist and
its ``.step.json`` marker records the cache key they were made with — or it is redone. Files
and folders are written to a temporary sibling and renamed into place, so a crash never leaves
a half-written artifact that a rerun would mistake for a finished one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel

MARKER = ".step.json"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Root of all flow outputs; ``PAPERLINE_DATA`` moves it (tests use a temp dir)."""
    return Path(os.environ.get("PAPERLINE_DATA", PROJECT_ROOT / "data"))


def step_dir(flow: str, step: str) -> Path:
    return data_root() / flow / step


@contextmanager
def atomic_path(final: Path | str, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if final.exists():
                old = final.with_name(f".{final.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path | str, obj: Any) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return o.model_dump(mode="json")
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------- fingerprints


def fingerprint_path(path: Path | str) -> str:
    """Stable digest of an input. A finished step folder is identified by its cache key;
    anything else (a user's checkpoint) by the names, sizes and contents of its files."""
    path = Path(path)
    marker = path / MARKER
    if marker.is_file():
        return "step:" + read_json(marker)["key"]
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()


def _file_digest(f: Path) -> str:
    st = f.stat()
    if st.st_size > 256 * 2**20:  # big weight shards: size + mtime is enough and avoids reading GBs
        return f"{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(f.read_bytes()).hexdigest()


def fingerprint_code(packages: Iterable[str]) -> str:
    """Digest of the Python sources of the given packages (e.g. ``tasks/stun``)."""
    h = hashlib.sha256()
    for pkg in sorted(packages):
        root = PROJECT_ROOT / pkg
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for f in files:
            h.update(str(f.relative_to(PROJECT_ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(*, step: str, config: Any, inputs: Iterable[Path | str] = (), code: Iterable[str] = ()) -> str:
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(
        {
            "step": step,
            "config": cfg,
            "inputs": [fingerprint_path(p) for p in inputs],
            "code": fingerprint_code(code),
        },
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def is_complete(out_dir: Path | str, key: str) -> bool:
    marker = Path(out_dir) / MARKER
    return marker.is_file() and read_json(marker).get("key") == key


def mark_complete(out_dir: Path | str, key: str, **info: Any) -> None:
    """Written last: its presence is what makes a step folder count as done."""
    write_json(Path(out_dir) / MARKER, {"key": key, **info})


@contextmanager
def cached_step(out_dir: Path | str, key: str, **info: Any) -> Iterator[Path | None]:
    """Run a step into a fresh temp folder unless ``out_dir`` already holds this key.

    Yields ``None`` when cached (skip the work), else the temp folder to fill; on success it is
    renamed onto ``out_dir`` together with its marker.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir, key):
        yield None
        return
    with atomic_path(out_dir, is_dir=True) as tmp:
        yield tmp
        mark_complete(tmp, key, **info)
