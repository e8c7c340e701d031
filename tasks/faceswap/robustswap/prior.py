"""What RobustSwap takes as given, trained here: the face regressor, the StyleGAN and its W+ encoder.

The paper starts from an FFHQ StyleGAN2, a pretrained inverter and DECA. Ours are trained on the
training renders, in this order (each a recipe on the shared engine, so each resumes after a kill):

1. :class:`.face3d.Face3DRecipe` — the regressor R (α, e, θ) that also gives the FID-like features;
2. :class:`StyleGANRecipe` — G and D with the non-saturating loss and lazy R1, plus an exponential
   moving average of G's weights (StyleGAN's G_ema, the generator every later stage uses), tracked
   every ``gan_steps / fid_evals`` steps by the Fréchet distance in R's feature space between
   ``fid_samples`` G_ema samples and as many real renders (:func:`train_stylegan`);
3. :class:`.inversion.EncoderRecipe` — the W+ encoder against frozen G_ema; its reconstruction error
   on held-out renders (PSNR, MSE, L1) is reported.

The three are the same for RobustSwap and its ablations, so they are built once per (data,
options, seed) and shared (:func:`build_prior`).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tasks.common.artifacts import read_json, write_json
from tasks.common.training import TrainingConfig, latest_checkpoint, load_weights, seeded_generator, train

from .face3d import Face3DNet, Face3DRecipe, predict
from .fid import frechet_distance
from .inversion import EncoderRecipe, WPlusEncoder, invert
from .stylegan import Discriminator, Generator, d_logistic_loss, g_nonsaturating_loss, r1_penalty


class StyleGANRecipe:
    """StyleGAN2 training at toy scale: G (with w̄ tracking), D (+ lazy R1), and G_ema."""

    def __init__(self, images: torch.Tensor, *, arch: dict[str, Any], d_arch: dict[str, Any], steps: int, batch: int,
                 lr: float, r1_gamma: float, r1_every: int, ema_beta: float, seed: int):
        self.images, self.arch, self.d_arch = images, arch, d_arch
        self.steps, self.micro_batch, self.lr = steps, batch, lr
        self.r1_gamma, self.r1_every, self.ema_beta, self.seed = r1_gamma, r1_every, ema_beta, seed

    def build(self) -> dict[str, nn.Module]:
        torch.manual_seed(self.seed)
        g = Generator(**self.arch)
        d = Discriminator(**self.d_arch)
        ema = copy.deepcopy(g).requires_grad_(False)
        return {"generator": g, "discriminator": d, "generator_ema": ema}

    def grad_clip(self, name: str, step: int) -> float:
        return 0.0  # StyleGAN2 trains unclipped; Adam with β1 = 0 and R1 keep it stable

    def optimizer(self, name: str, module: nn.Module) -> torch.optim.Optimizer:
        if name == "generator_ema":  # never stepped: updated as an average in loss()
            return torch.optim.SGD(module.parameters(), lr=0.0)
        # StyleGAN2's Adam (β1 = 0), lr corrected for lazy R1 on D
        lr = self.lr * (self.r1_every / (self.r1_every + 1) if name == "discriminator" else 1.0)
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)

    def batch(self, step: int, rank: int, device: torch.device) -> dict[str, torch.Tensor]:
        g = seeded_generator(self.seed, step, rank)
        idx = torch.randint(0, len(self.images), (self.micro_batch,), generator=g)
        z = torch.randn(self.micro_batch, self.arch["z_dim"], generator=g)
        return {"real": self.images[idx].to(device), "z": z.to(device)}

    def loss(self, name: str, models: dict[str, Any], batch: dict[str, torch.Tensor], cache: dict, step: int):
        if name == "generator":
            fake = models["generator"](batch["z"], update_avg=True)  # through forward: DeepSpeed's engine wraps it
            loss = g_nonsaturating_loss(models["discriminator"](fake))
            cache["fake"] = fake.detach()
            return loss, {"g": float(loss.detach())}
        if name == "discriminator":
            d = models["discriminator"]
            loss = d_logistic_loss(d(batch["real"]), d(cache["fake"]))
            logs = {"d": float(loss.detach())}
            if step % self.r1_every == 0 and self.r1_gamma > 0:
                r1 = r1_penalty(d, batch["real"])
                loss = loss + self.r1_gamma / 2 * r1 * self.r1_every
                logs["r1"] = float(r1.detach())
            return loss, logs
        # generator_ema: w_ema ← β w_ema + (1 − β) w (buffers, i.e. w̄, copied)
        with torch.no_grad():
            gen, ema = models["generator"], models["generator_ema"]
            for pe, p in zip(ema.parameters(), gen.parameters()):
                pe.lerp_(p, 1 - self.ema_beta)
            for be, b in zip(ema.buffers(), gen.buffers()):
                be.copy_(b)
        return None, {}


@torch.no_grad()
def sample_images(gen: Generator, n: int, seed: int, batch: int = 64) -> torch.Tensor:
    gen.eval()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, gen.z_dim, generator=g)
    dev = next(gen.parameters()).device
    return torch.cat([gen(z[i : i + batch].to(dev), noise="const").cpu() for i in range(0, n, batch)])


def train_stylegan(recipe: StyleGANRecipe, training: TrainingConfig, ckpt_dir: Path, judge: Face3DNet, real: torch.Tensor,
                   *, evals: int, samples: int, seed: int,
                   progress: Callable[[int, int, dict], None] | None = None) -> tuple[Generator, Discriminator, list[dict]]:
    """Train to ``recipe.steps`` in ``evals`` legs (each resumes the engine's checkpoint) and score
    G_ema after each leg: FID-like = Fréchet distance of R's features, samples vs real renders."""
    total = recipe.steps
    real_feat = predict(judge, real[:samples])["features"].numpy()
    curve = []
    for k in range(1, evals + 1):
        recipe.steps = max(1, round(total * k / evals))
        train(recipe, training, ckpt_dir, progress=progress)
        ema = Generator(**recipe.arch)
        ema.load_state_dict(load_weights(latest_checkpoint(ckpt_dir), "generator_ema"))
        fake_feat = predict(judge, sample_images(ema, samples, seed + 17))["features"].numpy()
        curve.append({"step": recipe.steps, "fid_like": frechet_distance(real_feat, fake_feat)})
    recipe.steps = total
    disc = Discriminator(**recipe.d_arch)
    disc.load_state_dict(load_weights(latest_checkpoint(ckpt_dir), "discriminator"))
    return ema, disc, curve


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [-1, 1] images (peak-to-peak 2)."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def reconstruction_report(encoder: WPlusEncoder, gen: Generator, images: torch.Tensor) -> dict[str, float]:
    """The W+ encoder's reconstruction error on ``images`` [-1, 1]: mean PSNR (dB) ± 95 % CI, MSE, L1."""
    gen.eval()
    ws = invert(encoder, images)
    rec = torch.cat([gen.synthesis(ws[i : i + 64], noise="const") for i in range(0, len(ws), 64)])
    p = _psnr(rec, images)
    half = 1.96 * float(p.std()) / math.sqrt(len(p)) if len(p) > 1 else float("nan")
    mean_face = gen.synthesis(gen.mean_latent().expand(len(images), -1, -1), noise="const")
    return {"psnr_db": float(p.mean()), "psnr_ci95": half, "mse": float((rec - images).square().mean()),
            "l1": float((rec - images).abs().mean()), "n": len(images),
            "mean_face_psnr_db": float(_psnr(mean_face, images).mean())}


PRIOR_FILES = ("face3d.safetensors", "generator.safetensors", "discriminator.safetensors", "encoder.safetensors", "prior.json")


def build_prior(out: Path, *, train_images: torch.Tensor, train_labels: dict[str, torch.Tensor], test_images: torch.Tensor,
                test_labels: dict[str, torch.Tensor], opts: Any, resolution: int, seed: int, training: TrainingConfig, engine_dir: Path,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train R, G/D (+ FID curve) and E into ``out`` (``PRIOR_FILES``); returns the report dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    r3 = Face3DRecipe(train_images, train_labels["shape"], train_labels["expression"], train_labels["pose"],
                      steps=opts.face3d_steps, batch=opts.face3d_batch, lr=opts.face3d_lr, channels=opts.channels,
                      size=resolution, seed=seed)
    res3 = train(r3, training, engine_dir / "face3d")
    face3d = r3.build()["face3d"]
    face3d.load_state_dict(load_weights(res3.checkpoint, "face3d"))
    face3d.eval().requires_grad_(False)
    pred = predict(face3d, test_images)
    log(f"robustswap prior: regressor trained ({res3.wall_seconds:.0f} s)")

    arch = dict(resolution=resolution, z_dim=opts.w_dim, w_dim=opts.w_dim, mapping_layers=opts.mapping_layers,
                channel_base=opts.channel_base, channel_max=opts.channel_max)
    d_arch = dict(resolution=resolution, channel_base=opts.channel_base, channel_max=opts.channel_max)
    rg = StyleGANRecipe(train_images, arch=arch, d_arch=d_arch, steps=opts.gan_steps, batch=opts.gan_batch, lr=opts.gan_lr,
                        r1_gamma=opts.gan_r1_gamma, r1_every=4, ema_beta=opts.ema_beta, seed=seed)
    gen, disc, curve = train_stylegan(rg, training, engine_dir / "stylegan", face3d, train_images,
                                      evals=opts.fid_evals, samples=opts.fid_samples, seed=seed)
    gen.eval().requires_grad_(False)
    log(f"robustswap prior: StyleGAN trained, FID-like {curve[-1]['fid_like']:.2f}")

    re = EncoderRecipe(train_images, gen, face3d, steps=opts.encoder_steps, batch=opts.encoder_batch, lr=opts.encoder_lr,
                       channels=opts.channels, seed=seed)
    rese = train(re, training, engine_dir / "encoder")
    enc = re.build()["encoder"]
    enc.load_state_dict(load_weights(rese.checkpoint, "encoder"))
    rec = reconstruction_report(enc, gen, test_images)
    log(f"robustswap prior: W+ encoder trained, test PSNR {rec['psnr_db']:.2f} dB")

    # the FID-like score's own floor at the same sample size: two disjoint sets of real renders
    n = opts.fid_samples
    floor = frechet_distance(predict(face3d, train_images[:n])["features"].numpy(),
                             predict(face3d, train_images[n : 2 * n])["features"].numpy()) if len(train_images) >= 2 * n else None
    report = {"arch": arch, "d_arch": d_arch, "n_shape": int(train_labels["shape"].shape[1]),
              "fid_curve": curve, "fid_real_floor": floor, "inversion_test": rec,
              "regressor_history": res3.history[-1:] if res3.history else [],
              "encoder_history": rese.history[-1:] if rese.history else []}
    report["regressor_test"] = {
        "shape_mae": float((pred["shape"] - test_labels["shape"]).abs().mean()),
        "shape_mae_mean_predictor": float((train_labels["shape"].mean(0) - test_labels["shape"]).abs().mean()),
        "expression_mae": float((pred["expression"] - test_labels["expression"]).abs().mean()),
        "expression_mae_mean_predictor": float((train_labels["expression"].mean(0) - test_labels["expression"]).abs().mean()),
        "pose_mae_deg": float((pred["pose"] - test_labels["pose"]).abs().mean()) * 180 / math.pi,
        "pose_mae_deg_mean_predictor": float((train_labels["pose"].mean(0) - test_labels["pose"]).abs().mean()) * 180 / math.pi}
    for name, module in (("face3d", face3d), ("generator", gen), ("discriminator", disc), ("encoder", enc)):
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(out / f"{name}.safetensors"))
    write_json(out / "prior.json", {**report, "face3d": {"n_shape": face3d.n_shape, "n_expr": face3d.n_expr,
                                                         "size": face3d.size, "channels": opts.channels}})
    return report


def load_prior(path: Path) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """(models {face3d, generator, discriminator, encoder}, prior.json) from a prior folder, frozen, on CPU."""
    path = Path(path)
    meta = read_json(path / "prior.json")
    f3 = meta["face3d"]
    face3d = Face3DNet(f3["n_shape"], f3["n_expr"], size=f3["size"], channels=f3["channels"])
    gen = Generator(**meta["arch"])
    disc = Discriminator(**meta["d_arch"])
    enc = WPlusEncoder(gen.resolution, gen.num_ws, gen.w_dim, channels=f3["channels"])
    models = {"face3d": face3d, "generator": gen, "discriminator": disc, "encoder": enc}
    for name, m in models.items():
        m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
        m.eval().requires_grad_(False)
    return models, meta
