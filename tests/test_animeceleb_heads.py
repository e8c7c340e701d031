"""Heads as linear morph models, and the render plan — no Blender needed."""
from __future__ import annotations

import numpy as np
import pytest

from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head
from tasks.animeceleb.camera import CameraSpec, posed_vertices
from tasks.animeceleb.config import AnimeCelebConfig
from tasks.animeceleb.meshkit import outline_shell
from tasks.common.morphs import MorphModel
from tasks.common.morphs import ANIME_MORPH_NAMES, HUMAN_MORPH_NAMES
from tasks.animeceleb.sampling import EXCLUSIVE, build_plan


@pytest.fixture(scope="module")
def anime():
    return build_anime_head(AnimeIdentity.sample(5))


@pytest.fixture(scope="module")
def human():
    from tasks.animeceleb.human_head import HumanIdentity, build_human_head

    return build_human_head(HumanIdentity.sample(5))


def moved(model: MorphModel, name: str) -> np.ndarray:
    return np.flatnonzero(np.abs(model.offsets[model.names.index(name)]).max(1) > 1e-7)


def test_anime_heads_carry_the_17_documented_morphs(anime):
    assert anime.names == ANIME_MORPH_NAMES and len(anime.names) == 17
    assert [anime.names[i] for i in range(12, 17)] == ["mouth_a", "mouth_i", "mouth_u", "mouth_e", "mouth_o"]
    for name in anime.names:
        assert len(moved(anime, name)) > 0, f"{name} moves nothing"


@pytest.mark.parametrize("morph, region", [
    ("eye_close_left", "eye_left"), ("eye_smile_right", "eye_right"), ("eye_wide_left", "eye_left"),
    ("brow_angry", "brows"), ("mouth_a", "mouth"), ("mouth_frown", "mouth"),
])
def test_each_anime_morph_moves_only_its_own_feature(anime, morph, region):
    assert set(moved(anime, morph)) <= set(anime.region_vertices(region))


def test_the_left_eye_is_on_the_characters_left_which_is_image_right(anime):
    cam = CameraSpec()
    left = cam.project(anime.template[anime.region_vertices("eye_left")], 128)[:, 0].mean()
    right = cam.project(anime.template[anime.region_vertices("eye_right")], 128)[:, 0].mean()
    assert left > 64 > right


def test_positive_yaw_moves_the_face_to_image_right(anime):
    cam = CameraSpec()
    mouth = anime.template[anime.region_vertices("mouth")]
    pivot = anime.meta["pivot"]
    x0 = cam.project(posed_vertices(mouth, pivot, 0, 0, 0), 128)[:, 0].mean()
    x1 = cam.project(posed_vertices(mouth, pivot, 20, 0, 0), 128)[:, 0].mean()
    assert x1 > x0 + 5
    up = cam.project(posed_vertices(mouth, pivot, 0, 15, 0), 128)[:, 1].mean()
    assert up < cam.project(mouth, 128)[:, 1].mean()  # pitch > 0: face rises (rows grow downward)


def test_identities_differ_and_are_reproducible_from_their_seed():
    a, b = AnimeIdentity.sample(1), AnimeIdentity.sample(2)
    assert a != b and AnimeIdentity.sample(1) == a
    assert AnimeIdentity.from_dict(a.to_dict()) == a
    m1, m2 = build_anime_head(a), build_anime_head(AnimeIdentity.sample(1))
    np.testing.assert_array_equal(m1.template, m2.template)
    styles = {AnimeIdentity.sample(s).hair_style for s in range(40)}
    assert len(styles) >= 5


def test_evaluate_is_the_same_in_numpy_and_torch_and_linear(anime):
    import torch

    w = np.random.default_rng(0).uniform(0, 1, 17).astype(np.float32)
    v_np = anime.evaluate(w)
    v_t = anime.evaluate(torch.tensor(w, dtype=torch.float64, requires_grad=True))
    np.testing.assert_allclose(v_t.detach().numpy(), v_np, atol=1e-6)
    # linear: f(a + b) - f(0) = (f(a) - f(0)) + (f(b) - f(0))
    a, b = w * 0.3, w * 0.5
    np.testing.assert_allclose(anime.evaluate(a + b) - anime.template, (anime.evaluate(a) - anime.template)
                               + (anime.evaluate(b) - anime.template), atol=1e-6)


def test_npz_round_trip(anime, tmp_path):
    path = anime.save(tmp_path / "anime.npz")
    back = MorphModel.load(path)
    assert back.names == anime.names and back.materials == anime.materials
    np.testing.assert_array_equal(back.offsets, anime.offsets)
    np.testing.assert_array_equal(back.region_vertices("eye_left"), anime.region_vertices("eye_left"))
    assert AnimeIdentity.from_dict(back.meta["identity"]) == AnimeIdentity.from_dict(anime.meta["identity"])


def test_outline_shell_wraps_the_solid_parts_outside(anime):
    verts, faces = outline_shell(anime, 0.002)
    assert len(faces) > 0
    c = np.array([0.0, 0.0, anime.meta["identity"]["eye_drop"] + 0.13])
    # the shell lies outside the skin it wraps: farther from the head's centre on average
    skin = anime.template[anime.region_vertices("skin")]
    assert np.linalg.norm(verts - c, axis=1).max() > np.linalg.norm(skin - c, axis=1).max()


def test_human_heads_are_anny_with_52_arkit_morphs(human):
    from tasks.animeceleb.human_head import anny_head

    assert list(anny_head().facial_action_labels) == HUMAN_MORPH_NAMES == human.names
    assert set(moved(human, "eyeBlinkLeft")) & set(human.region_vertices("eye_left"))
    assert not set(moved(human, "eyeBlinkLeft")) & set(human.region_vertices("mouth"))
    assert set(moved(human, "jawOpen")) & set(human.region_vertices("mouth"))
    # anny's left eye (+X) is the character's left: image right, as for anime heads
    cam = CameraSpec()
    assert cam.project(human.template[human.region_vertices("eye_left")], 128)[:, 0].mean() > 64


def test_human_morph_offsets_are_exactly_annys_blendshapes(human):
    from tasks.animeceleb.human_head import HumanIdentity, anny_vertices

    ident = HumanIdentity.from_dict(human.meta["identity"])
    w = np.zeros(52)
    w[[8, 24, 43]] = [1.0, 0.6, 0.3]  # eyeBlinkLeft, jawOpen, mouthSmileLeft
    verts, _ = anny_vertices(ident.phenotype, np.vstack([np.zeros(52), w]))
    skin = human.region_vertices("skin")
    expected = verts[1] - verts[0]
    got = human.evaluate(w.astype(np.float32))[skin] - human.template[skin]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_plan_labels_every_frame_and_splits_identities_disjointly():
    cfg = AnimeCelebConfig(identities=6, frames_per_identity=10, sequence_length=9, frames_per_shard=7)
    plan, identities = build_plan(cfg)
    per_id = 1 + 10 + 9
    assert len(plan) == 6 * per_id * 2 + 6 * per_id  # anime × 2 styles, human × 1
    assert plan["frame_id"].is_unique and plan["member"].is_unique
    for domain in ("anime", "human"):
        g = plan[plan.domain == domain]
        train, test = set(g[g.split == "train"].identity), set(g[g.split == "test"].identity)
        assert train and test and not train & test
    random = plan[(plan.domain == "anime") & (plan.kind == "random")]
    w = np.stack(random["weights"].to_numpy())
    assert w.min() >= 0 and w.max() <= 1 and (w > 0).sum(1).max() <= cfg.max_active_morphs
    for row in w:  # contradicting shapes of one feature are never combined
        on = {ANIME_MORPH_NAMES[i] for i in np.flatnonzero(row)}
        assert all(len(on & g) <= 1 for g in EXCLUSIVE)
    for a in ("yaw", "pitch", "roll"):
        lo, hi = getattr(cfg.pose, a)
        assert plan[a].between(lo, hi).all()
    basis = plan[plan.kind == "basis"]
    assert (basis[["yaw", "pitch", "roll"]].to_numpy() == 0).all()
    assert all(np.asarray(w).sum() == 0 for w in basis.weights)
    # a shard never mixes identities; consecutive rows of a shard share one style mostly
    assert (plan.groupby("shard").identity.nunique() == 1).all()
    assert plan.groupby("shard").size().max() <= 7


def test_sequences_are_smooth():
    cfg = AnimeCelebConfig(identities=2, frames_per_identity=0, sequence_length=16, domains=["anime"], styles=["toon"])
    plan, _ = build_plan(cfg)
    seq = plan[plan.kind == "sequence"].sort_values(["identity", "t"])
    for _, g in seq.groupby("identity"):
        w = np.stack(g.weights.to_numpy())
        assert np.abs(np.diff(w, axis=0)).max() < 0.5
        assert np.abs(np.diff(g.yaw.to_numpy())).max() < 0.5 * (cfg.pose.yaw[1] - cfg.pose.yaw[0])


def test_the_plan_is_a_pure_function_of_the_config():
    cfg = AnimeCelebConfig(identities=3, frames_per_identity=4)
    a, _ = build_plan(cfg)
    b, _ = build_plan(cfg)
    assert a.drop(columns=["weights", "active"]).equals(b.drop(columns=["weights", "active"]))
    c, _ = build_plan(cfg.model_copy(update={"seed": 1}))
    assert not np.allclose(a.yaw, c.yaw)
