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
    pytest.mark.slow,  # ~1 min of rendering + ~1 min of training on 2 cores (idle machine)
    # Re-measured 2026-12-03 with this recipe (RegressorRecipe's defaults: mirror with L/R labels
    # swapped, shift/scale augmentation, dropout, active-morph-weighted BCE, cosine lr; 1200 steps),
    # changed morphs, held-out true vs copy-source: seed 0 0.491 vs 0.568 (0.86 of copy; 0.85 in the
    # same recipe outside the flow), seed 1 0.495 vs 0.566 (0.87). Over *all* morphs the judge is
    # still worse than the copy (0.111 vs 0.099: the active weighting costs false positives).
    # Not the number of renders alone: on 682 training frames of the same 2 identities (120 held-out)
    # this recipe gives 0.88 (train error 0.33 — it underfits, it does not memorise); lr 3e-3 with
    # the angle loss at 0.3, 2000 steps 0.79; 128² renders (face crop) 0.80 vs 0.83 at 64². Eyes
    # become readable (0.13-0.18), mouth shapes (a few pixels) and brow_raise/brow_sad do not.
    # strict: the day it passes, this marker must go.
    pytest.mark.xfail(strict=True, reason="the morph regressor does not yet generalise to held-out poses "
                                          "(0.49 vs copy-source 0.57 at this size: 0.86 of copy, the margin is 0.5)"),
]

ANIMECELEB = ["identities=2", "domains=[anime]", "styles=[default]", "frames_per_identity=60",
              "sequences_per_identity=0", "resolution=64", "samples=2", "test_fraction=0", "frames_per_shard=61",
              "contact_sheet_samples=4", "resources.workers=2"]
#: the judge's error on held-out true renders must be below this share of copy-source's
MARGIN = 0.5
STEPS = 1200


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
    recipe = RegressorRecipe(train_frames, steps=STEPS, batch=32, lr=1e-3, channels=16, seed=0)
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
    print(f"held-out true {float(true_err):.3f} vs copy-source {float(copy_err):.3f}: ratio {float(true_err / copy_err):.3f}")
    assert true_err < MARGIN * copy_err, (float(true_err), float(copy_err))
