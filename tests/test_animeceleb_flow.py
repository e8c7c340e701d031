"""The `animeceleb` flow end to end on the Ray task runner, at toy size."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

TOY = ["identities=2", "frames_per_identity=2", "sequences_per_identity=1", "sequence_length=2", "resolution=48",
       "samples=2", "frames_per_shard=3", "contact_sheet_samples=6", "workers=2"]


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
    from tasks.animeceleb.morph_model import MorphModel
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
