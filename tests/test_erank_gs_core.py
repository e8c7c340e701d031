"""erank-GS core: effective rank and its barrier, the CPU reference renderer, gradients, PLY,
densification and the geometry metrics — each against a known answer or an invariant."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.erank_gs.densify import make_strategy
from tasks.erank_gs.erank import effective_rank, erank_barrier, erank_loss, needle_fraction
from tasks.erank_gs.gaussians import GaussianModel, load_ply, ply_fields, save_ply
from tasks.erank_gs.metrics import backproject, chamfer, normal_angular_error, psnr, sample_mesh, ssim
from tasks.erank_gs.render import Camera, render_torch


def camera(size: int = 32, f: float = 40.0, z: float = 0.0) -> Camera:
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    V = torch.eye(4)
    V[2, 3] = z
    return Camera(V, K, size, size)


def model(means, scales, quats=None, opacity=0.8, rgb=(1.0, 0.0, 0.0)) -> GaussianModel:
    means = torch.as_tensor(means, dtype=torch.float32).reshape(-1, 3)
    n = len(means)
    scales = torch.as_tensor(scales, dtype=torch.float32).reshape(n, 3)
    q = torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1) if quats is None else torch.as_tensor(quats, dtype=torch.float32)
    f_dc = (torch.tensor(rgb).repeat(n, 1) - 0.5) / 0.28209479177387814
    return GaussianModel(means, scales.log(), q, torch.logit(torch.full((n,), opacity)), f_dc)


# ------------------------------------------------------------------------------ effective rank


def test_effective_rank_is_one_for_a_needle_two_for_an_equal_disk_three_for_a_sphere():
    s = torch.tensor([[1.0, 1e-4, 1e-4], [1.0, 1.0, 1e-4], [0.3, 0.3, 0.3], [2.0, 1.0, 1.0]])
    er = effective_rank(s)
    assert er[0].item() == pytest.approx(1.0, abs=1e-3)
    assert er[1].item() == pytest.approx(2.0, abs=1e-3)
    assert er[2].item() == pytest.approx(3.0, abs=1e-5)
    # q = (4, 1, 1)/6 → exp(H) by hand
    q = np.array([4, 1, 1]) / 6
    assert er[3].item() == pytest.approx(math.exp(-(q * np.log(q)).sum()), rel=1e-6)
    # scale-invariant and order-invariant
    assert torch.allclose(effective_rank(s * 7.0), er, atol=1e-5)
    assert torch.allclose(effective_rank(s[:, [2, 0, 1]]), er, atol=1e-6)


def test_barrier_is_zero_from_erank_two_and_grows_toward_one():
    assert torch.all(erank_barrier(torch.tensor([2.0, 2.3, 3.0])) == 0)
    vals = erank_barrier(torch.tensor([1.9, 1.5, 1.2, 1.05, 1.01, 1.0]))
    assert torch.all(vals[:-1] > 0) and torch.all(vals[1:] > vals[:-1])
    assert vals[1].item() == pytest.approx(-math.log(0.5), rel=1e-5)
    assert vals[-1].item() == pytest.approx(-math.log(1e-7), rel=1e-3)  # finite at erank 1 (ε = 1e-7)


def test_erank_loss_gradient_fattens_a_needle_and_the_thin_term_shrinks_the_smallest_axis():
    log_s = torch.tensor([[0.0, -3.0, -3.0]], requires_grad=True)  # a needle
    loss, info = erank_loss(log_s.exp(), lambda_erank=1.0, lambda_thin=0.0)
    loss.backward()
    assert info["erank_barrier"] > 0
    assert log_s.grad[0, 1] < 0 and log_s.grad[0, 0] > 0  # descent grows the short axes, shrinks the long one
    log_s = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)  # a disk: barrier off, thin term only
    loss, info = erank_loss(log_s.exp(), lambda_erank=1.0, lambda_thin=1.0)
    loss.backward()
    assert info["erank_barrier"] == 0 and log_s.grad[0, 2] > 0 and log_s.grad[0, 0] == 0


def test_needle_fraction_counts_below_threshold():
    assert needle_fraction(torch.tensor([1.0, 1.03, 1.05, 2.0]), 1.04) == 0.5
    assert needle_fraction(torch.tensor([]), 1.04) == 0.0


# ------------------------------------------------------------------------------ CPU renderer


def test_cpu_renderer_matches_a_hand_computed_single_gaussian():
    size, f, z, sigma, o = 32, 40.0, 3.0, 0.1, 0.8
    m = model([0.0, 0.0, z], [sigma] * 3, opacity=o, rgb=(1.0, 0.2, 0.0))
    out = render_torch(m, camera(size, f), torch.tensor([1.0, 1.0, 1.0]))
    # EWA projection of an isotropic Gaussian on the axis: σ2d = fσ/z, plus gsplat's 0.3 px² dilation
    var = (f * sigma / z) ** 2 + 0.3
    c = torch.arange(size) + 0.5
    d2 = (c[None, :] - size / 2) ** 2 + (c[:, None] - size / 2) ** 2
    alpha = (o * torch.exp(-0.5 * d2 / var)).clamp(max=0.99)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    expected = alpha[..., None] * torch.tensor([1.0, 0.2, 0.0]) + (1 - alpha[..., None])
    torch.testing.assert_close(out.rgb, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(out.alpha, alpha, atol=2e-5, rtol=0)
    hit = alpha > 0
    torch.testing.assert_close(out.depth[hit], torch.full_like(out.depth[hit], z))
    # an isotropic Gaussian's "shortest axis" is one of its axes, turned to face the camera
    n = torch.nn.functional.normalize(out.normal[hit], dim=-1)
    assert torch.all((n * torch.tensor([0.0, 0.0, -1.0])).sum(-1) >= -1e-6)


def test_front_gaussian_occludes_the_back_one():
    m = model([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]], [[0.3] * 3, [0.6] * 3], opacity=0.99)
    with torch.no_grad():
        m.f_dc[1] = (torch.tensor([0.0, 0.0, 1.0]) - 0.5) / 0.28209479177387814  # back one blue, front red
    out = render_torch(m, camera(), torch.ones(3))
    centre = out.rgb[16, 16]
    assert centre[0] > 0.95 and centre[2] < 0.05
    assert out.depth[16, 16].item() == pytest.approx(2.0, abs=0.05)


def test_tiling_does_not_change_the_image():
    g = torch.Generator().manual_seed(0)
    m = GaussianModel.random_init(200, torch.tensor([0.0, 0.0, 3.0]), 1.0, g)
    with torch.no_grad():
        m.opacity_logits += 2.0
    a = render_torch(m, camera(48), torch.ones(3), tile=8)
    b = render_torch(m, camera(48), torch.ones(3), tile=48)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.normal, b.normal, atol=1e-5, rtol=0)


def test_gradients_reach_means_scales_rotations_opacities_and_colours():
    q = torch.nn.functional.normalize(torch.tensor([[0.9, 0.3, 0.2, 0.1], [0.8, -0.2, 0.4, 0.1]]), dim=-1)
    m = model([[0.1, 0.0, 3.0], [-0.2, 0.1, 3.5]], [[0.3, 0.1, 0.05], [0.2, 0.4, 0.1]], quats=q, opacity=0.6)
    out = render_torch(m, camera(), torch.ones(3), track_absgrad=True)
    target = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    ((out.rgb - target) ** 2).mean().backward()
    for name in ("means", "log_scales", "quats", "opacity_logits", "f_dc"):
        g = getattr(m, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert out.means2d.grad is not None and out.means2d.grad.abs().sum() > 0
    ag = out.absgrad()
    # Σ|per-pixel gradients| ≥ |Σ per-pixel gradients| (the abs-grad statistic bounds the plain one)
    assert torch.all(ag + 1e-9 >= out.means2d.grad.abs())


def test_normals_and_depth_carry_gradients_to_rotations_and_means():
    q = torch.nn.functional.normalize(torch.tensor([[0.9, 0.3, 0.2, 0.1]]), dim=-1)
    m = model([[0.0, 0.0, 3.0]], [[0.3, 0.2, 0.02]], quats=q)
    out = render_torch(m, camera(), torch.ones(3))
    (out.normal[..., 2].sum() + out.depth.sum()).backward()
    assert m.quats.grad.abs().sum() > 0 and m.means.grad[0, 2].abs() > 0


# ------------------------------------------------------------------------------ PLY


def test_ply_round_trips_with_the_standard_3dgs_fields(tmp_path):
    g = torch.Generator().manual_seed(3)
    m = GaussianModel.random_init(57, torch.zeros(3), 1.0, g)
    with torch.no_grad():
        m.quats.copy_(torch.randn(57, 4, generator=g))
        m.opacity_logits.copy_(torch.randn(57, generator=g))
    p = save_ply(m, tmp_path / "point_cloud.ply")
    head = p.read_bytes()[:1000].split(b"end_header")[0].decode()
    assert "element vertex 57" in head
    assert [l.split()[2] for l in head.splitlines() if l.startswith("property")] == ply_fields()
    back = load_ply(p)
    for name in ("means", "log_scales", "quats", "opacity_logits", "f_dc"):
        torch.testing.assert_close(getattr(back, name), getattr(m, name), rtol=0, atol=0)


def test_load_ply_refuses_a_file_that_is_not_a_3dgs_ply(tmp_path):
    bad = tmp_path / "x.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(ValueError, match="binary_little_endian"):
        load_ply(bad)


# ------------------------------------------------------------------------------ densification


def _adam(m: GaussianModel) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": [getattr(m, k)], "lr": 1e-3, "name": k}
                             for k in ("means", "f_dc", "opacity_logits", "log_scales", "quats")], eps=1e-15)


@pytest.mark.parametrize("name", ["default", "absgrad"])
def test_densification_clones_small_splits_large_and_training_continues(name):
    m = model([[0, 0, 3.0], [0.5, 0, 3.0], [-0.5, 0, 3.0], [0, 0.5, 3.0]],
              [[0.001] * 3, [0.5] * 3, [0.001] * 3, [0.001] * 3], opacity=0.5)
    opt = _adam(m)
    out = render_torch(m, camera(), torch.ones(3))
    out.rgb.mean().backward()
    opt.step()
    strat = make_strategy(name, start=0, stop=100, every=1, extent=1.0, reset_every=0)
    strat.reset_stats(4, torch.device("cpu"))
    g = torch.tensor([[1e-3, 0.0], [1e-3, 0.0], [0.0, 0.0], [1e-6, 0]])  # 0 and 1 qualify, 2 and 3 do not
    ab = torch.tensor([[1e-3, 0.0], [1e-3, 0.0], [0.0, 0.0], [1e-3, 0]])
    strat.accumulate(g, ab, torch.ones(4, dtype=torch.bool), 2, 2)
    info = strat.refine(m, opt, torch.Generator().manual_seed(0))
    # absgrad: ratio = 2/4 → Q = median of the abs statistic; Gaussian 3 (abs-grad ≥ Q) also grows
    assert info["cloned"] == (2 if name == "absgrad" else 1) and info["split"] == 1
    assert len(m) == 4 - 1 + info["cloned"] + 2
    for p in m.parameters():  # every optimiser group holds the new parameter, its moments resized
        assert any(p is q for grp in opt.param_groups for q in grp["params"])
        assert opt.state[p]["exp_avg"].shape == p.shape
    render_torch(m, camera(), torch.ones(3)).rgb.mean().backward()
    opt.step()  # shapes agree after the edit


def test_densification_prunes_transparent_gaussians_at_the_strategy_threshold():
    m = model([[0, 0, 3.0], [0.2, 0, 3.0]], [[0.1] * 3] * 2, opacity=0.5)
    with torch.no_grad():
        m.opacity_logits[1] = torch.logit(torch.tensor(0.02))
    for name, expect in (("default", 2), ("absgrad", 1)):  # 0.02 is kept by 3DGS (0.005), pruned by §2.3 (0.05)
        mm = GaussianModel(*(getattr(m, k).detach().clone() for k in ("means", "log_scales", "quats", "opacity_logits", "f_dc")))
        strat = make_strategy(name, start=0, stop=10, every=1, extent=1.0)
        strat.reset_stats(2, torch.device("cpu"))
        strat.refine(mm, _adam(mm), torch.Generator())
        assert len(mm) == expect, name


def test_a_checkpoint_with_another_gaussian_count_loads():
    g = torch.Generator().manual_seed(0)
    big = GaussianModel.random_init(40, torch.zeros(3), 1.0, g)
    small = GaussianModel.random_init(5, torch.zeros(3), 1.0, g)
    small.load_state_dict(big.state_dict())
    assert len(small) == 40 and torch.equal(small.means, big.means)


# ------------------------------------------------------------------------------ metrics


def test_image_metrics_known_answers():
    a = torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)
    assert psnr(a, (a + 0.1).clamp(0, 1)) < psnr(a, (a + 0.01).clamp(0, 1))
    assert psnr(torch.zeros(4, 4, 3), torch.full((4, 4, 3), 0.1)) == pytest.approx(20.0, abs=1e-4)
    assert ssim(a, torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(1))).item() < 0.2


def test_normal_error_and_chamfer_known_answers():
    n = torch.zeros(4, 4, 3)
    n[..., 2] = 1
    tilted = torch.zeros(4, 4, 3)
    tilted[..., 1], tilted[..., 2] = 1, 1  # 45°
    mask = torch.ones(4, 4, dtype=torch.bool)
    assert normal_angular_error(n, n, mask)[0] == pytest.approx(0.0, abs=1e-3)
    assert normal_angular_error(tilted, n, mask)[0] == pytest.approx(45.0, abs=1e-3)
    pts = np.random.default_rng(0).random((500, 3))
    assert chamfer(pts, pts)["chamfer"] == 0.0
    assert chamfer(pts, pts + [0.0, 0.0, 0.1])["chamfer"] == pytest.approx(0.1, abs=0.03)


def test_backprojected_depth_of_a_plane_lies_on_it_and_mesh_samples_lie_on_the_mesh():
    cam = camera(16, 20.0)
    depth = torch.full((16, 16), 2.5)
    pts = backproject(depth, cam, torch.ones(16, 16, dtype=torch.bool))
    assert torch.allclose(pts[:, 2], torch.full((256,), 2.5))
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0.0]])
    s = sample_mesh(verts, np.array([[0, 1, 2]]), 1000)
    assert np.allclose(s[:, 2], 0) and np.all(s[:, 0] + s[:, 1] <= 1 + 1e-9) and np.all(s >= -1e-9)
