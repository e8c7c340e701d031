"""RobustSwap (tasks/faceswap/robustswap): the StyleGAN maths, inversion, the 3D loss, the guidance
switches, the leakage measure, and the method end to end through the flow's registry contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tasks.faceswap.robustswap.face3d import Face3DNet
from tasks.faceswap.robustswap.inversion import EncoderRecipe, WPlusEncoder
from tasks.faceswap.robustswap.leakage import leakage_coefficients
from tasks.faceswap.robustswap.stylegan import Discriminator, Generator, modulated_conv2d, r1_penalty
from tasks.faceswap.robustswap.swapper import RobustSwapper, SwapLossWeights, swapper_terms, total_loss


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one torch thread is faster than two fighting a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hand_modulated_conv(x, weight, styles, demodulate, eps=1e-8):
    """Loops over every index: w'_{n,o,i,k} = s_{n,i} w_{o,i,k}, divided by sqrt(Σ_{i,k} w'² + ε)."""
    x, weight, styles = (np.asarray(t, dtype=np.float64) for t in (x, weight, styles))
    n_, i_, h, w = x.shape
    o_, _, k, _ = weight.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n_, o_, h, w))
    for n in range(n_):
        for o in range(o_):
            wm = weight[o] * styles[n][:, None, None]
            if demodulate:
                wm = wm / np.sqrt((wm**2).sum() + eps)
            for y in range(h):
                for xx in range(w):
                    out[n, o, y, xx] = (wm * xp[n, :, y : y + k, xx : xx + k]).sum()
    return out


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel", [1, 3])
def test_modulation_demodulation_matches_hand_computation(demodulate, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, kernel, kernel, generator=g, dtype=torch.float64)
    styles = torch.rand(2, 3, generator=g, dtype=torch.float64) * 2 + 0.1
    got = modulated_conv2d(x, weight, styles, demodulate=demodulate).numpy()
    np.testing.assert_allclose(got, _hand_modulated_conv(x, weight, styles, demodulate), rtol=1e-10, atol=1e-12)


def test_demodulation_restores_unit_variance_whatever_the_style():
    """The point of demodulation: unit-variance input → unit-variance output per channel, for any s."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 64, 64, generator=g)
    weight = torch.randn(8, 16, 3, 3, generator=g)
    for scale in (0.1, 10.0):
        styles = torch.rand(2, 16, generator=g) * scale
        y = modulated_conv2d(x, weight, styles)[..., 2:-2, 2:-2]
        assert y.var(dim=(2, 3)).mean().item() == pytest.approx(1.0, abs=0.1)


def _tiny_generator(seed: int = 0, res: int = 16) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(resolution=res, z_dim=32, w_dim=32, mapping_layers=2, channel_base=32, channel_max=32)
    with torch.no_grad():
        gen.mapping.w_avg.copy_(gen.mapping(torch.randn(256, 32)).mean(0))
    return gen.eval()


def test_generator_counts_ws_and_f_space_entry_continues_its_own_synthesis():
    gen = _tiny_generator(res=32)
    assert gen.num_ws == 2 * 5 - 2
    ws = gen.map(torch.randn(3, 32))
    img, (feat, rgb) = gen.synthesis(ws, noise="const", return_features=16)
    assert img.shape == (3, 3, 32, 32) and feat.shape == (3, gen.channels[16], 16, 16) and rgb.shape == (3, 3, 16, 16)
    # starting at 16² from G's own 16² features gives G's own image: F-space replaces exactly those
    torch.testing.assert_close(gen.synthesis(ws, start=(16, feat, rgb), noise="const"), img)
    # and the layers below the entry are not used: other W+ there change nothing
    ws2 = ws.clone()
    ws2[:, : gen.ws_index(32)] += 5.0
    torch.testing.assert_close(gen.synthesis(ws2, start=(16, feat, rgb), noise="const"), img)


def test_r1_is_the_squared_input_gradient_norm():
    torch.manual_seed(0)
    lin = nn.Linear(3 * 8 * 8, 1)
    disc = lambda x: lin(x.flatten(1)).squeeze(1)  # noqa: E731  (gradient = the weight, for every x)
    x = torch.randn(4, 3, 8, 8)
    assert r1_penalty(disc, x).item() == pytest.approx(lin.weight.square().sum().item(), rel=1e-5)
    assert Discriminator(resolution=16, channel_base=16, channel_max=16)(torch.randn(4, 3, 16, 16)).shape == (4,)


def test_w_plus_encoder_overfits_one_image():
    """One image in G's range; the encoder (from w̄) must find W+ that reproduces it."""
    gen = _tiny_generator(seed=3)
    gen.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    w_true = gen.mean_latent() + 1.5 * torch.randn(1, gen.num_ws, gen.w_dim, generator=g)
    image = gen.synthesis(w_true, noise="const").detach()
    recipe = EncoderRecipe(image, gen, None, steps=150, batch=1, lr=1e-2, channels=8, seed=0, perceptual=0.0, w_reg=0.0)
    enc = recipe.build()["encoder"]
    opt = recipe.optimizer("encoder", enc)
    start = (gen.synthesis(enc(image), noise="const") - image).square().mean().item()
    for step in range(recipe.steps):
        loss, logs = recipe.loss("encoder", {"encoder": enc}, recipe.batch(step, 0, torch.device("cpu")), {}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = (gen.synthesis(enc(image), noise="const") - image).square().mean().item()
    assert start > 0.01
    assert end < 0.02 * start, (start, end)


@pytest.fixture(scope="module")
def anny_face():
    from tasks.faceswap.robustswap.geometry import AnnyFace

    return AnnyFace(region="all")


def _labels(n: int, seed: int):
    from tasks.faceswap.dataset import ANNY_PHENOTYPES, SHAPE_NAMES

    g = torch.Generator().manual_seed(seed)
    k = len(ANNY_PHENOTYPES)
    shape = torch.cat([torch.rand(n, k, generator=g) * 0.8 + 0.1, torch.rand(n, len(SHAPE_NAMES) - k, generator=g) * 2 - 1], 1)
    return shape, torch.rand(n, 52, generator=g) * 0.5, (torch.rand(n, 3, generator=g) - 0.5) * 0.6


def test_anny_face_is_the_datasets_geometry(anny_face):
    from tasks.faceswap import heads

    shape, expr, pose = _labels(4, 0)
    want = heads.face_vertices(shape.double(), expr.double(), pose.double())
    torch.testing.assert_close(anny_face(shape, expr, pose).double(), want, atol=2e-6, rtol=0)


def test_explicit_3d_loss_is_zero_for_the_true_swap_and_grows_with_shape_error(anny_face):
    from tasks.faceswap.robustswap.geometry import explicit_3d_loss

    src_shape, _, _ = _labels(6, 1)
    _, tgt_expr, tgt_pose = _labels(6, 2)
    truth = {"shape": src_shape, "expression": tgt_expr, "pose": tgt_pose}
    assert explicit_3d_loss(anny_face, truth, src_shape, tgt_expr, tgt_pose).item() == 0.0
    direction = torch.randn(6, src_shape.shape[1], generator=torch.Generator().manual_seed(3)) * 0.2
    losses = [explicit_3d_loss(anny_face, {**truth, "shape": src_shape + t * direction}, src_shape, tgt_expr, tgt_pose).item()
              for t in (0.05, 0.1, 0.2, 0.4, 0.8)]
    assert all(b > a for a, b in zip(losses, losses[1:])), losses
    assert losses[0] > 1e-5  # a visible shape change is not lost in float noise (metres)
    # the target's pose is part of the geometry: the source's own pose is an error too
    _, _, src_pose = _labels(6, 4)
    assert explicit_3d_loss(anny_face, {**truth, "pose": src_pose}, src_shape, tgt_expr, tgt_pose).item() > losses[0]


class _LinearFace(nn.Module):
    """A stand-in 3D model for the switch tests (any differentiable (α, e, θ) → vertices does)."""

    def __init__(self, n_shape: int):
        super().__init__()
        self.proj = nn.Linear(n_shape + 52 + 3, 30)

    def forward(self, shape, expression, pose):
        return self.proj(torch.cat([shape, expression, pose], 1)).reshape(len(shape), 10, 3)


def _swap_setup(implicit_3d: bool):
    n_shape, res = 14, 16
    gen = _tiny_generator(seed=7, res=res)
    torch.manual_seed(11)
    sw = RobustSwapper(gen, n_shape, feature_res=8, channels=8, implicit_3d=implicit_3d)
    for p in sw.shape_mlp.parameters():  # a non-trivial MLP(α), not the near-zero initial one
        nn.init.normal_(p, std=0.5)
    enc = WPlusEncoder(res, gen.num_ws, gen.w_dim, channels=8)
    for p in enc.heads.parameters():
        nn.init.normal_(p, std=0.05)
    face3d = Face3DNet(n_shape, 52, size=res, channels=8)
    id_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * res * res, 16))
    frozen = {"encoder": enc.eval(), "face3d": face3d.eval(), "judge": face3d, "face_model": _LinearFace(n_shape),
              "identity": lambda x, masks: F.normalize(id_net(x * masks), dim=1)}
    g = torch.Generator().manual_seed(2)
    batch = {"source": torch.rand(3, 3, res, res, generator=g) * 2 - 1, "target": torch.rand(3, 3, res, res, generator=g) * 2 - 1,
             "source_mask": (torch.rand(3, 1, res, res, generator=g) > 0.3).float(),
             "target_mask": (torch.rand(3, 1, res, res, generator=g) > 0.3).float()}
    disc = Discriminator(resolution=res, channel_base=16, channel_max=16)
    return sw, frozen, batch, disc


def test_switching_off_explicit_3d_removes_only_its_term():
    sw, frozen, batch, disc = _swap_setup(True)
    lam = SwapLossWeights()
    y_on, on = swapper_terms(sw, frozen, batch, self_swap=False, explicit_3d=True, disc=disc, noise="const")
    y_off, off = swapper_terms(sw, frozen, batch, self_swap=False, explicit_3d=False, disc=disc, noise="const")
    assert set(on) - set(off) == {"explicit_3d"} and on["explicit_3d"].item() > 0
    torch.testing.assert_close(y_on, y_off)
    for k in off:
        torch.testing.assert_close(on[k], off[k])
    diff = total_loss(on, lam) - total_loss(off, lam)
    assert diff.item() == pytest.approx(lam.explicit_3d * on["explicit_3d"].item(), rel=1e-5)


def test_switching_off_implicit_3d_removes_only_mlp_of_alpha():
    sw_on, frozen, batch, disc = _swap_setup(True)
    sw_off, _, _, _ = _swap_setup(False)
    sw_off.load_state_dict(sw_on.state_dict())  # same weights; only the switch differs
    w_id = frozen["encoder"](batch["source"])
    alpha = frozen["face3d"](batch["source"])["shape"]
    offset = sw_on.shape_mlp(alpha)
    assert offset.abs().mean() > 0.1
    torch.testing.assert_close(sw_off.latents(w_id, alpha), w_id)
    torch.testing.assert_close(sw_on.latents(w_id, alpha) - offset[:, None], w_id)
    # the same loss terms are computed either way; the swap differs only through the latents ...
    _, on = swapper_terms(sw_on, frozen, batch, self_swap=False, explicit_3d=True, disc=disc, noise="const")
    _, off = swapper_terms(sw_off, frozen, batch, self_swap=False, explicit_3d=True, disc=disc, noise="const")
    assert set(on) == set(off)
    # ... so with MLP(α) = 0 the two switches give the same swap and the same losses
    nn.init.zeros_(sw_on.shape_mlp.net[-1].weight)
    nn.init.zeros_(sw_on.shape_mlp.net[-1].bias)
    y_on, on0 = swapper_terms(sw_on, frozen, batch, self_swap=False, explicit_3d=True, disc=disc, noise="const")
    y_off, _ = swapper_terms(sw_off, frozen, batch, self_swap=False, explicit_3d=True, disc=disc, noise="const")
    torch.testing.assert_close(y_on, y_off)


def test_self_swap_adds_mse_against_the_source():
    sw, frozen, batch, disc = _swap_setup(True)
    y, terms = swapper_terms(sw, frozen, batch, self_swap=True, explicit_3d=False, disc=None, noise="const")
    assert set(terms) == {"identity", "reconstruction", "mse"}
    assert terms["mse"].item() == pytest.approx((y - batch["source"]).square().mean().item(), rel=1e-6)


def test_leakage_coefficient_known_answers():
    g = np.random.default_rng(0)
    src, tgt = g.normal(size=(50, 4)), g.normal(size=(50, 4))
    assert leakage_coefficients(tgt, src, tgt)["leak"] == pytest.approx(0.0, abs=1e-12)
    full = leakage_coefficients(src, src, tgt)
    assert full["leak"] == pytest.approx(1.0) and full["closer_to_source"] == 1.0
    half = leakage_coefficients(0.5 * (src + tgt), src, tgt)
    assert half["leak"] == pytest.approx(0.5) and half["leak_lo"] <= 0.5 <= half["leak_hi"]
    # an error orthogonal to the source-target line is not leakage
    d = src - tgt
    ortho = np.stack([np.array([-v[1], v[0], 0, 0]) for v in d])
    assert leakage_coefficients(tgt + ortho, src, tgt)["leak"] == pytest.approx(0.0, abs=1e-12)


def test_registered_with_the_flow_and_ablations_fix_their_switch():
    from tasks.faceswap.methods import METHODS

    if "robustswap" not in METHODS:
        pytest.skip("robustswap not registered in tasks/faceswap/methods.py yet")
    assert METHODS["robustswap"].options_model().implicit_3d and METHODS["robustswap"].options_model().explicit_3d
    assert not METHODS["robustswap_no_implicit3d"].options_model().implicit_3d
    assert not METHODS["robustswap_no_explicit3d"].options_model().explicit_3d
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gan_steps"):
        METHODS["robustswap"].options_model({"gan_steps": 0})
    with pytest.raises(ValidationError, match="resolution"):
        METHODS["robustswap"].options_model({"resolution": 48})
    with pytest.raises(ValidationError, match="feature_res"):
        METHODS["robustswap"].options_model({"resolution": 32, "feature_res": 32})


def _synthetic_faces(n_ids: int = 8, frames: int = 4, res: int = 32, seed: int = 0):
    """A FaceSet with the dataset's fields and label ranges (random pixels: a contract test, not a quality one)."""
    from tasks.faceswap.dataset import ANNY_PHENOTYPES, SHAPE_NAMES, FaceSet

    r = np.random.default_rng(seed)
    n = n_ids * frames
    ids = np.repeat(np.arange(n_ids), frames)
    k = len(ANNY_PHENOTYPES)
    shape = np.concatenate([r.uniform(0.1, 0.9, (n_ids, k)), r.uniform(-1, 1, (n_ids, len(SHAPE_NAMES) - k))], 1)[ids]
    f = lambda *s: r.random(s).astype(np.float32)  # noqa: E731
    return FaceSet(images=(r.random((n, res, res, 3)) * 255).astype(np.uint8), masks=np.zeros((n, res, res), bool),
                   identity=ids, shape=shape.astype(np.float32), expression=f(n, 52) * 0.3, pose=(f(n, 3) - 0.5) * 0.5,
                   light_dir=f(n, 3), light_color=f(n, 3), skin=f(n, 3), iris=f(n, 3), hair_color=f(n, 3),
                   hair_style=np.zeros(n, np.int64), background=np.zeros(n, np.int64), landmarks=np.zeros((n, 4, 2), np.float32),
                   sequence=-np.ones(n, np.int64), frame=np.zeros(n, np.int64))


def _untrained_tools(path, faces):
    from tasks.faceswap.networks import ConvEncoder
    from tasks.faceswap.tools import ATTRIBUTES, ID_DIM, save_tools

    path.mkdir()
    sizes = {a: int(np.prod(getattr(faces, a).shape[1:])) for a in ATTRIBUTES}
    k = sum(sizes.values())
    save_tools(path, ConvEncoder(ID_DIM, 8, 32), ConvEncoder(k, 8, 32), resolution=32, width=8, mean=np.zeros(k, np.float32),
               std=np.ones(k, np.float32), sizes=sizes, threshold=0.5, extra={})
    return path


def test_method_trains_and_swaps_through_the_registry_contract_sharing_one_prior(tmp_path):
    from tasks.faceswap.methods import METHODS, MethodRun

    if "robustswap" not in METHODS:
        pytest.skip("robustswap not registered in tasks/faceswap/methods.py yet")
    faces = _synthetic_faces()
    tools = _untrained_tools(tmp_path / "tools", faces)
    tiny = dict(resolution=16, feature_res=8, w_dim=16, channel_base=16, channel_max=16, channels=8, face3d_steps=3,
                face3d_batch=4, gan_steps=4, gan_batch=4, fid_evals=2, fid_samples=16, encoder_steps=3, encoder_batch=4)
    outs = {}
    for name in ("robustswap", "robustswap_no_explicit3d"):
        method = METHODS[name].build(tiny)
        run = MethodRun(steps=3, batch=4, resolution=32, width=8, lr=1e-3, seed=0, device="cpu", tools_dir=tools,
                        engine_dir=tmp_path / ".checkpoints" / name)
        method.train(run, faces, tmp_path / "train" / name)
        outs[name] = tmp_path / "train" / name
        src, tgt = faces.batch(np.arange(0, 8)), faces.batch(np.arange(8, 16))
        y = method.swap(outs[name], src, tgt, "cpu")
        assert y.shape == (8, 3, 32, 32) and 0 <= y.min() and y.max() <= 1
        torch.testing.assert_close(method.swap(outs[name], src, tgt, "cpu"), y)  # deterministic
    # the prior (regressor, StyleGAN, W+ encoder) is built once and shared by the ablation
    assert len([p for p in (tmp_path / ".checkpoints").iterdir() if p.name.startswith("robustswap_prior-") and p.is_dir()
                and not p.name.endswith(".engine")]) == 1
    for f in ("generator.safetensors", "encoder.safetensors", "face3d.safetensors"):
        assert (outs["robustswap"] / f).read_bytes() == (outs["robustswap_no_explicit3d"] / f).read_bytes()
    from tasks.common.artifacts import read_json

    meta = read_json(outs["robustswap"] / "robustswap.json")
    assert [p["step"] for p in meta["prior"]["fid_curve"]] == [2, 4]
    assert np.isfinite(meta["prior"]["inversion_test"]["psnr_db"])
    assert "swapper/explicit_3d" in meta["swap_history"][-1]
    assert "swapper/explicit_3d" not in read_json(outs["robustswap_no_explicit3d"] / "robustswap.json")["swap_history"][-1]


def test_frechet_distance_known_answers():
    from tasks.faceswap.robustswap.fid import frechet_distance

    g = np.random.default_rng(0)
    a = g.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(μ, 4I): ‖μ‖² + Tr(I + 4I − 2·2I) = ‖μ‖² + 3
    b = 2 * g.normal(size=(4000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.08)


class _ReadsBack:
    """A stand-in attribute regressor whose reading of image i is a fixed label row (the flow's EvalTools shape)."""

    def __init__(self, rows: dict[str, np.ndarray]):
        from tasks.faceswap.tools import ATTRIBUTES

        self.rows = rows
        self.sizes = {a: rows[a].shape[1] for a in ATTRIBUTES}
        k = sum(self.sizes.values())
        self.mean, self.std = torch.zeros(k), torch.ones(k)

    def attributes(self, images):
        idx = images[:, 0, 0, 0].round().long()  # the image carries its row index
        return {a: torch.as_tensor(v)[idx] for a, v in self.rows.items()}


def test_source_leakage_reads_zero_for_target_attributes_and_one_for_source_attributes():
    from tasks.faceswap.robustswap.leakage import LEAK_GROUPS, per_pair_leakage, source_leakage
    from tasks.faceswap.tools import ATTRIBUTES

    g = np.random.default_rng(1)
    dims = {"expression": 52, "pose": 3, "light_dir": 3, "light_color": 3, "skin": 3, "hair_color": 3, "shape": 14}
    src = {a: g.normal(size=(20, dims[a])) for a in ATTRIBUTES}
    tgt = {a: g.normal(size=(20, dims[a])) for a in ATTRIBUTES}
    # a "swap" that keeps the target's pose/expression/skin but shows the source's lighting and hair
    swap = {a: (src[a] if a in ("light_dir", "light_color", "hair_color") else tgt[a]) for a in ATTRIBUTES}
    images = torch.arange(20, dtype=torch.float32)[:, None, None, None].expand(20, 3, 4, 4)
    res = source_leakage(_ReadsBack(swap), images, src, tgt)
    assert set(res) == set(LEAK_GROUPS)
    for grp in ("pose", "expression", "skin"):
        assert res[grp]["leak"] == pytest.approx(0.0, abs=1e-9) and res[grp]["closer_to_source"] == 0.0
    for grp in ("lighting", "hair"):
        assert res[grp]["leak"] == pytest.approx(1.0) and res[grp]["closer_to_source"] == 1.0
    cols = per_pair_leakage(_ReadsBack(swap), images, src, tgt)
    assert cols["leak_hair"].tolist() == [1.0] * 20 and cols["leak_pose"].tolist() == [0.0] * 20
