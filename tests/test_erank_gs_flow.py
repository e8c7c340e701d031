"""The ``erank_gs`` flow end to end on the Ray task runner, at toy size: a 32-pixel textured box
rendered by the Blender pool, vanilla 3DGS and 3DGS + erank trained side by side for one seed
on the CPU reference renderer, evaluated on held-out views, exported and reported."""
from __future__ import annotations

import json

import numpy as np
import pytest

TOY = [
    "scene=box", "scene_render.resolution=32", "scene_render.train_views=6", "scene_render.test_views=2",
    "scene_render.samples=4", "cpu_resolution=32", "train.steps=40", "train.init_points=200",
    "train.densify.start=10", "train.densify.stop=30", "train.densify.every=10", "train.densify.reset_every=0",
    "erank.from_step=10", "seeds=[0]", "turntable_frames=4", "training.checkpoint_every=20",
]

pytestmark = pytest.mark.slow  # ~1-2 min on 2 cores (Prefect + Ray + Blender + 2 short trainings)


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("erank_gs", TOY)


def test_both_variants_are_trained_scored_exported_and_reported(toy_run):
    from tasks.erank_gs.gaussians import load_ply

    root, cfg, result, _ = toy_run
    flow = root / "erank_gs"
    scene = flow / "scene" / "box"
    assert len(json.loads((scene / "transforms_train.json").read_text())["frames"]) == 6
    assert (scene / "mesh.ply").is_file() and (scene / "test" / "r_1_normal.npy").is_file()
    metrics = json.loads((flow / "report" / "metrics.json").read_text())["results"]
    assert sorted((m["variant"], m["seed"]) for m in metrics) == [("erank", 0), ("vanilla", 0)]
    for m in metrics:
        assert 10 < m["psnr"] < 60 and 0 < m["ssim"] <= 1
        assert 0 <= m["normal_err_deg"] <= 180 and np.isfinite(m["chamfer"]) and m["chamfer"] < 1.0
        assert 0 <= m["needle_lt_1.02"] <= m["needle_lt_1.04"] <= 1
        name = f"{m['variant']}_s{m['seed']}"
        ply = load_ply(flow / "train" / name / "point_cloud.ply")
        assert len(ply) == m["gaussians"]
        hist = json.loads((flow / "train" / name / "train.json").read_text())["history"]
        # the regulariser is on (from its step) in the erank variant only
        assert any("gaussians/erank_barrier" in h for h in hist) == (m["variant"] == "erank")
    import av

    with av.open(str(flow / "eval" / "vanilla_s0" / "turntable.mp4")) as box:
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (32, 64, 3)  # RGB | normals side by side
    for f in ("table.md", "headline.json", "results.csv", "erank_histograms.png"):
        assert (flow / "report" / f).is_file(), f
    assert "Paper's direction" in result["table"] and "erank" in result["table"]


def test_a_rerun_reuses_every_step(toy_run):
    root, _, _, rerun = toy_run
    ply = root / "erank_gs" / "train" / "erank_s0" / "point_cloud.ply"
    before = ply.stat().st_mtime_ns
    rerun()
    assert ply.stat().st_mtime_ns == before
