"""The ``pixelhuman`` flow end to end on the Ray task runner at its smallest size: two training and
one unseen anny identity rendered at 32² by the Blender pool, ours and the pose-unaware baseline
trained for a few steps, the per-subject baseline fitted, all three scored for 1 and 3 input views,
strips, turntable MP4 and table written; then the rendered data is checked against the saved
skinning and cameras (a body-surface point projects into the mask in every view)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

TOY = [
    "data.resolution=32", "data.train_identities=2", "data.test_identities=1", "data.train_poses=2",
    "data.cameras=6", "data.test_novel_poses=1", "data.test_views_per_pose=2", "data.walk_frames=3",
    "data.samples=2", "model.samples_per_ray=8", "model.skin_vertices=300", "model.hidden=32", "model.feature_dim=8",
    "train.steps=12", "train.rays=64", "subject.steps=6", "subject.finetune_steps=2", "subject.rays=64",
    "eval.view_counts=[1, 3]", "eval.bootstrap=100", "training.checkpoint_every=6", "training.log_every=6",
]

pytestmark = pytest.mark.slow  # ~2-3 min on 2 cores (Prefect + Ray + anny + Blender + 3 tiny models)


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("pixelhuman", TOY)


def test_every_method_is_trained_scored_and_reported_by_view_count(toy_run):
    root, cfg, result, _ = toy_run
    flow = root / "pixelhuman"
    split = json.loads((flow / "bodies" / "split.json").read_text())
    assert split["train"] == ["train_000", "train_001"] and split["test"] == ["test_000"]
    assert not set(split["train"]) & set(split["test"])  # identity-disjoint
    rows = [r for m in cfg.methods for r in json.loads((flow / "eval" / m / "rows.json").read_text())]
    info = split["subjects"]["test_000"]
    per_count = len(info["novel_view"]) + len(info["novel_pose"])
    for m in cfg.methods:
        for n in (1, 3):
            mine = [r for r in rows if r["method"] == m and r["views"] == n]
            assert len(mine) == per_count, (m, n)
            assert {r["split"] for r in mine} == {"novel_view", "novel_pose"}
    for r in rows:
        assert 0 < r["psnr"] < 60 and -1 <= r["ssim"] <= 1 and 0 <= r["iou"] <= 1
    table = result["table"]
    assert "novel pose" in table and "novel view" in table and "pixelhuman − pixel_posed" in table
    assert "pixelhuman − anerf_subject" in table
    import av

    with av.open(str(flow / "report" / "turntable.mp4")) as box:
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (64, 64 * 4, 3)  # GT | 3 methods, 2× upscaled
    for f in ("strips.png", "headline.json", "results.csv", "metrics.json"):
        assert (flow / "report" / f).is_file(), f
    hist = json.loads((flow / "train" / "pixelhuman" / "train.json").read_text())["history"]
    assert hist[-1]["step"] == 12 and "field/mse" in hist[-1]


def test_a_body_surface_point_projects_into_the_mask_in_every_view(toy_run):
    """Blender's renders, the saved posed vertices and our camera projection agree: the posed body's
    vertices land inside the rendered silhouette (alpha > 0.5, grown by one pixel for anti-aliasing).
    Fingers, toes and wrists are thinner than a 32² pixel (their alpha stays below 0.5): left out."""
    import torch.nn.functional as F

    from tasks.pixelhuman.bodies import load_subject
    from tasks.pixelhuman.cameras import project

    root = toy_run[0] / "pixelhuman" / "bodies"
    split = json.loads((root / "split.json").read_text())
    labels = json.loads((root / "bones.json").read_text())
    thin = [i for i, n in enumerate(labels) if n.startswith(("finger", "toe", "metacarpal", "wrist"))]
    keep = torch.from_numpy(np.load(root / "weights.npy")[:, thin].sum(1) < 0.5)
    assert 0.5 < keep.float().mean() < 0.9
    for name in ("train_000", "test_000"):
        sub = load_subject(root, name, split["renders"][name])
        for (frame, cam), (_, mask) in sub.images.items():
            verts = sub.frames[frame]["vertices"][keep]
            uv, z = project(verts[None], sub.cams.subset([sub.cam_index(cam)]))
            assert (z > 0).all()
            px = uv[0].floor().long()
            R = sub.cams.resolution
            assert ((px >= 0) & (px < R)).all(), (name, frame, cam)  # the whole body is in frame
            grown = F.max_pool2d((mask > 0.5).float()[None, None], 3, stride=1, padding=1)[0, 0]
            inside = grown[px[:, 1], px[:, 0]] > 0
            assert inside.float().mean() > 0.99, (name, frame, cam, float(inside.float().mean()))


def test_saved_skinning_reproduces_the_posed_bodies_and_inverts_back_to_rest(toy_run):
    """v_posed = Σ_j w_j T_j v_rest with the saved weights and transforms (anny's own LBS), and
    inverse skinning with nearest-vertex weights returns the rest vertices."""
    from tasks.pixelhuman.bodies import load_subject
    from tasks.pixelhuman.skinning import forward_lbs, inverse_lbs, knn_weights

    root = toy_run[0] / "pixelhuman" / "bodies"
    split = json.loads((root / "split.json").read_text())
    W = torch.from_numpy(np.load(root / "weights.npy"))
    sub = load_subject(root, "train_001", split["renders"]["train_001"])
    idx = torch.arange(0, len(W), 7)
    for frame, f in sub.frames.items():
        posed = forward_lbs(sub.rest[idx], W[idx], f["transforms"])
        assert torch.allclose(posed, f["vertices"][idx], atol=1e-4), frame
        w, d = knn_weights(f["vertices"][idx], f["vertices"][idx], W[idx], k=1)
        assert torch.allclose(inverse_lbs(f["vertices"][idx], w, f["transforms"]), sub.rest[idx], atol=1e-3)


def test_a_rerun_reuses_every_step(toy_run):
    root, _, _, rerun = toy_run
    weights = root / "pixelhuman" / "train" / "pixelhuman" / "field.safetensors"
    before = weights.stat().st_mtime_ns
    rerun()
    assert weights.stat().st_mtime_ns == before
