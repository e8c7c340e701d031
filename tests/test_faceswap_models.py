"""faceswap's maths without Blender: masks and their augmentations, the generator, the baselines,
the data contract's checks and the config's field-named errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.common.config import DataError


def _disc_mask(n=2, r=48, radius=12):
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    m = (((yy - r / 2) ** 2 + (xx - r / 2) ** 2) < radius**2).float()
    return m.expand(n, 1, r, r).clone()


def test_perforation_changes_only_the_boundary_band():
    from tasks.faceswap.samae import boundary_band, dilate, erode, perforate

    m = _disc_mask()
    band_px = 3
    out = perforate(m, band_px, 0.5, torch.Generator().manual_seed(0))
    band = boundary_band(m, band_px) > 0.5
    changed = out != m
    assert changed.any(), "perforation must change something"
    assert not changed[~band].any(), "outside the band (interior and background) nothing may change"
    # inside the band both values occur: the outline is no longer readable from the mask
    vals = out[band]
    assert 0.25 < vals.mean() < 0.75
    assert torch.equal(out * erode(m, band_px), erode(m, band_px))  # the interior stays masked
    assert not (out * (1 - dilate(m, band_px))).any()  # the far background stays unmasked


def test_mesh_scaling_scales_area_about_the_centroid():
    from tasks.faceswap.samae import scale_mask

    m = _disc_mask(n=2, r=64, radius=10)
    s = torch.tensor([1.2, 0.8])
    out = scale_mask(m, s)
    ratio = out.sum((1, 2, 3)) / m.sum((1, 2, 3))
    torch.testing.assert_close(ratio, s**2, atol=0.08, rtol=0)
    ys = torch.arange(64).float()
    cy = lambda x: (x[0, 0].sum(1) * ys).sum() / x[0, 0].sum()  # noqa: E731
    assert abs(float(cy(out) - cy(m))) < 0.6


def test_generator_overfits_one_pair():
    """The SAMAE generator rebuilds one masked face from its identity vector: a wrong wiring of
    the skips, the AdaIN injection or the loss would keep the error high."""
    from tasks.faceswap.networks import SwapGenerator

    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny convolutions: more threads only add contention
    r = 16
    yy, xx = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
    x = torch.stack([0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(6 * xx), 0.3 + 0.4 * xx * yy])[None]
    m = _disc_mask(1, r, 5)
    z = torch.nn.functional.normalize(torch.randn(1, 128), dim=-1)
    g = SwapGenerator(128, 8, in_ch=4, blocks=1)
    opt = torch.optim.Adam(g.parameters(), lr=3e-3)
    inp = torch.cat([x * (1 - m), m], 1)
    with torch.no_grad():
        first = float((g(inp, z) - x).abs().mean())
    for _ in range(250):
        loss = (g(inp, z) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float((g(inp, z) - x).abs().mean())
    assert final < 0.03 and final < first / 4, (first, final)


def test_identity_injection_changes_the_output():
    from tasks.faceswap.networks import SwapGenerator

    torch.manual_seed(0)
    g = SwapGenerator(128, 8, in_ch=4, blocks=2)
    x = torch.rand(2, 4, 32, 32)
    z = torch.randn(2, 128)
    assert (g(x, z) - g(x, -z)).abs().mean() > 1e-3


def test_arcface_margin_only_touches_the_true_class():
    from tasks.faceswap.tools import ArcMargin

    head = ArcMargin(4, 3, s=10.0, m=0.5)
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    plain = 10.0 * torch.nn.functional.normalize(z) @ torch.nn.functional.normalize(head.w).T
    with_margin = head(z, y)
    onehot = torch.nn.functional.one_hot(y, 3).bool()
    torch.testing.assert_close(with_margin[~onehot], plain[~onehot])
    assert (with_margin[onehot] < plain[onehot]).all()  # cos(θ + m) < cos θ


def test_warp_blend_of_a_face_onto_itself_is_nearly_the_face():
    pytest.importorskip("cv2")
    from tasks.faceswap.geometric import warp_and_blend

    r = np.random.default_rng(0)
    img = (np.clip(r.normal(0.5, 0.1, (64, 64, 3)), 0, 1) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:64, :64]
    mask = ((yy - 32) ** 2 + (xx - 32) ** 2) < 18**2
    pts = np.stack([32 + 15 * np.cos(a) for a in np.linspace(0, 6, 12)] + [32], 0)
    pts = np.stack([np.r_[32 + 15 * np.cos(np.linspace(0, 6, 12)), 32], np.r_[32 + 15 * np.sin(np.linspace(0, 6, 12)), 32]], 1)
    out = warp_and_blend(img, pts, img, pts, mask)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 4


def test_bootstrap_interval_brackets_the_mean():
    from tasks.faceswap.evaluate import bootstrap_ci, paired_diff_ci

    v = np.random.default_rng(0).normal(1.0, 1.0, 400)
    m, lo, hi = bootstrap_ci(v, 1000)
    assert lo < m < hi and lo < 1.0 < hi and hi - lo < 0.4
    d, dlo, dhi = paired_diff_ci(v + 0.5, v, 500)
    assert abs(d - 0.5) < 1e-9 and dlo <= d <= dhi
    assert np.isnan(bootstrap_ci(np.array([np.nan]), 100)[0])


def test_each_papers_claim_reads_its_own_paired_differences():
    """SAMAE's family is compared with every other method; RobustSwap alone with the baseline, the
    geometric swap and its ablations — and a lower leakage reads "better" for RobustSwap."""
    from tasks.faceswap.report import CLAIMS, COLUMNS, claim_line, paired_table

    rng = np.random.default_rng(0)
    base = {k: rng.normal(0.5, 0.05, 60) for k, _, _ in COLUMNS}
    per = {m: dict(base) for m in ("samae", "samae_noperf", "simswap", "warp_blend", "robustswap",
                                   "robustswap_no_explicit3d")}
    per["robustswap"] = {**base, "leak_hair": base["leak_hair"] - 0.2, "psnr": base["psnr"] - 1.0}
    samae, robust = (paired_table(per, 200, c) for c in CLAIMS)
    assert samae["rows"] == 2 * 4 and "samae − robustswap" in samae["md"] and "samae − samae" not in samae["md"]
    assert robust["rows"] == 3  # robustswap − {simswap, warp_blend, robustswap_no_explicit3d}
    assert "robustswap − samae" not in robust["md"] and "robustswap_no_explicit3d − " not in robust["md"]
    assert robust["main"]["leak_hair"]["verdict"] == "better" and robust["main"]["psnr"]["verdict"] == "worse"
    assert robust["main"]["ssim"]["verdict"] == "≈"
    line = claim_line(CLAIMS[1], robust["main"])
    assert "better on hair leak ↓;" in line and "worse on PSNR ↑;" in line
    assert "not tested" in claim_line(CLAIMS[1], paired_table({"samae": base}, 100, CLAIMS[1])["main"])


def test_centring_removes_the_direction_every_embedding_shares():
    """An encoder whose outputs share one large offset puts every face at cosine ≈ 1; subtracting
    the training frames' mean embedding (``embedding_center``) leaves the part that differs."""
    import torch

    from tasks.faceswap.tools import ID_DIM, EvalTools, embedding_center, face_region

    class Offset(torch.nn.Module):  # 50 + a per-image signal that differs between images
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3 * 16 * 16, ID_DIM)

        def forward(self, x):
            return 50.0 + self.proj(x.flatten(1))

    torch.manual_seed(0)
    faces = _toy_faceset(n=12)
    faces.images[:] = np.random.default_rng(0).integers(0, 255, faces.images.shape, dtype=np.uint8)
    faces.masks[:] = True
    net = Offset().eval()
    k = ID_DIM
    tools = EvalTools(net, net, 16, torch.zeros(k), torch.ones(k), {}, 0.0)
    x = torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(faces.masks)
    with torch.no_grad():
        raw = tools.identity(x, m)
        tools.center = torch.from_numpy(embedding_center(net, faces, 16))
        centred = tools.identity(x, m)
        expect = net(face_region(x, m, 16)).mean(0)
    off = ~torch.eye(12, dtype=torch.bool)
    assert (raw @ raw.T)[off].min() > 0.99
    assert (centred @ centred.T)[off].mean().abs() < 0.2
    torch.testing.assert_close(tools.center, expect, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ bad inputs


def _toy_faceset(n=4, r=16):
    from tasks.faceswap.dataset import EXPRESSION_NAMES, SHAPE_NAMES, FaceSet

    f = np.zeros
    return FaceSet(images=f((n, r, r, 3), np.uint8), masks=f((n, r, r), bool), identity=np.arange(n),
                   shape=f((n, len(SHAPE_NAMES)), np.float32), expression=f((n, len(EXPRESSION_NAMES)), np.float32),
                   pose=f((n, 3), np.float32), light_dir=f((n, 3), np.float32), light_color=f((n, 3), np.float32),
                   skin=f((n, 3), np.float32), iris=f((n, 3), np.float32), hair_color=f((n, 3), np.float32),
                   hair_style=f(n, np.int64), background=f(n, np.int64), landmarks=f((n, 5, 2), np.float32),
                   sequence=-np.ones(n, np.int64), frame=f(n, np.int64))


def test_missing_data_names_the_file(tmp_path):
    from tasks.faceswap.dataset import load_faces, load_pairs

    with pytest.raises(DataError, match="train.npz"):
        load_faces(tmp_path, "train")
    with pytest.raises(DataError, match="pairs.npz"):
        load_pairs(tmp_path)
    with pytest.raises(DataError, match="split"):
        load_faces(tmp_path, "validation")
    (tmp_path / "test.npz").write_bytes(b"not an npz")
    with pytest.raises(DataError, match="test.npz: unreadable"):
        load_faces(tmp_path, "test")


def test_mismatched_sizes_name_the_field(tmp_path):
    from tasks.faceswap.dataset import PairSet, load_faces, save_faces

    fs = _toy_faceset()
    save_faces(tmp_path / "train.npz", fs)
    assert len(load_faces(tmp_path, "train")) == 4
    bad = _toy_faceset()
    bad.masks = np.zeros((4, 8, 8), bool)
    with pytest.raises(DataError, match="masks"):
        bad.check("x")
    bad = _toy_faceset()
    bad.expression = np.zeros((4, 51), np.float32)
    with pytest.raises(DataError, match="expression"):
        bad.check("x")
    bad = _toy_faceset()
    bad.pose = np.zeros((3, 3), np.float32)
    with pytest.raises(DataError, match="pose has 3 rows"):
        bad.check("x")
    pairs = PairSet(source=np.array([0]), target=np.array([9]), gt=np.zeros((1, 16, 16, 3), np.uint8),
                    gt_masks=np.zeros((1, 16, 16), bool), gt_landmarks=np.zeros((1, 5, 2), np.float32),
                    sequence=np.array([-1]))
    with pytest.raises(DataError, match="outside the test set"):
        pairs.check("pairs", fs)
    pairs.target = np.array([1])
    pairs.gt = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="gt images"):
        pairs.check("pairs", fs)


@pytest.mark.parametrize("override, field", [
    ({"methods": ["samae", "nope"]}, "methods"),
    ({"budget": {"resolution": 48}}, "budget.resolution"),
    ({"budget": {"resolution": 128}, "data": {"resolution": 64}}, "budget"),
    ({"method_options": {"samae": {"band": 0}}}, "method_options.samae.band"),
    ({"method_options": {"unknown": {}}}, "method_options"),
    ({"data": {"train_identities": 1}}, "data.train_identities"),
])
def test_bad_config_names_the_field(override, field):
    from tasks.common.config import ConfigError, validate
    from tasks.faceswap.config import FaceswapConfig

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(FaceswapConfig, override, flow="faceswap")


def test_registry_builds_ablations_with_their_switches():
    from tasks.faceswap import methods

    assert {"samae", "samae_noperf", "samae_noscale", "simswap", "warp_blend"} <= set(methods.METHODS)
    assert methods.get("samae_noperf").build().opts.perforation is False
    assert methods.get("samae_noscale").build().opts.mesh_scaling is False
    assert methods.get("samae").build({"band": 5}).opts.band == 5
    with pytest.raises(KeyError, match="unknown swap method"):
        methods.get("nope")


def test_a_methods_own_code_is_part_of_its_train_and_evaluate_keys():
    """The registry imports methods by name, out of the steps' import closure: without this an
    edited samae.py or robustswap/ would reuse a stale train/<method>/ folder."""
    import inspect

    from tasks.common.codehash import code_fingerprint
    from tasks.faceswap import methods, steps

    prints = {n: methods.get(n).code() for n in ("samae", "simswap", "robustswap", "warp_blend")}
    assert len(set(prints.values())) == 4
    rs = methods.get("robustswap").cls()
    assert prints["robustswap"] == code_fingerprint(rs.train) + code_fingerprint(rs.swap)
    for fn in (steps.train, steps.evaluate):
        assert ".code()" in inspect.getsource(fn), fn.__name__
