"""Render shards: a tar of PNGs plus the manifest rows of exactly those PNGs.

A shard is finished when its tar exists: the rows (parquet) are renamed into place first, the
tar last, both from temp files, so a crash leaves either nothing or a complete pair — and a
rerun redoes exactly the shards without a tar. A finished shard is checked before it is
recorded (its tar holds exactly the planned members) and every reader refuses a shard that is
damaged or incomplete with a :class:`DamagedShardError` naming it, never a short or silent
result. Merging checks the union of all shards against the plan: every frame exactly once.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tasks.common.config import DataError
from tasks.common.morphs import MorphModel

from .anime_head import AnimeIdentity, build_anime_head


class DamagedShardError(DataError):
    """A shard's files are missing, truncated or disagree with its rows (a data error: a retry
    cannot fix it; re-render the shard)."""


def build_head(domain: str, seed: int) -> MorphModel:
    """The head of an identity, rebuilt from its seed (procedural anime, or anny human)."""
    if domain == "anime":
        return build_anime_head(AnimeIdentity.sample(seed))
    if domain == "human":
        from .human_head import HumanIdentity, build_human_head

        return build_human_head(HumanIdentity.sample(seed))
    raise ValueError(f"unknown domain {domain!r}")


def shard_paths(out_dir: Path | str, shard: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    return out_dir / f"{shard}.tar", out_dir / f"{shard}.parquet"


def is_done(out_dir: Path | str, shard: str) -> bool:
    tar, rows = shard_paths(out_dir, shard)
    return tar.is_file() and rows.is_file()


def shard_files(shard: str) -> list[str]:
    """The names a finished shard consists of, relative to the shards folder."""
    return [f"{shard}.tar", f"{shard}.parquet"]


def clear_temporaries(out_dir: Path | str) -> int:
    """Remove what a killed worker left half-written (``.<name>.tmp`` files and folders), not the
    folder's bookkeeping (its claim and piece records). Only call while no worker writes there."""
    n = 0
    for p in Path(out_dir).glob(".*.tmp"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n


def remove_shard(out_dir: Path | str, shard: str) -> None:
    for p in shard_paths(out_dir, shard):
        p.unlink(missing_ok=True)


def tar_members(tar_path: Path) -> list[str]:
    """Every member name of a shard's tar, reading it to the end: a tar cut short (which
    ``tarfile`` would otherwise end silently at the last whole header) is a DamagedShardError."""
    try:
        size = tar_path.stat().st_size
        with tarfile.open(tar_path) as tar:
            names = []
            for info in tar:
                names.append(info.name)
                if info.offset_data + info.size > size:
                    raise DamagedShardError(f"shard {tar_path.stem}: {tar_path.name} is truncated inside {info.name}")
    except FileNotFoundError:
        raise DamagedShardError(f"shard {tar_path.stem}: {tar_path.name} is missing") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DamagedShardError(f"shard {tar_path.stem}: {tar_path.name} is unreadable ({e})") from None
    # A cut exactly between two members ends the loop early without an error: callers compare
    # the names with the shard's rows.
    return names


def check_shard(out_dir: Path | str, shard: str, members: list[str] | None = None) -> pd.DataFrame:
    """A finished shard's rows, after checking its tar holds exactly those members (and, when
    given, exactly ``members`` — the plan's); raises :class:`DamagedShardError` naming it."""
    tar_path, rows_path = shard_paths(out_dir, shard)
    try:
        rows = pd.read_parquet(rows_path)
    except FileNotFoundError:
        raise DamagedShardError(f"shard {shard}: {rows_path.name} is missing") from None
    except Exception as e:  # pyarrow raises its own types for a cut or garbled file
        raise DamagedShardError(f"shard {shard}: {rows_path.name} is unreadable ({type(e).__name__}: {e})") from None
    names = tar_members(tar_path)
    if sorted(names) != sorted(rows["member"]):
        raise DamagedShardError(f"shard {shard}: tar members and manifest rows differ "
                                f"({len(names)} members, {len(rows)} rows)")
    if members is not None and sorted(members) != sorted(names):
        raise DamagedShardError(f"shard {shard}: holds {len(names)} members, the plan has {len(members)} others")
    return rows


def render_rows(scene, rows: list[dict[str, Any]], workdir: Path) -> list[Path]:
    """Render ``rows`` (one identity) with a :class:`BlenderScene`; PNG paths in row order."""
    head, head_seed = None, None
    paths = []
    for row in rows:
        if row["identity_seed"] != head_seed:
            head_seed = row["identity_seed"]
            head = build_head(row["domain"], int(head_seed))
        scene.load(head, row["style"], resolution=int(row["resolution"]), key=(row["identity"], row["identity_seed"]))
        path = workdir / row["member"]
        scene.render(path, weights=np.asarray(row["weights"], np.float32), yaw=row["yaw"], pitch=row["pitch"],
                     roll=row["roll"], resolution=int(row["resolution"]), samples=int(row["samples"]),
                     seed=int(row["render_seed"]), denoise=bool(row["denoise"]))
        paths.append(path)
    return paths


def write_shard(out_dir: Path | str, shard: str, rows: list[dict[str, Any]], pngs: list[Path]) -> None:
    tar_path, rows_path = shard_paths(out_dir, shard)
    tmp_rows, tmp_tar = rows_path.with_name(f".{rows_path.name}.tmp"), tar_path.with_name(f".{tar_path.name}.tmp")
    try:
        pd.DataFrame(rows).to_parquet(tmp_rows, index=False)
        with tarfile.open(tmp_tar, "w") as tar:
            for row, png in zip(rows, pngs):
                info = tar.gettarinfo(str(png), arcname=row["member"])
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(png, "rb") as fh:
                    tar.addfile(info, fh)
        os.replace(tmp_rows, rows_path)
        os.replace(tmp_tar, tar_path)  # last: the tar is the shard's "done" mark
    finally:
        tmp_rows.unlink(missing_ok=True)
        tmp_tar.unlink(missing_ok=True)


def render_shard(scene, shard: str, rows: list[dict[str, Any]], out_dir: Path | str,
                 on_frame: Callable[[], None] | None = None) -> dict[str, Any]:
    """Render one shard and write it atomically; a finished shard is skipped."""
    if is_done(out_dir, shard):
        return {"shard": shard, "frames": 0, "seconds": 0.0, "skipped": True, "pid": os.getpid()}
    t0 = time.perf_counter()
    # PNGs in the process's temp folder (a pool worker's scratch), never in the output folder
    with tempfile.TemporaryDirectory(prefix=f"{shard}.") as tmp:
        pngs = render_rows(scene, rows, Path(tmp))
        write_shard(out_dir, shard, rows, pngs)
    return {"shard": shard, "frames": len(rows), "seconds": time.perf_counter() - t0, "skipped": False, "pid": os.getpid()}


def read_member(out_dir: Path | str, shard: str, member: str) -> bytes:
    tar_path, _ = shard_paths(out_dir, shard)
    try:
        with tarfile.open(tar_path) as tar:
            info = tar.getmember(member)
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
    except KeyError:
        raise DamagedShardError(f"shard {shard}: {member} is not in {tar_path.name}") from None
    except FileNotFoundError:
        raise DamagedShardError(f"shard {shard}: {tar_path.name} is missing") from None
    except (tarfile.TarError, EOFError, OSError, AttributeError) as e:
        raise DamagedShardError(f"shard {shard}: {tar_path.name} is unreadable ({e})") from None
    if len(data) != info.size:
        raise DamagedShardError(f"shard {shard}: {member} is cut short in {tar_path.name}")
    return data


def read_image(out_dir: Path | str, shard: str, member: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(read_member(out_dir, shard, member))).convert("RGB"))


def merge_manifest(out_dir: Path | str, plan: pd.DataFrame) -> pd.DataFrame:
    """All shards' rows as one table, checked against the plan and the tars themselves."""
    out_dir = Path(out_dir)
    parts = [check_shard(out_dir, shard, list(planned["member"])) for shard, planned in plan.groupby("shard", sort=True)]
    manifest = pd.concat(parts, ignore_index=True)
    dup = manifest["frame_id"][manifest["frame_id"].duplicated()]
    if len(dup):
        raise DamagedShardError(f"{len(dup)} frames rendered twice, e.g. {dup.iloc[0]}")
    missing = set(plan["frame_id"]) - set(manifest["frame_id"])
    extra = set(manifest["frame_id"]) - set(plan["frame_id"])
    if missing or extra:
        raise DamagedShardError(f"manifest differs from plan: {len(missing)} missing, {len(extra)} unexpected")
    order = {f: i for i, f in enumerate(plan["frame_id"])}
    return manifest.sort_values("frame_id", key=lambda s: s.map(order)).reset_index(drop=True)
