"""The ``faceswap`` flow end to end on the Ray task runner, at toy size: a few anny identities
rendered at 64² by the Blender pool with masks, landmarks and ground-truth swaps; the identity
encoder and attribute regressor; SAMAE, one ablation, the SimSwap-like baseline and
warp-and-blend trained/run on the same budget; every test pair scored; the report and strips."""
from __future__ import annotations

import json

import numpy as np
import pytest

TOY = [
    "data.resolution=64", "data.samples=4", "data.train_identities=8", "data.train_frames=3",
    "data.test_identities=4", "data.test_frames=2", "data.sequences=1", "data.sequence_length=3", "data.pairs=4",
    "budget.resolution=32", "budget.steps=6", "budget.batch=4", "budget.width=8",
    "tools.steps=30", "tools.batch=16", "tools.width=8", "tools.min_verification=0.5",
    "tools.min_expression_r2=null",
    "methods=[samae,samae_noperf,simswap,warp_blend]", "evaluation.bootstrap=200", "evaluation.strip_pairs=2",
    "training.checkpoint_every=3",
]

pytestmark = pytest.mark.slow  # ~3 min on 2 idle cores (Prefect + Ray + Blender + 3 tiny GAN runs)


@pytest.fixture(scope="module")
def toy_run(toy_flow):
    return toy_flow("faceswap", TOY)


def test_data_methods_metrics_and_strips(toy_run):
    from tasks.faceswap.dataset import load_faces, load_pairs

    root, cfg, result, _ = toy_run
    flow = root / "faceswap"
    train, test, pairs = load_faces(flow / "faces", "train"), load_faces(flow / "faces", "test"), load_pairs(flow / "faces")
    assert len(train) == 24 and len(test) == 4 * 2 + 3 and len(pairs) == 4 + 3
    assert not set(train.identity) & set(test.identity)  # identity-disjoint splits
    assert (test.identity[pairs.source] != test.identity[pairs.target]).all()
    assert 0.05 < train.masks.mean() < 0.8 and train.images.shape[1:] == (64, 64, 3)
    assert (flow / "faces" / "contact_sheet.png").is_file()
    check = json.loads((flow / "tools" / "check.json").read_text())
    assert check["verification_accuracy"] >= 0.5
    head = json.loads((flow / "report" / "headline.json").read_text())
    assert set(head["methods"]) == {"samae", "samae_noperf", "simswap", "warp_blend"}
    for name, m in head["methods"].items():
        assert 5 < m["psnr"] < 60 and -1 <= m["ssim"] <= 1 and -1 <= m["id_cos"] <= 1, name
        assert 0 <= m["expr_err"] < 1 and 0 <= m["pose_err"] < 90 and m["flicker"] >= 0
    per = np.load(flow / "eval" / "samae" / "per_pair.npz")
    assert len(per["psnr"]) == len(pairs) and np.isfinite(per["flicker"]).sum() == 2  # 3-frame sequence: 2 steps
    table = (flow / "report" / "table.md").read_text()
    assert "ground truth (reference)" in table and "warp_blend" in table and "[" in table
    assert (flow / "report" / "strip_all.png").is_file() and (flow / "report" / "strips" / "samae.png").is_file()
    assert "samae − simswap" in (flow / "report" / "paired.md").read_text()
    hist = json.loads((flow / "train" / "samae" / "train.json").read_text())["history"]
    assert hist and "generator/rec" in hist[-1]


def test_a_rerun_reuses_every_step(toy_run):
    root, _, _, rerun = toy_run
    report = root / "faceswap" / "report" / "table.md"
    before = report.stat().st_mtime_ns
    rerun()
    assert report.stat().st_mtime_ns == before
