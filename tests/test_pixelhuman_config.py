"""pixelhuman's config and data plan (no anny, no Blender): what is rendered for whom, and bad
settings rejected with the field named."""
from __future__ import annotations

import pytest

from tasks.common.config import ConfigError, load_config
from tasks.pixelhuman.config import PixelHumanConfig


def _cfg(**data) -> PixelHumanConfig:
    return PixelHumanConfig.model_validate({"data": data})


def test_params_yaml_holds_the_config_defaults():
    assert load_config("pixelhuman", PixelHumanConfig) == PixelHumanConfig()


def test_the_plan_is_identity_disjoint_and_holds_inputs_out_of_the_held_out_views():
    from tasks.pixelhuman.bodies import plan, split_record

    cfg = _cfg(train_identities=3, test_identities=2, train_poses=4, cameras=8, test_novel_poses=2,
               test_views_per_pose=3, walk_frames=5)
    ids = plan(cfg)
    rec = split_record(ids)
    assert rec["train"] == ["train_000", "train_001", "train_002"] and rec["test"] == ["test_000", "test_001"]
    seeds = {e["seed"] for e in ids.values()}
    assert len(seeds) == 5  # every identity its own phenotype seed
    for n in rec["train"]:
        assert len(ids[n]["renders"]) == 4 * 8 and sum("walk" in p for p in ids[n]["poses"]) == 2
    for n in rec["test"]:
        s = rec["subjects"][n]
        assert len(s["inputs"]) == 5 and s["inputs"][0] == "c0"
        held = {c for _, c in s["novel_view"]}
        assert len(held) == 3 and not held & set(s["inputs"])  # novel views are never inputs
        assert all(f == s["input_pose"] for f, _ in s["novel_view"])
        assert len(s["novel_pose"]) == 2 * 3 and all(f != s["input_pose"] for f, _ in s["novel_pose"])
    assert len(rec["subjects"]["test_000"]["walk"]) == 5 and "walk" not in rec["subjects"]["test_001"]
    again = plan(cfg)  # a pure function of the config
    assert again["test_001"]["poses"] == ids["test_001"]["poses"]
    assert again["train_002"]["identity"] == ids["train_002"]["identity"]


def test_bodies_differ_across_identities():
    from tasks.pixelhuman.body import BodyIdentity

    a, b = BodyIdentity.sample(1000), BodyIdentity.sample(1001)
    assert a.phenotype != b.phenotype and a.shirt != a.trousers
    assert all(0.1 <= v <= 0.9 for v in a.phenotype.values())


def test_the_walk_cycle_swings_legs_in_opposition_and_procedural_poses_stay_in_limits():
    import math

    import numpy as np

    from tasks.pixelhuman.body import POSED_BONES, procedural_pose, walk_pose

    w = walk_pose(0.25)
    assert w["upperleg01.L"][0] == pytest.approx(-w["upperleg01.R"][0]) and abs(w["upperleg01.L"][0]) > 0.3
    rng = np.random.default_rng(0)
    m = math.radians(30)
    for _ in range(50):
        p = procedural_pose(rng, 30)
        for b, lim in POSED_BONES.items():
            for a, (lo, hi) in zip(p[b], lim):
                assert lo * m - 1e-9 <= a <= hi * m + 1e-9


@pytest.mark.parametrize("values, field", [
    ({"eval": {"view_counts": [1, 7]}}, "view_counts"),
    ({"eval": {"view_counts": [3, 3]}}, "view_counts"),
    ({"data": {"cameras": 4}}, "cameras"),
    ({"data": {"cameras": 5, "test_views_per_pose": 6}}, "test_views_per_pose"),
    ({"methods": ["pixelhuman", "nerf"]}, "methods"),
    ({"training": {"backend": "deepspeed"}}, "training"),
    ({"model": {"shell": 0}}, "shell"),
])
def test_bad_settings_name_the_field(values, field):
    from tasks.common.config import validate

    with pytest.raises(ConfigError, match=field):
        validate(PixelHumanConfig, values, flow="pixelhuman")
