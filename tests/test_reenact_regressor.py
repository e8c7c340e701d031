"""The expression-fidelity judge proves it can read: on held-out true renders its morph error
is far below what it reads off a copy of the source frame.

Renders a small anime set in Blender (2 identities × 61 poses, 64², default style), trains the
morph regressor on three quarters of each identity's random poses and scores the rest.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = [
    pytest.mark.slow,  # ~1 min of rendering + ~1-2 min of training on 2 cores
    # Measured 2026-12-02 (2 identities × 101 poses, 500 steps): held-out true renders 0.526 vs
    # copy-source 0.546 on the changed morphs — the judge does not yet read unseen poses (the
    # issue's acceptance line is not met). strict: the day it passes, this marker must go.
    # Re-measured 2026-12-02 on this toy set (92 training / 30 held-out frames), held-out true vs copy:
    # as is 0.551 vs 0.588 (train 0.24: memorises); + mirror (L/R labels swapped) + cosine lr 0.553 vs
    # 0.585; + face crop 0.556 vs 0.590; + active-morph-weighted BCE 0.573 vs 0.596 (train 0.017:
    # pure memorisation); + shift/scale augmentation + dropout, 1200 steps 0.473 vs 0.562 (best, 0.84
    # of copy). BatchNorm train vs eval mode changes nothing (±0.01). Each morph is active in ~8 of
    # 92 frames: the limit is renders per morph, not the recipe (see the report of 2026-12-02).
    pytest.mark.xfail(strict=True, reason="the morph regressor does not yet generalise to held-out poses "
                                          "(0.526 vs copy-source 0.546 at this size)"),
]

ANIMECELEB = ["identities=2", "domains=[anime]", "styles=[default]", "frames_per_identity=60",
              "sequences_per_identity=0", "resolution=64", "samples=2", "test_fraction=0", "frames_per_shard=61",
              "contact_sheet_samples=4", "resources.workers=2"]
#: the judge's error on held-out true renders must be below this share of copy-source's
MARGIN = 0.5


def test_the_regressor_reads_held_out_true_renders_far_better_than_copy_source(toy_flow):
    from tasks.common.steps import set_threads
    from tasks.common.training import TrainingConfig, load_weights, train
    from tasks.reenact.data import AnimeFrames, DatasetPaths
    from tasks.reenact.metrics import read_morphs
    from tasks.reenact.regressor import MorphRegressor, RegressorRecipe

    root, *_ = toy_flow("animeceleb", ANIMECELEB)
    paths = DatasetPaths(root / "animeceleb")
    m = pd.read_parquet(paths.manifest)
    rng = np.random.default_rng(0)
    rand = m[m.kind == "random"]
    held = set(rng.choice(rand.pose_id.unique(), size=len(rand) // 4, replace=False))
    train_frames = AnimeFrames.load(paths, m[~m.pose_id.isin(held)], ["default"], 64)
    test_frames = AnimeFrames.load(paths, m[m.pose_id.isin(held)], ["default"], 64)
    basis = AnimeFrames.load(paths, m[m.kind == "basis"], ["default"], 64)

    set_threads(2)
    recipe = RegressorRecipe(train_frames, steps=300, batch=32, lr=1e-3, channels=16, seed=0)
    res = train(recipe, TrainingConfig(checkpoint_every=10_000).on("cpu"), root / "ckpt")
    reg = MorphRegressor(17, 16, 64)
    reg.load_state_dict(load_weights(res.checkpoint, "regressor"))
    reg.eval()

    w = torch.as_tensor(np.stack(test_frames.rows.weights.to_numpy()))
    src = {r.identity: i for i, r in basis.rows.iterrows()}
    src_idx = [src[i] for i in test_frames.rows.identity]
    changed = w > 0.1  # the source is the neutral basis frame: every active morph changed
    true_err = (read_morphs(reg, test_frames.float_images(slice(None))) - w).abs()[changed].mean()
    copy_err = (read_morphs(reg, basis.float_images(src_idx)) - w).abs()[changed].mean()
    assert len(test_frames.rows) >= 25 and changed.sum() > 25
    assert true_err < MARGIN * copy_err, (float(true_err), float(copy_err))
