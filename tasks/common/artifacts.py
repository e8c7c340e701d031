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
from contextvars import ContextVar
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable(path: Path) -> Path:
    """Give a temp file/folder the mode a normal file would have (``mkstemp``/``mkdtemp``
    create them 0600/0700, and the rename keeps that: teammates could not read the output)."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    return path


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
    readable(tmp)
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


def sweep_temps(root: Path | str) -> list[Path]:
    """Remove what interrupted atomic writes left under ``root`` (``.name.XXXX.tmp``, ``.name.old``).

    Only safe while no writer is active there: flows call it at start, under their run lock.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    gone = []
    for p in sorted(root.rglob(".*"), key=lambda q: len(q.parts), reverse=True):
        if p.name.endswith(".tmp") or (p.name.endswith(".old") and p.is_dir()):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p)
    return gone


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

#: file digests already computed in this process, keyed by what would change with the content
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_digest(f: Path) -> str:
    """sha256 of a file's bytes (memoised per process on path, inode, size and mtime)."""
    st = f.stat()
    memo = (str(f.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def content_files(path: Path) -> list[Path]:
    """The files that make up an artifact (a file, or a folder's non-hidden files)."""
    if path.is_file():
        return [path]
    # Hidden names are bookkeeping (step markers, piece records, temp leftovers), not content.
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def file_manifest(path: Path | str) -> dict[str, list[Any]]:
    """``{relative path: [size, sha256]}`` of an artifact's content files."""
    path = Path(path)
    return {str(f.relative_to(path)) if path.is_dir() else f.name: [f.stat().st_size, file_digest(f)]
            for f in content_files(path)}


def fingerprint_path(path: Path | str) -> str:
    """Digest of an input computed from its content: names, sizes and bytes of its files.

    Never from a marker found inside it: a marker says what a folder *was*, not what it is
    now (a truncated weight file beside an intact ``.step.json`` must not pass as the model).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    h = hashlib.sha256()
    for name, (size, digest) in sorted(file_manifest(path).items()):
        h.update(f"{name}\0{size}\0{digest}\n".encode())
    return h.hexdigest()


#: the code fingerprint of the step running in this context (set by ``tasks.common.steps.step``)
CURRENT_STEP: ContextVar[Any] = ContextVar("paperline_current_step", default=None)


def cache_key(*, step: str, config: Any, inputs: Iterable[Path | str] = (), code: str | None = None) -> str:
    """Key of a step's outputs: its name, config, the content of its inputs and its code.

    ``code`` defaults to the running step's derived import closure
    (:func:`tasks.common.codehash.code_fingerprint`).
    """
    if code is None:
        ctx = CURRENT_STEP.get()
        if ctx is None:
            raise RuntimeError("cache_key outside a @step needs code= (a tasks.common.codehash fingerprint)")
        code = ctx.code
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(
        {"step": step, "config": cfg, "inputs": [fingerprint_path(p) for p in inputs], "code": code},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def verify(out_dir: Path | str, files: dict[str, list[Any]]) -> list[str]:
    """Names of recorded files that are missing or differ in size or content."""
    out_dir = Path(out_dir)
    bad = []
    for name, (size, digest) in files.items():
        f = out_dir / name
        if not f.is_file() or f.stat().st_size != size or file_digest(f) != digest:
            bad.append(name)
    return bad


def is_complete(out_dir: Path | str, key: str) -> bool:
    """The folder holds this key's outputs, every one as it was when written."""
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return False
    try:
        info = read_json(marker)
    except (ValueError, OSError):
        return False
    if info.get("key") != key or "files" not in info:
        return False
    return not verify(out_dir, info["files"])


def mark_complete(out_dir: Path | str, key: str, **info: Any) -> None:
    """Written last: its presence (with every recorded file intact) makes a step folder done."""
    write_json(Path(out_dir) / MARKER, {"key": key, "files": file_manifest(out_dir), **info})
    note_reuse(False)


def note_reuse(reused: bool) -> None:
    ctx = CURRENT_STEP.get()
    if ctx is not None:
        ctx.reused = reused if ctx.reused is None else (ctx.reused and reused)


@contextmanager
def cached_step(out_dir: Path | str, key: str, **info: Any) -> Iterator[Path | None]:
    """Run a step into a fresh temp folder unless ``out_dir`` already holds this key, intact.

    Yields ``None`` when cached (skip the work), else the temp folder to fill; on success it is
    renamed onto ``out_dir`` together with its marker (which records every file's size and hash).
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir, key):
        note_reuse(True)
        yield None
        return
    with atomic_path(out_dir, is_dir=True) as tmp:
        yield tmp
        mark_complete(tmp, key, **info)
