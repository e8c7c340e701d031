"""pixelhuman's maths without anny or Blender: skinning, cameras, the volume renderer, the field's
gradients, camera-file errors, metrics and intervals (all fast, CPU)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tasks.pixelhuman.cameras import CameraFileError, Cameras, load_cameras, look_at, pixel_rays, project, ring, write_cameras
from tasks.pixelhuman.render import composite, ray_box, render_rays, sample_depths
from tasks.pixelhuman.skinning import forward_lbs, inverse_lbs, knn_weights


def _rigid(g: torch.Generator, n: int) -> torch.Tensor:
    """``n`` random rigid 4×4 transforms (rotation from QR, translation ±0.3)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[torch.det(q) < 0, :, 0] *= -1
    T = torch.eye(4).repeat(n, 1, 1)
    T[:, :3, :3] = q
    T[:, :3, 3] = 0.3 * torch.randn(n, 3, generator=g)
    return T


def test_inverse_skinning_returns_the_canonical_point_it_posed():
    g = torch.Generator().manual_seed(0)
    J, N = 12, 500
    T = _rigid(g, J)
    # weights concentrated on a few bones (as anny's are: ≤ 4 per vertex, near-rigid blends)
    w = torch.zeros(N, J)
    idx = torch.randint(J, (N, 2), generator=g)
    w.scatter_(1, idx, torch.rand(N, 2, generator=g) + 0.2)
    w = w / w.sum(1, keepdim=True)
    xc = torch.rand(N, 3, generator=g) - 0.5
    xp = forward_lbs(xc, w, T)
    assert not torch.allclose(xp, xc, atol=1e-2)  # the pose really moved them
    assert torch.allclose(inverse_lbs(xp, w, T), xc, atol=1e-4)


def test_nearest_vertex_weights_make_the_round_trip_through_a_posed_mesh():
    """Posed vertices look up their own weights (k = 1), so inverse skinning returns the rest mesh."""
    g = torch.Generator().manual_seed(1)
    J, V = 6, 300
    T = _rigid(g, J)
    rest = torch.rand(V, 3, generator=g)
    w = torch.softmax(3 * torch.randn(V, J, generator=g), 1)
    posed = forward_lbs(rest, w, T)
    w_look, dist = knn_weights(posed, posed, w, k=1)
    assert torch.allclose(dist, torch.zeros(V), atol=1e-3)
    assert torch.allclose(inverse_lbs(posed, w_look, T), rest, atol=1e-4)


def test_the_renderer_reproduces_a_hand_computed_ray():
    """Two samples, σ = (1, 2), δ = (0.5, 0.5): C = α₁c₁ + (1−α₁)α₂c₂ + (1−α₁)(1−α₂)·bg."""
    sigma = torch.tensor([[1.0, 2.0]])
    c1, c2, bg = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    rgb = torch.stack([c1, c2])[None]
    depths = torch.tensor([[0.25, 0.75]])
    far = torch.tensor([1.0])  # last bin = 2·(far − 0.75) = 0.5
    out = composite(sigma, rgb, depths, far, bg)
    a1, a2 = 1 - math.exp(-0.5), 1 - math.exp(-1.0)
    expect = a1 * c1 + (1 - a1) * a2 * c2 + (1 - a1) * (1 - a2) * bg
    assert torch.allclose(out["rgb"][0], expect, atol=1e-5)
    assert out["acc"][0].item() == pytest.approx(a1 + (1 - a1) * a2, abs=1e-5)


def test_a_ray_through_a_uniform_cube_has_beer_lambert_opacity():
    """σ = 3 inside the unit cube, crossed over length 1: opacity 1 − e⁻³ whatever the sampling."""
    o, d = torch.tensor([[-1.0, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
    lo, hi = torch.zeros(3), torch.ones(3)
    near, far, hit = ray_box(o, d, lo, hi)
    assert hit.item() and near.item() == pytest.approx(1.0) and far.item() == pytest.approx(2.0)
    field = lambda x: (torch.full((len(x),), 3.0), torch.full((len(x), 3), 0.2))  # noqa: E731
    out = render_rays(field, o, d, lo, hi, 16, jitter=False, background=torch.ones(3))
    assert out["acc"].item() == pytest.approx(1 - math.exp(-3.0), abs=1e-4)
    assert out["rgb"][0, 0].item() == pytest.approx(0.2 * (1 - math.exp(-3)) + math.exp(-3), abs=1e-4)
    miss = render_rays(field, torch.tensor([[-1.0, 5.0, 0.5]]), d, lo, hi, 16, jitter=False, background=torch.ones(3))
    assert miss["acc"].item() == 0 and torch.equal(miss["rgb"][0], torch.ones(3))
    t = sample_depths(torch.zeros(4), torch.ones(4), 8, True, torch.Generator().manual_seed(0))
    assert (t[:, 1:] > t[:, :-1]).all() and t.min() >= 0 and t.max() <= 1


def _cams(n: int = 4, res: int = 32) -> Cameras:
    mats = ring(n, 3.0, 1.0, 0.9)
    return Cameras([f"c{i}" for i in range(n)], torch.as_tensor(np.stack(mats), dtype=torch.float32), res, 40.0)


def test_projection_inverts_pixel_rays_and_the_target_lands_in_the_centre():
    cams = _cams()
    centre, _ = project(torch.tensor([[[0.0, 0.0, 0.9]]]).expand(len(cams), 1, 3), cams)
    assert torch.allclose(centre[:, 0], torch.full((len(cams), 2), 16.0), atol=1e-3)
    pix = torch.tensor([[3, 7], [20, 11], [31, 0]])
    o, d = pixel_rays(cams, 2, pix)
    pts = o + 2.5 * d
    uv, z = project(pts[None], cams.subset([2]))
    assert torch.allclose(uv[0], pix.flip(1).float() + 0.5, atol=1e-3) and (z > 0).all()
    # image v grows downwards: a higher point projects to a smaller row
    up, _ = project(torch.tensor([[[0.0, 0.0, 1.5]], [[0.0, 0.0, 0.3]]]).transpose(0, 1).expand(len(cams), 2, 3), cams)
    assert (up[:, 0, 1] < up[:, 1, 1]).all()


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("fov_deg"), "fov_deg"),
    (lambda d: d.update(resolution="64"), "resolution"),
    (lambda d: d.update(cameras=[]), "cameras"),
    (lambda d: d["cameras"][1].update(c2w=[[1, 0, 0, 0]] * 3), "cameras[1].c2w"),
    (lambda d: d["cameras"][0].update(c2w=(2 * np.eye(4)).tolist()), "cameras[0].c2w"),
    (lambda d: d["cameras"][2].pop("name"), "cameras[2].name"),
    (lambda d: d["cameras"][3].update(name="c0"), "cameras[3].name"),
])
def test_malformed_camera_files_name_the_bad_field(tmp_path, mutate, field):
    path = tmp_path / "cameras.json"
    write_cameras(path, [f"c{i}" for i in range(4)], ring(4, 3.0, 1.0, 0.9), 64, 40.0)
    assert len(load_cameras(path)) == 4
    raw = json.loads(path.read_text())
    mutate(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(CameraFileError, match=rf"cameras.json: {__import__('re').escape(field)}"):
        load_cameras(path)


def test_unreadable_camera_files_are_data_errors(tmp_path):
    from tasks.common.config import DataError

    with pytest.raises(DataError, match="not found"):
        load_cameras(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_cameras(tmp_path / "bad.json")


def test_look_at_is_a_proper_camera_looking_at_its_target():
    m = look_at(np.array([0.0, -3.0, 1.0]), np.array([0.0, 0.0, 1.0]))
    assert np.allclose(m[:3, :3].T @ m[:3, :3], np.eye(3)) and np.linalg.det(m[:3, :3]) > 0
    assert np.allclose(-m[:3, 2], [0, 1, 0])  # looks down −z (OpenGL) towards +y


def _toy_context(n_views: int = 2, J: int = 5):
    from tasks.pixelhuman.model import Context

    g = torch.Generator().manual_seed(0)
    cams = _cams(n_views, 16)
    T = _rigid(g, J)
    T[:, :3, 3] *= 0.1
    verts = torch.rand(200, 3, generator=g) * torch.tensor([0.6, 0.4, 1.6]) + torch.tensor([-0.3, -0.2, 0.1])
    w = torch.softmax(torch.randn(200, J, generator=g), 1)
    return Context(images=torch.rand(n_views, 3, 16, 16, generator=g), cams=cams,
                   in_transforms=torch.eye(4).expand(n_views, J, 4, 4).clone(), tgt_transforms=T, tgt_verts=verts,
                   vert_weights=w, tgt_pose=torch.randn(8, generator=g)), verts


def test_gradients_reach_the_encoder_and_the_deformation_field():
    from tasks.pixelhuman.model import HumanField
    from tasks.pixelhuman.render import body_box

    torch.manual_seed(0)
    field = HumanField(canonical=True, pixel=True, feature_dim=8, hidden=32, pos_freqs=2, pose_dim=8, shell=0.5)
    ctx, verts = _toy_context()
    ctx = field.encode(ctx)
    lo, hi = body_box(verts, 0.1)
    o, d = pixel_rays(ctx.cams, 0, torch.tensor([[8, 8], [6, 9], [10, 7]]))
    out = render_rays(lambda x: field(x, ctx), o, d, lo, hi, 8, jitter=False, background=torch.ones(3))
    assert out["acc"].max() > 0
    (out["rgb"].sum() + out["acc"].sum()).backward()
    enc = [p.grad for p in field.encoder.parameters()]
    assert all(gr is not None for gr in enc) and sum(float(gr.abs().sum()) for gr in enc) > 0
    assert float(field.deform[-1].weight.grad.abs().sum()) > 0  # zero-initialised last layer still learns


def test_the_pose_unaware_baseline_samples_input_views_at_the_posed_point():
    """Without the canonical space a view in the target pose samples where the ray came from; with it
    the point is moved by the pose change first: the two disagree once the poses differ."""
    from tasks.pixelhuman.model import HumanField

    torch.manual_seed(0)
    ctx, verts = _toy_context(1)
    x = verts[:20] + 0.01
    ours = HumanField(canonical=True, pixel=True, feature_dim=8, hidden=32, pos_freqs=2, pose_dim=8, shell=1.0)
    plain = HumanField(canonical=False, pixel=True, feature_dim=8, hidden=32, pos_freqs=2, pose_dim=8, shell=1.0)
    with torch.no_grad():
        for f in (ours, plain):
            f.encode(ctx)
        s1, _ = ours(x, ctx)
        s2, _ = plain(x, ctx)
    assert s1.shape == s2.shape == (20,)
    assert ours.deform is not None and plain.deform is None and plain.encoder is not None


def test_input_views_are_spread_and_nested():
    from tasks.pixelhuman.bodies import input_order

    order = input_order(8)
    assert order[:3] == [0, 4, 2] and sorted(order) == list(range(8))


def test_metrics_on_the_mask_and_bootstrap_intervals():
    from tasks.pixelhuman.evaluate import bootstrap_ci, image_metrics

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(32, 32, 3, generator=g)
    mask = torch.zeros(32, 32)
    mask[8:24, 10:20] = 1
    noisy = (gt + 0.05 * torch.randn(32, 32, 3, generator=g)).clamp(0, 1)
    far = noisy.clone()
    far[0:4] = 0  # outside the (dilated) body mask: must not change the masked PSNR
    m1, m2 = image_metrics(noisy, gt, mask, mask), image_metrics(far, gt, mask, mask)
    assert 24 < m1["psnr"] < 28 and m1["psnr"] == pytest.approx(m2["psnr"])
    assert m1["iou"] == 1.0 and 0 < m1["ssim"] < 1
    empty = image_metrics(noisy, gt, torch.zeros(32, 32), mask)
    assert empty["iou"] == 0.0
    mean, lo, hi = bootstrap_ci(np.arange(10.0), 500, 0)
    assert lo < mean == 4.5 < hi
