"""Bridge B, the EDTN geometric loss, landmarks, the generator and the config/data checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.reenact.bridge import (EYE_PAIRS, LIP_PAIRS, LMK, anime_landmarks, bridge_from_models, fit_bridge,
                                  human_landmarks, linear_inverse)


@pytest.fixture(scope="module")
def heads():
    from tasks.animeceleb.anime_head import AnimeIdentity, build_anime_head
    from tasks.animeceleb.human_head import HumanIdentity, build_human_head

    return build_anime_head(AnimeIdentity.canonical()), build_human_head(HumanIdentity.canonical())


@pytest.fixture(scope="module")
def bridge(heads):
    return bridge_from_models(*heads)


def test_bridge_fit_recovers_a_planted_linear_mapping():
    rng = np.random.default_rng(0)
    human = rng.normal(size=(52, 120))  # 52 blendshapes, 40 landmarks × (x, y, z)
    planted = np.where(rng.random((17, 52)) < 0.1, rng.uniform(0.2, 1.0, (17, 52)), 0.0)
    B = fit_bridge(human, planted @ human, lam=1e-8)
    np.testing.assert_allclose(B, planted, atol=1e-4)
    assert B.min() >= 0 and B.max() <= 1
    # Beyond the box the fit clips instead of extrapolating, and still explains what it can.
    B2 = fit_bridge(human, (2 * planted) @ human, lam=1e-8)
    assert B2.max() <= 1 + 1e-12 and np.abs(B2 - np.clip(2 * planted, 0, 1)).max() < 0.5


def test_linear_inverse_recovers_anime_morphs_when_the_human_face_came_from_them(bridge):
    B = torch.as_tensor(bridge[0])
    p = torch.rand(64, 17, generator=torch.Generator().manual_seed(1))
    e = p @ B
    back = linear_inverse(e, B, iters=3000)
    assert torch.allclose(back @ B, e, atol=1e-3)


def test_landmarks_open_and_close_the_way_the_morphs_say(heads):
    anime, human = heads
    for model, lm, close, wide, jaw in ((anime, anime_landmarks(anime), "eye_close_left", "eye_wide_left", "mouth_a"),
                                        (human, human_landmarks(human), "eyeBlinkLeft", "eyeWideLeft", "jawOpen")):
        def measure(name, w=1.0):
            v = model.evaluate(model.weights({name: w}) if name else np.zeros(model.num_morphs, np.float32))[lm.indices]
            eyes = np.array([v[t, 2] - v[b, 2] for t, b in EYE_PAIRS[:2]])  # the left eye
            lips = np.array([v[u, 2] - v[lo, 2] for u, lo in LIP_PAIRS])
            return eyes, lips

        eye0, lip0 = measure(None)
        assert (eye0 > 0.005).all(), (model.domain, eye0)
        assert (measure(close)[0] < 0.3 * eye0).all(), model.domain  # a closed eye has (almost) no opening
        assert (measure(wide)[0] > eye0).all(), model.domain
        assert measure(jaw)[1][1] > lip0[1] + 0.005, model.domain  # the mouth opens at the centre
        v = model.template[lm.indices]
        assert v[LMK["mouth_corner_left"], 0] > 0 > v[LMK["mouth_corner_right"], 0]  # own left = +X


def test_bridge_maps_anime_morphs_onto_the_human_blendshapes_that_mean_the_same(bridge):
    from tasks.common.morphs import ANIME_MORPH_NAMES as A
    from tasks.common.morphs import HUMAN_MORPH_NAMES as H

    B = bridge[0]
    assert B.shape == (17, 52)
    assert B[A.index("eye_close_left"), H.index("eyeBlinkLeft")] > 0.3
    assert B[A.index("eye_close_left"), H.index("eyeBlinkRight")] < 0.05
    assert B[A.index("eye_wide_right"), H.index("eyeWideRight")] > 0.5
    assert B[A.index("brow_raise"), H.index("browInnerUp")] > 0.5
    assert B[A.index("iris_small")].max() == 0  # the iris has no landmark: nothing to map


def test_edtn_loss_is_zero_at_the_planted_truth_and_rises_with_the_error(heads, bridge):
    from tasks.reenact.edtn import HumanGeometry

    geom = HumanGeometry([heads[1]], human_landmarks(heads[1]), bridge[0])
    g = torch.Generator().manual_seed(0)
    p_true = torch.rand(32, 17, generator=g) * 0.8 + 0.1
    e = geom.to_human(p_true)  # a human expression that p_true explains exactly
    loss0, parts = geom.edtn_loss(e, p_true)
    assert float(loss0) < 1e-10 and all(abs(v) < 1e-10 for v in parts.values())
    direction = torch.randn(32, 17, generator=g).sign()
    losses = [float(geom.edtn_loss(e, (p_true + s * 0.1 * direction).clamp(0, 1))[0]) for s in (0.25, 0.5, 1.0)]
    assert 0 < losses[0] < losses[1] < losses[2]
    errs = geom.errors_mm(e, (p_true + 0.1 * direction).clamp(0, 1))
    assert all(v > 0 for v in errs.values())
    assert geom.errors_mm(e, p_true)["vertex_mm"] < 1e-4


def test_edtn_learns_to_beat_the_zero_translation(heads, bridge, tmp_path):
    from tasks.common.training import TrainingConfig, load_weights, train
    from tasks.reenact.edtn import EDTN, EDTNRecipe, HumanGeometry

    geom = HumanGeometry([heads[1]], human_landmarks(heads[1]), bridge[0])
    # Human faces that anime morphs can express: training should find them.
    g = torch.Generator().manual_seed(3)
    reachable = (torch.rand(256, 17, generator=g) * (torch.rand(256, 17, generator=g) < 0.2)) @ geom.bridge
    recipe = EDTNRecipe(geom, reachable.numpy(), steps=150, batch=128, lr=1e-3, max_active=3, hidden=64, seed=0,
                        manifest_fraction=1.0)
    res = train(recipe, TrainingConfig(backend="torch", checkpoint_every=1000, log_every=50), tmp_path)
    net = EDTN(52, 17, 64)
    net.load_state_dict(load_weights(res.checkpoint, "edtn"))
    with torch.no_grad():
        p = net(reachable[:64])
    learned = geom.edtn_loss(reachable[:64], p)[0]
    zero = geom.edtn_loss(reachable[:64], torch.zeros_like(p))[0]
    assert float(learned) < 0.65 * float(zero)


def test_generator_overfits_one_pair(tmp_path):
    from tasks.common.training import TrainingConfig, train
    from tasks.reenact.config import GeneratorConfig
    from tasks.reenact.generator import GeneratorRecipe

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    src = torch.stack([(xx + 0.2) ** 2 + yy**2 < 0.3, yy > 0.5, (xx - yy).abs() < 0.2]).float()[None]
    tgt = torch.stack([(xx - 0.2) ** 2 + yy**2 < 0.3, yy > 0.3, (xx + yy).abs() < 0.2]).float()[None]
    pose = torch.rand(1, 20, generator=g)

    class OnePair:
        def sample(self, n, gen):
            return {"source": src.expand(n, -1, -1, -1), "target": tgt.expand(n, -1, -1, -1), "pose": pose.expand(n, -1)}

    cfg = GeneratorConfig(image_size=32, steps=400, batch=2, lr=2e-3, channels=16, descriptor=32, depth=2, w_warp=1.0,
                          w_final=4.0, w_adv=0.0, w_perceptual=0.0, edit_start=0, adv_start=0, warp_pool=1)
    recipe = GeneratorRecipe(OnePair(), cfg, seed=0)
    res = train(recipe, TrainingConfig(backend="torch", checkpoint_every=1000, log_every=25), tmp_path)
    first, last = res.history[0], res.history[-1]
    # the editing net's masked paint (a sigmoid) approaches these binary targets only asymptotically
    assert last["generator/l1"] < 0.03 and last["generator/final"] < 0.1 * first["generator/final"], (first, last)


def test_ssim_and_psnr_know_identical_and_different_images():
    from tasks.reenact.generator import psnr, ssim

    a = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(a, 1 - a)) < 0.2
    assert torch.isinf(psnr(a, a)).sum() == 0 and float(psnr(a, a).min()) > 90
    assert float(psnr(a, (a + 0.1).clamp(0, 1)).mean()) == pytest.approx(20.0, abs=1.5)


class _FakeJudge(torch.nn.Module):
    """Reads the morph weights written into row 0 of the red channel; a frame whose marker pixel
    (green, top-left) has moved to the right edge was mirrored, and then reads the mirrored face's
    morphs (left and right swapped) — what a perfect judge sees in a flipped image."""

    n_morphs = 17

    def __init__(self, blind: bool = False):
        super().__init__()
        self.blind = blind

    def forward(self, x):
        from tasks.common.morphs import ANIME_MORPH_NAMES
        from tasks.reenact.regressor import mirror_index

        w = x[:, 0, 0, :17].clone()
        flipped = x[:, 1, 0, -1] > 0.5
        w[flipped] = x[flipped].flip(-1)[:, 0, 0, :17][:, mirror_index(ANIME_MORPH_NAMES)]
        return (torch.zeros_like(w) if self.blind else w), torch.zeros(len(x), 3)


def _frames_with_written_weights(n_per_identity: int = 40, seed: int = 0):
    import pandas as pd

    from tasks.reenact.data import AnimeFrames

    rng = np.random.default_rng(seed)
    rows, imgs = [], []
    for ident in ("a", "b"):
        for t in range(-1, n_per_identity):
            w = np.zeros(17, np.float32) if t < 0 else np.where(rng.random(17) < 0.3, rng.uniform(0, 1, 17), 0).astype(np.float32)
            img = np.zeros((3, 32, 32), np.uint8)
            img[0, 0, :17] = np.round(w * 255)
            img[1, 0, 0] = 255
            rows.append({"identity": ident, "style": "default", "kind": "basis" if t < 0 else "random",
                         "pose_id": f"{ident}/{t}", "weights": np.round(w * 255) / 255, "yaw": 0.0, "pitch": 0.0, "roll": 0.0})
            imgs.append(img)
    return AnimeFrames(pd.DataFrame(rows), torch.as_tensor(np.stack(imgs)))


def test_the_judge_reads_a_mirrored_frame_back_with_left_and_right_swapped():
    from tasks.reenact.regressor import read_morphs

    frames = _frames_with_written_weights()
    x = frames.float_images(slice(None))
    w = torch.as_tensor(np.stack(frames.rows.weights.to_numpy()))
    torch.testing.assert_close(read_morphs(_FakeJudge(), x, mirror=False), w)
    torch.testing.assert_close(read_morphs(_FakeJudge(), x), w)  # the mirrored view agrees once swapped back


def test_a_perfect_judge_reads_every_morph_and_a_blind_one_none():
    from tasks.common.morphs import ANIME_MORPH_NAMES
    from tasks.reenact.regressor import Readability, mirror_groups, validation_split

    groups = mirror_groups(ANIME_MORPH_NAMES)
    assert groups["eye_close"] == [0, 1] and groups["mouth_o"] == [16] and sum(map(len, groups.values())) == 17
    frames = _frames_with_written_weights()
    fit, val = validation_split(frames, 0.5, seed=0)
    assert not set(fit.rows.pose_id) & set(val.rows.pose_id) and (val.rows.kind != "basis").all()
    assert len(val.rows) == 40  # half of each identity's 40 poses
    perfect = Readability.measure(_FakeJudge(), val, frames, ANIME_MORPH_NAMES)
    assert perfect.readable == ANIME_MORPH_NAMES and max(perfect.ratio_upper) == 0
    blind = Readability.measure(_FakeJudge(blind=True), val, frames, ANIME_MORPH_NAMES)
    assert blind.readable == [] and np.allclose(blind.ratio, 1)  # reading nothing is reading the neutral copy


def test_basis_sourced_pairs_animate_the_neutral_portrait_within_one_identity_and_style():
    from tasks.reenact.data import PairSampler

    frames = _frames_with_written_weights(n_per_identity=6)
    frames.rows.loc[frames.rows.identity == "b", "style"] = "toon"
    frames.images[:, 2, 1, 0] = torch.arange(len(frames.images), dtype=torch.uint8)  # every frame differs
    rows = frames.rows
    g = torch.Generator().manual_seed(0)
    for share, want in ((1.0, 1.0), (0.0, 1 / 7)):  # with 0, the basis is one source frame among 7
        b = PairSampler(frames, basis_source=share).sample(400, g)
        idx = {bytes(img.numpy().tobytes()): i for i, img in enumerate(frames.images)}
        src = [idx[bytes((x * 255).round().byte().numpy().tobytes())] for x in b["source"]]
        tgt = [idx[bytes((x * 255).round().byte().numpy().tobytes())] for x in b["target"]]
        assert all(s != t and rows.identity[s] == rows.identity[t] and rows["style"][s] == rows["style"][t]
                   for s, t in zip(src, tgt))
        from_basis = np.mean([rows.kind[s] == "basis" for s in src])
        assert from_basis == pytest.approx(want, abs=0.06), share
        assert not any(rows.kind[t] == "basis" for t in tgt) or share < 1
        torch.testing.assert_close(b["pose"][:, :17], torch.as_tensor(np.stack(rows.weights[tgt].to_numpy())).float())


def test_detail_ratio_is_one_for_the_truth_and_falls_for_a_blur():
    import torch.nn.functional as F

    from tasks.reenact.metrics import detail_ratio

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert detail_ratio(x, x) == pytest.approx(1.0)
    assert detail_ratio(F.avg_pool2d(x, 3, 1, 1), x) < 0.5  # PSNR would call this blur close; detail does not


@pytest.mark.parametrize("flow_down", [1, 2])
def test_an_untrained_generator_returns_its_source_unmoved_and_barely_painted(flow_down):
    from tasks.reenact.generator import AnimeGenerator

    torch.manual_seed(0)
    gen = AnimeGenerator(channels=8, descriptor=16, depth=2, flow_down=flow_down)
    src = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        warped, edited, flow = gen(src, torch.rand(2, 20))
    assert float(flow.abs().max()) == 0  # zero-initialised flow head: the identity warp
    torch.testing.assert_close(warped, src, atol=1e-5, rtol=0)
    assert float((edited - src).abs().max()) < 0.02  # the editing mask starts at sigmoid(-4) ≈ 0.018
