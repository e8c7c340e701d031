"""Shards that are damaged are never taken as good (issue 11, item 1), without Blender.

The shard readers refuse a truncated tar, a tar cut between members, a missing half of a pair,
naming the shard; and the render step, resumed over a damaged folder, renders exactly the
damaged shards again (with a stand-in renderer here; the real Blender pool is exercised by
``test_animeceleb_flow.py``), leaving the folder byte-identical to a clean run.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.animeceleb.config import AnimeCelebConfig
from tasks.animeceleb.sampling import build_plan
from tasks.animeceleb.shards import (DamagedShardError, check_shard, merge_manifest, read_image, read_member,
                                     shard_paths, write_shard)
from tasks.common.config import DataError

TINY = dict(identities=2, domains=["anime"], styles=["toon"], frames_per_identity=5, sequences_per_identity=0,
            resolution=16, frames_per_shard=2, test_fraction=0.5)


def _png(frame_id: str, path: Path) -> Path:
    """A stand-in render: noise seeded by the frame, so every frame differs and is reproducible."""
    seed = int(hashlib.sha256(frame_id.encode()).hexdigest()[:8], 16)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _write(out: Path, shard: str, rows: list[dict], tmp: Path) -> None:
    write_shard(out, shard, rows, [_png(r["frame_id"], tmp / r["member"]) for r in rows])


@pytest.fixture
def plan():
    return build_plan(AnimeCelebConfig(**TINY))[0]


@pytest.fixture
def shards(plan, tmp_path):
    out, scratch = tmp_path / "shards", tmp_path / "scratch"
    out.mkdir(), scratch.mkdir()
    for s, g in plan.groupby("shard"):
        _write(out, s, g.to_dict("records"), scratch)
    return out


def _cut(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)


def test_the_readers_take_a_whole_shard(plan, shards):
    manifest = merge_manifest(shards, plan)
    assert list(manifest["frame_id"]) == list(plan["frame_id"])
    r = plan.iloc[3]
    assert read_image(shards, r["shard"], r["member"]).shape == (16, 16, 3)


def test_a_tar_cut_inside_a_member_is_refused_naming_the_shard(plan, shards):
    shard = plan["shard"].iloc[0]
    tar, _ = shard_paths(shards, shard)
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]
    _cut(tar, last.offset_data + last.size // 2)
    with pytest.raises(DamagedShardError, match=f"shard {shard}: .*truncated inside"):
        check_shard(shards, shard)
    with pytest.raises(DamagedShardError, match=f"shard {shard}"):
        merge_manifest(shards, plan)
    with pytest.raises(DamagedShardError, match=f"shard {shard}"):
        read_member(shards, shard, last.name)


def test_a_tar_cut_between_members_is_refused_naming_the_shard(plan, shards):
    shard = plan["shard"].iloc[0]
    tar, _ = shard_paths(shards, shard)
    with tarfile.open(tar) as t:
        second = t.getmembers()[1]
    _cut(tar, second.offset)  # tarfile itself ends such an archive without a word
    with pytest.raises(DamagedShardError, match=f"shard {shard}: tar members and manifest rows differ"):
        merge_manifest(shards, plan)


def test_a_missing_half_of_a_shard_is_refused(plan, shards):
    shard = plan["shard"].iloc[-1]
    shard_paths(shards, shard)[1].unlink()
    with pytest.raises(DamagedShardError, match=f"shard {shard}: {shard}.parquet is missing"):
        merge_manifest(shards, plan)
    shard_paths(shards, shard)[0].unlink()
    with pytest.raises(DamagedShardError, match=f"shard {shard}: {shard}.parquet is missing"):
        merge_manifest(shards, plan)
    assert issubclass(DamagedShardError, DataError) and issubclass(DamagedShardError, ValueError)


def test_png_metadata_is_stripped_and_the_pixels_kept(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    from tasks.animeceleb.blender_scene import strip_png_metadata

    info = PngInfo()
    info.add_text("Date", "2026/01/01 10:00:00")
    info.add_text("RenderTime", "00:00.26")
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png", pnginfo=info)
    info2 = PngInfo()
    info2.add_text("Date", "2027/02/02 11:11:11")
    Image.fromarray(pixels).save(tmp_path / "b.png", pnginfo=info2)
    for name in ("a.png", "b.png"):
        strip_png_metadata(tmp_path / name)
    a, b = (tmp_path / "a.png").read_bytes(), (tmp_path / "b.png").read_bytes()
    assert a == b and b"Date" not in a  # two renders of one label: the same bytes
    im = Image.open(io.BytesIO(a))
    assert np.array_equal(np.asarray(im), pixels) and "Date" not in im.info


# ------------------------------------------------------------------ the render step, resumed


def _folder_digest(folder: Path) -> dict[str, str]:
    """Every file, hidden bookkeeping included: what DVC hashes for the shards out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def render_step(data_root, monkeypatch, tmp_path, plan):
    """The real render step over a stand-in pool that writes the stand-in PNGs."""
    import workers.blender
    from tasks.animeceleb import steps

    rendered: list[str] = []

    def fake_render_shards(todo, out, *, workers, threads, num_gpus, on_done):
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        for shard, rows in todo.items():
            _write(Path(out), shard, rows, scratch)
            rendered.append(shard)
            on_done({"shard": shard, "frames": len(rows), "seconds": 0.01})
        n = sum(len(r) for r in todo.values())
        return {"frames": n, "wall_seconds": 0.01, "frames_per_second": n / 0.01, "workers": workers,
                "per_worker": [], "shards_redone": 0, "shards_rendered": len(todo)}

    monkeypatch.setattr(workers.blender, "render_shards", fake_render_shards)
    plan_dir = data_root / "animeceleb" / "plan"
    plan_dir.mkdir(parents=True)
    plan.to_parquet(plan_dir / "plan.parquet", index=False)
    cfg = AnimeCelebConfig(**TINY)

    def run() -> Path:
        rendered.clear()
        return steps.render.fn(cfg, plan_dir, 1, 1)

    return run, rendered


def test_a_resumed_render_redoes_exactly_the_damaged_shards_and_matches_a_clean_run(render_step, plan):
    from tasks.common.artifacts import fingerprint_path

    run, rendered = render_step
    out = run()
    n = plan["shard"].nunique()
    assert len(rendered) == n
    clean, clean_fp = _folder_digest(out), fingerprint_path(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}

    run()  # nothing damaged: nothing rendered
    assert rendered == []

    a, b = sorted(plan["shard"].unique())[:2]
    tar_a = shard_paths(out, a)[0]
    _cut(tar_a, tar_a.stat().st_size // 2)  # a truncated tar
    for p in shard_paths(out, b):  # a deleted shard
        p.unlink()
    run()
    assert sorted(rendered) == [a, b]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.stem not in (a, b)} == \
           {k: v for k, v in stamps.items() if Path(k).stem not in (a, b)}  # the intact ones untouched
    assert _folder_digest(out) == clean and fingerprint_path(out) == clean_fp
    assert list(merge_manifest(out, plan)["frame_id"]) == list(plan["frame_id"])

    # A shard rewritten with other bytes of the right size is caught by its hash, not its size.
    tar_a = shard_paths(out, a)[0]
    data = bytearray(tar_a.read_bytes())
    data[-2000] ^= 0xFF
    tar_a.write_bytes(bytes(data))
    run()
    assert rendered == [a] and _folder_digest(out) == clean


def test_a_whole_shard_written_but_never_recorded_is_adopted_not_rendered_twice(render_step, plan):
    from tasks.common.steps import MARKER_DIR

    run, rendered = render_step
    out = run()
    clean = _folder_digest(out)
    a, b = sorted(plan["shard"].unique())[:2]
    # the step's process died after the workers wrote a and b, before it recorded them
    for s in (a, b):
        (out / MARKER_DIR / f"{s}.json").unlink()
    (out / ".step.json").unlink()
    tar_b = shard_paths(out, b)[0]
    with tarfile.open(tar_b) as t:
        last = t.getmembers()[-1]
    _cut(tar_b, last.offset)  # ... and b is not whole: cut between its members
    run()
    assert rendered == [b] and _folder_digest(out) == clean


def test_the_render_log_lives_outside_the_versioned_shards_and_a_damaged_log_is_named(render_step, data_root):
    from tasks.animeceleb.steps import read_render_log, render_log_path

    run, _ = render_step
    out = run()
    # no run record among the shards (it differs run to run): only their tars and rows
    assert {p.suffix for p in out.iterdir() if not p.name.startswith(".")} == {".tar", ".parquet"}
    log = render_log_path()
    assert log.parent == data_root / "animeceleb" / "render_log" and len(read_render_log(log)) == 1
    log.write_text('[{"key": "k", "frames": 3}]')
    with pytest.raises(DataError, match=r"runs\.json: run 0 has no 'wall_seconds'"):
        read_render_log(log)


def test_the_render_pools_scratch_is_swept_after_a_kill(tmp_path):
    """A killed pool leaves its scratch (Blender's session folders, half-rendered PNGs) beside the
    shards; the flow's start-of-run sweep of the data root removes it, and nothing else."""
    from tasks.common.artifacts import sweep_temps
    from workers.blender import scratch_dir

    out = tmp_path / "animeceleb" / "shards"
    out.mkdir(parents=True)
    (out / "anime_00000-000.tar").write_bytes(b"kept")
    left = scratch_dir(out) / "worker-123-abcd" / "blender_XyZ12"
    left.mkdir(parents=True)
    (left / "render.exr").write_bytes(b"partial")
    assert scratch_dir(out).parent == out.parent and scratch_dir(out).name.endswith(".tmp")
    sweep_temps(tmp_path / "animeceleb")
    assert not scratch_dir(out).exists() and (out / "anime_00000-000.tar").read_bytes() == b"kept"
