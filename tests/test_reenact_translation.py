"""The fair test of expression translation: ground-truth correspondences, distractors, the
anime-side metrics, the Animo-style baseline and the intervals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.common.morphs import ANIME_MORPH_NAMES as AN
from tasks.common.morphs import HUMAN_MORPH_NAMES as HN
from tasks.reenact.anime_eval import AnimeGeometry, evaluate, fit_animo_bridge, summarise
from tasks.reenact.expressions import (DISTRACTORS, UNITS, animo_pairs, oracle, recipe_columns, sample_natural,
                                       scored_set, unit_matrices)


def human(**w: float) -> np.ndarray:
    e = np.zeros((1, len(HN)), np.float32)
    for k, v in w.items():
        e[0, HN.index(k)] = v
    return e


def test_a_blink_only_human_expression_yields_eye_close_labels_and_nothing_else():
    p = oracle(human(eyeBlinkLeft=0.7, eyeBlinkRight=0.4))[0]
    assert p[AN.index("eye_close_left")] == pytest.approx(0.7, abs=1e-4)
    assert p[AN.index("eye_close_right")] == pytest.approx(0.4, abs=1e-4)
    others = [k for k, n in enumerate(AN) if not n.startswith("eye_close")]
    assert np.abs(p[others]).max() < 1e-4
    # one eye only: the other eye stays open
    p = oracle(human(eyeBlinkRight=1.0))[0]
    assert p[AN.index("eye_close_right")] == pytest.approx(1.0, abs=1e-4) and np.abs(np.delete(p, AN.index("eye_close_right"))).max() < 1e-4


@pytest.mark.parametrize("expr, label", [
    ({"jawOpen": 0.5, "mouthFunnel": 1.0}, "mouth_o"),
    ({"mouthSmileLeft": 0.8, "mouthSmileRight": 0.8}, "mouth_smile"),
    ({"browDownLeft": 0.6, "browDownRight": 0.6}, "brow_angry"),
    ({"browInnerUp": 0.9}, "brow_sad"),
    ({"jawOpen": 0.9}, "mouth_a"),
])
def test_each_correspondence_maps_to_its_own_anime_morph(expr, label):
    p = oracle(human(**expr))[0]
    k = AN.index(label)
    assert p[k] > 0.3 and np.abs(np.delete(p, k)).max() < 1e-3, dict(zip(AN, p.round(3)))


def test_the_distractor_set_moves_no_anime_morph_under_the_oracle():
    rng = np.random.default_rng(0)
    singles = np.stack([human(**{d: 1.0})[0] for d in DISTRACTORS])
    combos = np.zeros((200, len(HN)), np.float32)
    for row in combos:
        row[[HN.index(d) for d in rng.choice(DISTRACTORS, 3, replace=False)]] = rng.uniform(0.2, 1, 3)
    assert np.abs(oracle(np.concatenate([singles, combos]))).max() == 0
    # and added to a real expression, distractors change nothing in its answer
    base = human(eyeBlinkLeft=0.6, jawOpen=0.8)
    assert np.allclose(oracle(base), oracle(base + human(eyeLookUpLeft=1.0, cheekPuff=0.7, jawLeft=0.5)), atol=1e-5)
    assert not set(recipe_columns()) & {HN.index(d) for d in DISTRACTORS}


def test_recipes_are_independent_and_the_test_set_agrees_with_the_oracle():
    L, R = unit_matrices()
    assert np.linalg.matrix_rank(R[:, recipe_columns()]) == len(UNITS)  # every unit is recoverable
    ts = scored_set(300, 60, seed=3)
    assert len(ts) == 360 and ts.distractor_only.sum() == 60
    np.testing.assert_allclose(oracle(ts.human), ts.anime, atol=1e-4)
    assert np.abs(ts.anime[ts.distractor_only]).max() == 0 and (ts.human[ts.distractor_only] > 0).any(1).all()
    assert (ts.anime[~ts.distractor_only] > 0).any(1).all()
    # the streams differ: another seed gives another set, the Animo pairs never equal a test row
    assert not np.allclose(scored_set(300, 60, seed=4).human, ts.human)
    pairs = animo_pairs(32, seed=3)
    d = np.abs(pairs.human[:, None] - ts.human[None]).sum(-1)
    assert d.min() > 1e-3


def test_natural_expressions_move_correlated_shapes_together():
    e = sample_natural(4000, torch.Generator().manual_seed(0)).numpy()
    assert e.min() >= 0 and e.max() <= 1
    c = np.corrcoef(e.T)
    # jawOpen takes part in five actions, so its correlation with any one partner is diluted
    pairs = [("eyeBlinkLeft", "eyeBlinkRight", 0.3), ("mouthSmileLeft", "cheekSquintLeft", 0.3),
             ("mouthFunnel", "jawOpen", 0.2), ("browOuterUpLeft", "browOuterUpRight", 0.3)]
    for a, b, least in pairs:
        assert c[HN.index(a), HN.index(b)] > least, (a, b, c[HN.index(a), HN.index(b)])
    # unrelated shapes stay (nearly) uncorrelated
    assert abs(c[HN.index("eyeBlinkLeft"), HN.index("mouthPucker")]) < 0.1
    assert (e > 0).any(0).all()  # no dead coordinate


def test_animo_style_fit_recovers_a_planted_bridge_and_maps_unseen_combinations():
    from tasks.reenact.bridge import linear_inverse

    pairs = animo_pairs(48, seed=0)
    Ba = fit_animo_bridge(pairs.human, pairs.anime, ridge=1e-6)
    L, R = unit_matrices()
    # row of each labelled morph ≈ its recipe (up to the pairs' co-activation noise)
    for u, (anime, _) in enumerate(UNITS.values()):
        k = AN.index(next(iter(anime)))
        assert np.abs(Ba[k] - R[u]).max() < 0.1, AN[k]
    assert np.abs(Ba[AN.index("iris_small")]).max() == 0  # never shown: cannot be mapped
    ts = scored_set(128, 0, seed=1)
    p = linear_inverse(torch.as_tensor(ts.human), torch.as_tensor(Ba)).numpy()
    assert np.abs(p - ts.anime).mean() < 0.03
    # fitted on a subset of the correspondences, the units it never saw cannot be mapped
    sub = animo_pairs(48, seed=0, units=10)
    assert len({u[0] for u in sub.units}) == 10
    Bs = fit_animo_bridge(sub.human, sub.anime, ridge=1e-6)
    unseen = [AN.index(next(iter(UNITS[u][0]))) for u in UNITS if [u] not in sub.units]
    assert len(unseen) == 6 and np.abs(Bs[unseen]).max() == 0


@pytest.fixture(scope="module")
def anime_head():
    from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head

    return build_anime_head(AnimeIdentity.canonical())


def test_anime_geometry_errors_measure_eye_and_mouth_openings(anime_head):
    from tasks.reenact.bridge import EYE_PAIRS, LIP_PAIRS, anime_landmarks

    g = AnimeGeometry.from_models([anime_head])
    zero = np.zeros((1, 17), np.float32)
    closed = zero.copy()
    closed[0, AN.index("eye_close_left")] = 1.0
    err = g.errors(closed, zero)
    # closing the left eye: its two openings drop by ~ the neutral opening, the right eye's by 0
    idx = anime_landmarks(anime_head).indices
    v0, v1 = anime_head.evaluate(zero[0])[idx], anime_head.evaluate(closed[0])[idx]
    want = np.mean([abs((v1[t, 2] - v1[b, 2]) - (v0[t, 2] - v0[b, 2])) for t, b in EYE_PAIRS]) * 1000
    assert err["eye_open_mm"][0] == pytest.approx(want, rel=1e-5) and want > 2
    assert err["mouth_open_mm"][0] == pytest.approx(0, abs=1e-6)
    a = zero.copy()
    a[0, AN.index("mouth_a")] = 1.0
    v2 = anime_head.evaluate(a[0])[idx]
    want = np.mean([abs((v2[u, 2] - v2[lo, 2]) - (v0[u, 2] - v0[lo, 2])) for u, lo in LIP_PAIRS]) * 1000
    assert g.errors(a, zero)["mouth_open_mm"][0] == pytest.approx(want, rel=1e-5) and want > 2
    assert g.errors(a, a)["anime_lmk_mm"][0] == 0


def test_intervals_cover_the_mean_and_the_paired_difference_has_the_right_sign(anime_head):
    rng = np.random.default_rng(0)
    ts = scored_set(200, 50, seed=0)
    truth = ts.anime
    good = [np.clip(truth + rng.normal(0, 0.02, truth.shape), 0, 1).astype(np.float32) for _ in range(3)]
    preds = {"edtn": good, "neutral": [np.zeros_like(truth)]}
    r = evaluate(ts.human, truth, ts.distractor_only, preds, AnimeGeometry.from_models([anime_head]), seed=0, n_boot=300)
    e = r["combinations"]["methods"]["edtn"]["morph_mae"]
    assert e["expr_ci"][0] <= e["mean"] <= e["expr_ci"][1] and e["seed_ci"][0] <= e["mean"] <= e["seed_ci"][1]
    assert r["combinations"]["methods"]["neutral"]["morph_mae"]["seed_ci"] is None  # one deterministic run
    d = r["combinations"]["edtn_minus"]["neutral"]["eye_open_mm"]
    assert d["expr_ci"][1] < 0  # the near-truth predictor is significantly better than neutral
    assert r["distractors"]["methods"]["neutral"]["leak_mm"]["mean"] == 0
    s = summarise({"edtn": [{"x": np.ones(10)}], "neutral": [{"x": np.ones(10)}]}, seed=0, n_boot=50)
    assert s["edtn_minus"]["neutral"]["x"]["mean"] == 0


def test_edtn_learns_to_translate_natural_expressions_better_than_its_untrained_self():
    """A short EDTN run on natural expressions lowers its own geometric loss on the test set."""
    from tasks.animeceleb.human_head import HumanIdentity, build_human_head
    from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head
    from tasks.reenact.bridge import bridge_from_models, human_landmarks
    from tasks.common.steps import set_threads
    from tasks.reenact.edtn import EDTNRecipe, HumanGeometry

    set_threads(1)  # the machine is shared: one thread is several times faster than oversubscribing
    h = build_human_head(HumanIdentity.canonical())
    B, _ = bridge_from_models(build_anime_head(AnimeIdentity.canonical()), h)
    geom = HumanGeometry([h], human_landmarks(h), B)
    rec = EDTNRecipe(geom, np.zeros((0, 52), np.float32), steps=100, batch=64, lr=1e-3, max_active=3, hidden=128,
                     seed=0, sampler="natural")
    net = rec.build()["edtn"]
    opt = rec.optimizer("edtn", net)
    ts = torch.as_tensor(scored_set(128, 0, seed=0).human)
    before = float(geom.edtn_loss(ts, net(ts).detach())[0])
    for s in range(rec.steps):
        loss, _ = rec.loss("edtn", {"edtn": net}, rec.batch(s, 0, torch.device("cpu")), {}, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(geom.edtn_loss(ts, net(ts).detach())[0])
    assert after < 0.7 * before, (before, after)


def test_the_gram_form_of_the_edtn_loss_equals_decoding_every_vertex():
    from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head
    from tasks.animeceleb.human_head import HumanIdentity, build_human_head
    from tasks.reenact.bridge import LANDMARK_WEIGHTS, bridge_from_models, human_landmarks
    from tasks.reenact.edtn import LANDMARK_SCALE, HumanGeometry

    h = build_human_head(HumanIdentity.canonical())
    B, _ = bridge_from_models(build_anime_head(AnimeIdentity.canonical()), h)
    geom = HumanGeometry([h], human_landmarks(h), B)
    g = torch.Generator().manual_seed(0)
    e, p = torch.rand(16, 52, generator=g) * 0.5, torch.rand(16, 17, generator=g)
    d, s = geom.differences(e, p), LANDMARK_SCALE
    want = (100 * ((d["vertices"] * s) ** 2).sum() / (16 * geom.n_vertices * 3)
            + (d["landmarks"][..., [0, 2]].abs() * s * torch.as_tensor(LANDMARK_WEIGHTS)[None, :, None]).mean()
            + (d["eye"].abs() * s).mean() + (d["lip"].abs() * s).mean())
    got, _ = geom.edtn_loss(e, p)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
