"""Render shards: a tar of PNGs plus the manifest rows of exactly those PNGs.

A shard is finished when its tar exists: the rows (parquet) are renamed into place first, the
tar last, both from temp files, so a crash leaves either nothing or a complete pair — and a
rerun redoes exactly the shards without a tar. Merging checks the union of all shards against
the plan: every frame exactly once.
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

from .anime_head import AnimeIdentity, build_anime_head
from .morph_model import MorphModel


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


def clear_temporaries(out_dir: Path | str) -> int:
    """Remove what a killed worker left half-written (dot-prefixed temp folders and files).
    Only call while no worker writes into ``out_dir``."""
    n = 0
    for p in Path(out_dir).glob(".*"):
        if p.name.endswith(".json"):  # the folder's own key file
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        n += 1
    return n


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
    with tempfile.TemporaryDirectory(prefix=f".{shard}.", dir=out_dir) as tmp:
        pngs = render_rows(scene, rows, Path(tmp))
        write_shard(out_dir, shard, rows, pngs)
    return {"shard": shard, "frames": len(rows), "seconds": time.perf_counter() - t0, "skipped": False, "pid": os.getpid()}


def read_member(out_dir: Path | str, shard: str, member: str) -> bytes:
    tar_path, _ = shard_paths(out_dir, shard)
    with tarfile.open(tar_path) as tar:
        f = tar.extractfile(member)
        if f is None:
            raise KeyError(f"{member} not in {tar_path}")
        return f.read()


def read_image(out_dir: Path | str, shard: str, member: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(read_member(out_dir, shard, member))).convert("RGB"))


def merge_manifest(out_dir: Path | str, plan: pd.DataFrame) -> pd.DataFrame:
    """All shards' rows as one table, checked against the plan and the tars themselves."""
    out_dir = Path(out_dir)
    parts, members = [], []
    for shard in sorted(plan["shard"].unique()):
        tar_path, rows_path = shard_paths(out_dir, shard)
        if not (tar_path.is_file() and rows_path.is_file()):
            raise RuntimeError(f"shard {shard} is missing: render it before merging")
        rows = pd.read_parquet(rows_path)
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        if sorted(names) != sorted(rows["member"]):
            raise RuntimeError(f"shard {shard}: tar members and manifest rows differ")
        parts.append(rows)
        members += names
    manifest = pd.concat(parts, ignore_index=True)
    dup = manifest["frame_id"][manifest["frame_id"].duplicated()]
    if len(dup):
        raise RuntimeError(f"{len(dup)} frames rendered twice, e.g. {dup.iloc[0]}")
    missing = set(plan["frame_id"]) - set(manifest["frame_id"])
    extra = set(manifest["frame_id"]) - set(plan["frame_id"])
    if missing or extra:
        raise RuntimeError(f"manifest differs from plan: {len(missing)} missing, {len(extra)} unexpected")
    order = {f: i for i, f in enumerate(plan["frame_id"])}
    return manifest.sort_values("frame_id", key=lambda s: s.map(order)).reset_index(drop=True)
