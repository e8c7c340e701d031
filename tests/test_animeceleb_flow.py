"""The `animeceleb` flow end to end on the Ray task runner, at toy size."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TOY = ["identities=2", "frames_per_identity=2", "sequences_per_identity=1", "sequence_length=2", "resolution=48",
       "samples=2", "frames_per_shard=3", "contact_sheet_samples=6",
       "resources.workers=2"]


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    root, cfg, result, run = toy_flow("animeceleb", TOY)
    return root / "animeceleb", cfg, result, run


def test_every_planned_frame_is_in_the_manifest_once_with_its_labels(toy_run):
    out, cfg, result, _ = toy_run
    plan = pd.read_parquet(out / "plan" / "plan.parquet")
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    per_identity = 1 + 2 + 2
    assert len(manifest) == len(plan) == 2 * per_identity * 2 + 2 * per_identity
    assert manifest["frame_id"].is_unique and set(manifest["frame_id"]) == set(plan["frame_id"])
    for col in ("identity", "style", "weights", "yaw", "pitch", "roll", "camera_lens_mm", "render_seed", "split"):
        assert col in manifest
    assert {len(w) for w in manifest[manifest.domain == "anime"].weights} == {17}
    assert {len(w) for w in manifest[manifest.domain == "human"].weights} == {52}
    splits = json.loads((out / "dataset" / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"]) and len(splits["test"]) == 2


def test_contact_sheets_stats_and_morph_models_are_written(toy_run):
    from tasks.common.morphs import MorphModel
    from tasks.animeceleb.shards import build_head

    out, cfg, result, _ = toy_run
    stats = json.loads((out / "dataset" / "stats.json").read_text())
    assert sorted(stats["contact_sheets"]) == ["anime_default.png", "anime_toon.png", "human_default.png"]
    for name in stats["contact_sheets"]:
        assert (out / "dataset" / "contact_sheets" / name).stat().st_size > 1000
    assert stats["render"]["frames_rendered"] == stats["frames"] and stats["render"]["workers"] == 2
    assert all(w["frames_per_second"] > 0 for w in stats["render"]["per_worker"])
    ids = json.loads((out / "plan" / "identities.json").read_text())
    ident, info = next(iter(ids.items()))
    saved = MorphModel.load(out / "morph_models" / info["domain"] / f"{ident}.npz")
    np.testing.assert_array_equal(saved.offsets, build_head(info["domain"], info["seed"]).offsets)
    assert MorphModel.load(out / "morph_models" / "human.npz").num_morphs == 52


def test_a_frame_rerendered_here_from_its_manifest_row_matches_the_workers_png(toy_run, tmp_path):
    pytest.importorskip("bpy")
    from tasks.animeceleb.blender_scene import BlenderScene
    from tasks.animeceleb.shards import read_image, render_rows

    out, *_ = toy_run
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    scene = BlenderScene(threads=1)
    for _, row in manifest[manifest.kind == "random"].groupby("style").head(1).iterrows():
        (png,) = render_rows(scene, [row.to_dict()], tmp_path)
        from PIL import Image

        again = np.asarray(Image.open(png).convert("RGB"))
        assert np.array_equal(again, read_image(out / "shards", row["shard"], row["member"])), row["frame_id"]


def test_a_rerun_reuses_every_finished_step(toy_run):
    out, _, _, run = toy_run
    markers = {p: p.stat().st_mtime_ns for p in out.rglob(".step.json")}
    assert len(markers) == 4
    tars = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")}
    run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob(".step.json")} == markers
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.tar")} == tars


def test_a_clean_run_leaves_no_temp_folder_behind(toy_run):
    out, *_ = toy_run
    root = out.parent
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("blender_")]
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"dataset", "morph_models", "plan", "render_log", "shards"}


def _all_files(folder: Path) -> dict[str, str]:
    """Every file with its hash, hidden bookkeeping included: what DVC hashes for the out."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two more flow runs, each rendering one shard in Blender
def test_a_damaged_or_deleted_shard_is_rendered_again_and_the_shards_equal_the_clean_runs(toy_run):
    """Issue 11, item 1: truncate one shard's tar (then delete another shard's tar and parquet) and
    rerun: that shard is rendered again, the manifest equals the plan, and the shards folder is
    byte-identical to the clean run's (Cycles renders a label to the same pixels, and the PNGs
    carry no timestamps), so its DVC hash is the clean run's too."""
    from tasks.animeceleb.steps import read_render_log, render_log_path
    from tasks.common.artifacts import fingerprint_path

    out, _, _, run = toy_run
    shards = out / "shards"
    clean, clean_fp = _all_files(shards), fingerprint_path(shards)
    dataset_marker = (out / "dataset" / ".step.json").stat().st_mtime_ns
    plan = pd.read_parquet(out / "plan" / "plan.parquet")
    first, second = sorted(plan["shard"].unique())[:2]

    tar = shards / f"{first}.tar"
    with open(tar, "r+b") as fh:
        fh.truncate(tar.stat().st_size // 2)
    run()
    for p in (shards / f"{second}.tar", shards / f"{second}.parquet"):
        p.unlink()
    run()

    repairs = read_render_log(render_log_path())[-2:]
    assert [r["shards_rendered"] for r in repairs] == [1, 1]  # exactly the damaged shard, each time
    assert _all_files(shards) == clean and fingerprint_path(shards) == clean_fp
    manifest = pd.read_parquet(out / "dataset" / "manifest.parquet")
    assert list(manifest["frame_id"]) == list(plan["frame_id"])
    # the dataset step keys on the shards' content, which came back the same: it was reused
    assert (out / "dataset" / ".step.json").stat().st_mtime_ns == dataset_marker
