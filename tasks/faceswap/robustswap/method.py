"""RobustSwap as a method of the ``faceswap`` flow's registry (``tasks/faceswap/methods.py``).

``train`` builds (or reuses) the shared prior — regressor R, StyleGAN G/D with its FID-like curve,
W+ encoder E (:mod:`.prior`) — then trains the swapper for the flow's common budget
(``run.steps`` steps of ``run.batch`` pairs) with the guidance switches of its options; ``swap``
reads the source's W+ and α off its image, carries the target through F-space, and returns the
swap at the caller's resolution. The ablations are the same class with ``implicit_3d=False``
(no MLP(α)) or ``explicit_3d=False`` (no 3D loss).

Budget note (ours): the prior plays the part of the paper's *pretrained* StyleGAN, inverter and
DECA — it is trained once here and not counted in ``run.steps``, which only the swapper uses,
like every other learned method's training.
"""
from __future__ import annotations

import fcntl
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file, save_file

from tasks.common.artifacts import cache_key, is_complete, read_json, write_json
from tasks.common.config import ConfigSection
from tasks.common.training import TrainingConfig, load_weights, train

from .data import to_model_space
from .prior import PRIOR_FILES, build_prior, load_prior
from .swapper import RobustSwapper, SwapLossWeights, SwapperRecipe


class RobustSwapOptions(ConfigSection):
    """RobustSwap's own knobs (``faceswap.method_options.robustswap.<field>``)."""

    implicit_3d: bool = True
    """Implicit 3D guidance: add MLP(α_source) to the identity latents."""
    explicit_3d: bool = True
    """Explicit 3D guidance: the vertex L1 loss against (source shape, target expression, target pose)."""
    resolution: int = Field(0, ge=0, le=1024)
    """StyleGAN side in pixels; 0 = 64 on CPU, 256 on a GPU. Outputs are resized to the caller's size."""
    feature_res: int = Field(16, ge=4, le=256)
    """Where the target's features replace G's (the paper: 32² of 1024²); scaled with ``resolution``/64."""
    w_dim: int = Field(128, ge=16, le=1024)
    """z and w width (512 in StyleGAN2)."""
    mapping_layers: int = Field(4, ge=1, le=8)
    """Mapping network depth (8 in StyleGAN2)."""
    channel_base: int = Field(32, ge=16, le=4096)
    """Feature channels at 32² (halving per doubling of resolution, capped by channel_max); CPU toy size."""
    channel_max: int = Field(64, ge=16, le=1024)
    channels: int = Field(32, ge=8, le=256)
    """Width of the regressor, the W+ encoder and the target encoder."""
    face3d_steps: int = Field(600, ge=1)
    face3d_batch: int = Field(32, ge=1)
    face3d_lr: float = Field(1e-3, gt=0)
    gan_steps: int = Field(800, ge=1)
    """StyleGAN steps (toy: minutes of CPU; the paper starts from FFHQ weights)."""
    gan_batch: int = Field(8, ge=2)
    gan_lr: float = Field(2e-3, gt=0)
    gan_r1_gamma: float = Field(1.0, ge=0)
    """R1 γ of the StyleGAN (StyleGAN2 uses small γ at low resolution)."""
    ema_beta: float = Field(0.99, ge=0, lt=1)
    fid_evals: int = Field(4, ge=1, le=50)
    """Points on the FID-like curve (the GAN trains in this many legs)."""
    fid_samples: int = Field(128, ge=16)
    encoder_steps: int = Field(400, ge=1)
    encoder_batch: int = Field(8, ge=1)
    encoder_lr: float = Field(1e-3, gt=0)
    swap_steps: int = Field(0, ge=0)
    """Swapper steps; 0 = the flow's common budget (run.steps)."""
    swap_lr: float = Field(5e-4, gt=0)
    """Adam lr of the swapper (1e-4 for 500k steps in the code; toy runs are ~10³ times shorter)."""
    lambda_id: float = Field(1.0, ge=0)
    lambda_rec: float = Field(1.0, ge=0)
    lambda_mse: float = Field(1.0, ge=0)
    lambda_3d: float = Field(100.0, ge=0)
    """λ of the explicit 3D loss (vertices in metres), the code's 100."""
    lambda_adv: float = Field(0.01, ge=0)
    r1_gamma: float = Field(10.0, ge=0)
    self_swap_every: int = Field(3, ge=0)
    """Every n-th swapper step is a self-swap (target := source, + MSE); 0 = never."""
    d_every: int = Field(4, ge=1)
    """Discriminator update interval during swapper training (15 in the code)."""
    holdout_identities: float = Field(0.08, ge=0, lt=0.5)
    """Share of training identities held out of the prior to report regressor/inversion errors on."""

    @field_validator("resolution", "feature_res")
    @classmethod
    def _pow2(cls, v: int, info: Any) -> int:
        if v and (v & (v - 1) or v < (16 if info.field_name == "resolution" else 4)):
            raise ValueError("must be a power of two (≥ 16 for resolution, ≥ 4 for feature_res), or 0 for resolution's default")
        return v

    @model_validator(mode="after")
    def _feature_below_resolution(self):
        if self.resolution and self.feature_res >= self.resolution:
            raise ValueError(f"feature_res ({self.feature_res}) must be below resolution ({self.resolution})")
        return self


def _prior_key(opts: RobustSwapOptions, run: Any, faces: Any) -> str:
    """Cache key of the prior: data content, prior options, resolution, seed and this package's code."""
    from tasks.common.codehash import code_fingerprint

    h = __import__("hashlib").sha256()
    for arr in (faces.images, faces.identity, faces.shape, faces.expression, faces.pose):
        h.update(np.ascontiguousarray(arr).tobytes())
    prior_opts = opts.model_dump(exclude={"implicit_3d", "explicit_3d", "swap_steps", "swap_lr", "lambda_id", "lambda_rec",
                                          "lambda_mse", "lambda_3d", "lambda_adv", "r1_gamma", "self_swap_every", "d_every"})
    return cache_key(step="robustswap_prior", config={"opts": prior_opts, "seed": run.seed, "device": run.device,
                                                      "data": h.hexdigest()}, code=code_fingerprint(build_prior))


def _resolution(opts: RobustSwapOptions, device: str) -> tuple[int, int]:
    res = opts.resolution or (256 if str(device).startswith("cuda") else 64)
    fres = max(4, opts.feature_res * res // 64) if opts.resolution == 0 else opts.feature_res
    return res, fres


def _labels(faces: Any, idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(getattr(faces, k)[idx]), dtype=torch.float32) for k in ("shape", "expression", "pose")}


class _Identity:
    """The flow's identity encoder E_id as a callable on images in [0, 1] and their face masks
    (both resized by the tools)."""

    def __init__(self, tools: Any):
        self.tools = tools

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.tools.identity(images, masks)


class RobustSwap:
    """The registry's RobustSwap (see the module docstring)."""

    Options = RobustSwapOptions
    learned = True

    def __init__(self, name: str, options: RobustSwapOptions):
        self.name, self.options = name, options

    # ------------------------------------------------------------------------------ training
    def train(self, run: Any, faces: Any, out_dir: Path) -> None:
        from tasks.faceswap.tools import load_tools

        from .geometry import AnnyFace

        opts, out_dir = self.options, Path(out_dir)
        res, fres = _resolution(opts, run.device)
        # fp32 on every backend: the frozen networks (E, R, E_id) feed the trained ones and stay fp32
        training = (run.training or TrainingConfig()).model_copy(update={"precision": "fp32"}).on(run.device)
        torch.manual_seed(run.seed)

        ids = np.unique(faces.identity)
        rng = np.random.default_rng(run.seed)
        held = rng.choice(ids, size=max(1, int(round(len(ids) * opts.holdout_identities))), replace=False) \
            if opts.holdout_identities > 0 and len(ids) > 4 else np.array([], ids.dtype)
        is_held = np.isin(faces.identity, held)
        tr, te = np.flatnonzero(~is_held), np.flatnonzero(is_held)
        if len(te) == 0:
            te = tr[: max(1, len(tr) // 10)]
        images = to_model_space(faces.images, res)

        # the prior, shared by RobustSwap and its ablations: built once per key, under a lock
        key = _prior_key(opts, run, faces)
        prior_dir = Path(run.engine_dir).parent / f"robustswap_prior-{key[:12]}"
        prior_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(prior_dir.parent / f".robustswap_prior-{key[:12]}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not is_complete(prior_dir, key):
                shutil.rmtree(prior_dir, ignore_errors=True)
                tmp = prior_dir.with_name(prior_dir.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                build_prior(tmp, train_images=images[tr], train_labels=_labels(faces, tr), test_images=images[te],
                            test_labels=_labels(faces, te), opts=opts, resolution=res, seed=run.seed,
                            training=training, engine_dir=prior_dir.with_name(prior_dir.name + ".engine"))
                from tasks.common.artifacts import mark_complete

                mark_complete(tmp, key)
                tmp.rename(prior_dir)
        models, prior_meta = load_prior(prior_dir)

        tools = load_tools(run.tools_dir)
        frozen = {"encoder": models["encoder"], "face3d": models["face3d"], "judge": models["face3d"],
                  "face_model": AnnyFace(), "identity": _Identity(tools)}
        lam = SwapLossWeights(identity=opts.lambda_id, reconstruction=opts.lambda_rec, mse=opts.lambda_mse,
                              explicit_3d=opts.lambda_3d, adversarial=opts.lambda_adv, r1_gamma=opts.r1_gamma)
        steps = opts.swap_steps or run.steps
        masks = torch.from_numpy(np.ascontiguousarray(faces.masks[tr])).float()[:, None]
        recipe = SwapperRecipe(images[tr], torch.as_tensor(faces.identity[tr]), models["generator"], models["discriminator"],
                               frozen, masks=masks, n_shape=prior_meta["n_shape"], steps=steps, batch=run.batch, lr=opts.swap_lr,
                               seed=run.seed, feature_res=fres, channels=opts.channels, implicit_3d=opts.implicit_3d,
                               explicit_3d=opts.explicit_3d, self_swap_every=opts.self_swap_every, d_every=opts.d_every,
                               weights=lam)
        result = train(recipe, training, Path(run.engine_dir) / "swapper")
        swapper = recipe.build()["swapper"]
        swapper.load_state_dict(load_weights(result.checkpoint, "swapper"))

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in swapper.state_dict().items()}, str(out_dir / "swapper.safetensors"))
        for f in PRIOR_FILES:  # self-contained: swap() needs only out_dir
            shutil.copyfile(prior_dir / f, out_dir / f)
        write_json(out_dir / "robustswap.json", {
            "options": opts.model_dump(mode="json"), "resolution": res, "feature_res": fres, "swap_steps": steps,
            "swap_wall_seconds": result.wall_seconds, "swap_history": result.history, "prior_key": key,
            "prior": {k: prior_meta[k] for k in ("fid_curve", "fid_real_floor", "inversion_test", "regressor_test")
                      if k in prior_meta}})

    # ------------------------------------------------------------------------------ swapping
    def _load(self, out_dir: Path, device: str) -> tuple[RobustSwapper, dict[str, Any]]:
        cache = getattr(self, "_cache", None)
        if cache is not None and cache[0] == (str(out_dir), device):
            return cache[1], cache[2]
        meta = read_json(Path(out_dir) / "robustswap.json")
        models, prior_meta = load_prior(out_dir)
        sw = RobustSwapper(models["generator"], prior_meta["n_shape"], feature_res=meta["feature_res"], channels=self.options.channels,
                           implicit_3d=self.options.implicit_3d)
        sw.load_state_dict(load_file(str(Path(out_dir) / "swapper.safetensors")))
        sw.eval().requires_grad_(False).to(device)
        parts = {"encoder": models["encoder"].to(device), "face3d": models["face3d"].to(device), "resolution": meta["resolution"]}
        self._cache = ((str(out_dir), device), sw, parts)
        return sw, parts

    @torch.no_grad()
    def swap(self, out_dir: Path, source: Any, target: Any, device: str) -> torch.Tensor:
        """[N, 3, R, R] in [0, 1]: the source's identity on the target frame (R = source's size)."""
        sw, parts = self._load(Path(out_dir), device)
        res = parts["resolution"]
        size = source.images.shape[-1]

        def prep(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device).float()
            if x.shape[-1] != res:
                x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
            return x * 2 - 1

        src, tgt = prep(source.images), prep(target.images)
        y = sw(parts["encoder"](src), parts["face3d"](src)["shape"], tgt, noise="const")
        if res != size:
            y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)
        return ((y.clamp(-1, 1) + 1) / 2).cpu()
