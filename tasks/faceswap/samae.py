"""SAMAE (Shape-Agnostic Masked AutoEncoder) face swapping, trained purely by self-reconstruction.

The paper's box, as we implement it (details the paper leaves out are ours and marked so):

1. M ← the face mask of frame x (rasterised from the mesh: :mod:`.blender_faces`).
2. *random mesh scaling* (switch ``mesh_scaling``): M ← M scaled about its centroid by
   s ~ U(1 − r, 1 + r). Ours: scaling the rasterised silhouette about the projected centroid
   stands in for re-rasterising a scaled mesh (equal under the weak perspective of a face
   0.5 m away); it stops the generator from reading face volume off the mask.
3. *perforation confusion* (switch ``perforation``): in the boundary band of M (dilation minus
   erosion, ``band`` px each way), each 2×2 cell is set to masked with probability ρ, else
   unmasked. Ours (the paper gives no details): the outline of the hole no longer tells the
   face's shape; the interior and the outside are untouched (a test checks this).
4. x̃ = x ⊙ (1 − M): the non-identity context (skin tone and illumination on the visible
   neck/ears, hair, background) stays visible; the face is gone.
5. z = E_id(x′), x′ another frame of the same identity (ours: a different frame, so z cannot
   carry x's expression, pose or lighting); E_id is the frozen identity encoder (ArcFace's part).
6. x̂ = G([x̃, M], z); loss = λ_rec·|x̂ − x|₁ + λ_id·(1 − cos(E_id(x̂), z)) + λ_adv·hinge-GAN(x̂).
   The ground truth is x itself: no seesaw between identity and attribute losses.

Swap (inference): M = the target's face mask dilated by ``dilate`` px (room for a source face
larger than the target's), x̂ = G([x_t ⊙ (1 − M), M], E_id(x_s)), composited into x_t with M.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from tasks.common.artifacts import write_json
from tasks.common.config import ConfigSection
from tasks.common.training import load_weights, seeded_generator, train as run_engine

from .dataset import FaceBatch, FaceSet
from .methods import MethodRun
from .networks import PatchDiscriminator, SwapGenerator
from .tools import ID_DIM, load_tools


class SAMAEOptions(ConfigSection):
    perforation: bool = True
    """Perforation confusion of the mask's boundary band."""
    perforation_rate: float = Field(0.5, ge=0, le=1)
    """ρ: probability that a 2×2 cell of the band is masked."""
    band: int = Field(3, ge=1, le=64)
    """Half-width of the boundary band, pixels at the model resolution."""
    mesh_scaling: bool = True
    """Random mesh (mask) scaling."""
    scale_range: float = Field(0.12, ge=0, lt=0.9)
    """r: the mask is scaled by s ~ U(1 − r, 1 + r)."""
    dilate: int = Field(2, ge=0, le=64)
    """Dilation of the target's mask at swap time, pixels."""
    w_rec: float = Field(1.0, ge=0)
    """λ_rec (L1 reconstruction)."""
    w_id: float = Field(0.5, ge=0)
    """λ_id (identity cosine loss on the frozen encoder)."""
    w_adv: float = Field(0.02, ge=0)
    """λ_adv (hinge GAN)."""


# ------------------------------------------------------------------------------ mask maths


def dilate(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Binary dilation of [N, 1, H, W] by a (2px+1)² square."""
    return F.max_pool2d(mask, 2 * px + 1, 1, px) if px > 0 else mask


def erode(mask: torch.Tensor, px: int) -> torch.Tensor:
    return 1 - F.max_pool2d(1 - mask, 2 * px + 1, 1, px) if px > 0 else mask


def boundary_band(mask: torch.Tensor, px: int) -> torch.Tensor:
    return dilate(mask, px) - erode(mask, px)


def perforate(mask: torch.Tensor, band: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """Perforation confusion: random 2×2 cells of the boundary band masked (prob ρ) or not."""
    n, _, h, w = mask.shape
    cells = (torch.rand(n, 1, (h + 1) // 2, (w + 1) // 2, generator=gen) < rate).float()
    noise = F.interpolate(cells, scale_factor=2, mode="nearest")[..., :h, :w].to(mask.device)
    b = boundary_band(mask, band)
    return mask * (1 - b) + noise * b


def scale_mask(mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Scale each mask [N, 1, H, W] about its centroid by ``scale`` [N] (nearest sampling)."""
    n, _, h, w = mask.shape
    ys = torch.linspace(-1, 1, h, device=mask.device)
    xs = torch.linspace(-1, 1, w, device=mask.device)
    area = mask.sum((1, 2, 3)).clamp(min=1)
    cy = (mask.sum(3).squeeze(1) * ys).sum(1) / area
    cx = (mask.sum(2).squeeze(1) * xs).sum(1) / area
    theta = torch.zeros(n, 2, 3, device=mask.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = cx - cx / scale
    theta[:, 1, 2] = cy - cy / scale
    grid = F.affine_grid(theta, list(mask.shape), align_corners=True)
    return (F.grid_sample(mask, grid, mode="nearest", align_corners=True) > 0.5).float()


def augment_mask(mask: torch.Tensor, opts: SAMAEOptions, gen: torch.Generator) -> torch.Tensor:
    if opts.mesh_scaling and opts.scale_range > 0:
        s = 1 + (torch.rand(len(mask), generator=gen) * 2 - 1) * opts.scale_range
        mask = scale_mask(mask, s.to(mask.device))
    if opts.perforation:
        mask = perforate(mask, opts.band, opts.perforation_rate, gen)
    return mask


# ------------------------------------------------------------------------------ data


class Frames:
    """Training frames resized once to the model resolution (uint8 / bool, picklable)."""

    def __init__(self, faces: FaceSet, resolution: int):
        b = faces.batch(np.arange(len(faces)), resolution)
        self.images = (b.images * 255).round().byte().numpy()
        self.masks = (b.masks > 0.5).numpy()
        self.identity = faces.identity.copy()
        self.by_id = {int(k): np.flatnonzero(faces.identity == k) for k in np.unique(faces.identity)}

    def other_frame(self, idx: np.ndarray, r: np.random.Generator) -> np.ndarray:
        """Another frame of the same identity for each index (itself if the identity has one)."""
        out = []
        for i in idx:
            rows = self.by_id[int(self.identity[i])]
            rows = rows[rows != i] if len(rows) > 1 else rows
            out.append(int(r.choice(rows)))
        return np.array(out)

    def tensors(self, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(self.images[idx]).float().div(255).to(device)
        m = torch.from_numpy(self.masks[idx]).float().to(device)
        return x, m


def hinge_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


class SwapRecipe:
    """What SAMAE and the target-oriented baseline share: frames, the same generator and
    discriminator, Adam (β = 0.5, 0.999), the flow's tools. Subclasses define ``batch`` and the losses."""

    def __init__(self, run: MethodRun, faces: FaceSet, opts):
        self.frames = Frames(faces, run.resolution)
        self.opts, self.run = opts, run
        self.steps, self.micro_batch = run.steps, run.batch
        self._tools = None

    @property
    def tools(self):
        if self._tools is None:
            self._tools = load_tools(self.run.tools_dir)
        return self._tools

    def build(self):
        torch.manual_seed(self.run.seed)
        return {"generator": SwapGenerator(ID_DIM, self.run.width, in_ch=4),
                "discriminator": PatchDiscriminator(self.run.width)}

    def optimizer(self, name, module):
        return torch.optim.Adam(module.parameters(), lr=self.run.lr, betas=(0.5, 0.999))


class SAMAERecipe(SwapRecipe):
    def batch(self, step, rank, device):
        g = seeded_generator(self.run.seed, step, rank)
        r = np.random.default_rng(int(torch.randint(2**31, (1,), generator=g)))
        idx = r.integers(len(self.frames.identity), size=self.micro_batch)
        x, m = self.frames.tensors(idx, device)
        xs, ms = self.frames.tensors(self.frames.other_frame(idx, r), device)
        m_aug = augment_mask(m, self.opts, g)
        self.tools.to(device)
        with torch.no_grad():
            z = self.tools.identity(xs, ms)
        return {"x": x, "m": m_aug, "face": m, "z": z}

    def loss(self, name, models, batch, cache, step):
        x, m, z = batch["x"], batch["m"], batch["z"]
        if name == "generator":
            out = models["generator"](torch.cat([x * (1 - m), m], 1), z)
            cache["fake"] = out.detach()
            rec = (out - x).abs().mean()
            ident = (1 - (self.tools.identity(out, batch["face"]) * z).sum(-1)).mean()
            adv = -models["discriminator"](out)[0].mean()
            o = self.opts
            loss = o.w_rec * rec + o.w_id * ident + o.w_adv * adv
            return loss, {"rec": float(rec), "id": float(ident), "adv": float(adv)}
        real, _ = models["discriminator"](x)
        fake, _ = models["discriminator"](cache["fake"])
        loss = hinge_d(real, fake)
        return loss, {"d": float(loss)}


def train_generator(recipe, run: MethodRun, out_dir: Path) -> dict:
    from safetensors.torch import save_file

    cfg = (run.training.model_copy() if run.training is not None else None)
    from tasks.common.training import TrainingConfig

    cfg = (cfg or TrainingConfig(grad_clip=0.0)).on(run.device)
    result = run_engine(recipe, cfg, run.engine_dir)
    w = load_weights(result.checkpoint, "generator")
    save_file(w, str(Path(out_dir) / "generator.safetensors"))
    info = {"steps": result.steps, "train_seconds": result.wall_seconds, "resumed_from": result.start_step,
            "history": result.history, "backend": result.backend}
    write_json(Path(out_dir) / "train.json", info)
    return info


def load_generator(out_dir: Path, width: int, in_ch: int = 4) -> SwapGenerator:
    from safetensors.torch import load_file

    g = SwapGenerator(ID_DIM, width, in_ch=in_ch)
    g.load_state_dict(load_file(str(Path(out_dir) / "generator.safetensors")))
    return g.eval().requires_grad_(False)


class GeneratorMethod:
    """A swap method that trains the shared generator with its own ``Recipe`` (SAMAE, SimSwap-like)."""

    Options: type[ConfigSection]
    Recipe: type[SwapRecipe]
    learned = True

    def __init__(self, name: str, options: ConfigSection):
        self.name, self.opts = name, options

    def train(self, run: MethodRun, faces: FaceSet, out_dir: Path) -> None:
        train_generator(self.Recipe(run, faces, self.opts), run, out_dir)
        write_json(Path(out_dir) / "method.json", {"name": self.name, "width": run.width, "tools_dir": str(run.tools_dir),
                                                   **self.opts.model_dump()})


class SAMAE(GeneratorMethod):
    Options = SAMAEOptions
    Recipe = SAMAERecipe

    @torch.no_grad()
    def swap(self, out_dir: Path, source: FaceBatch, target: FaceBatch, device: str) -> torch.Tensor:
        from tasks.common.artifacts import read_json

        meta = read_json(Path(out_dir) / "method.json")
        tools = load_tools(meta["tools_dir"], device)
        g = load_generator(out_dir, meta["width"]).to(device)
        m = dilate((target.masks > 0.5).float(), self.opts.dilate)
        xt = target.images
        out = g(torch.cat([xt * (1 - m), m], 1), tools.identity(source.images, source.masks))
        return (m * out + (1 - m) * xt).clamp(0, 1)

