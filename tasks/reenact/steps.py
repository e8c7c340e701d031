"""The ``reenact`` flow's Prefect steps: bridge → (EDTN ‖ generator ‖ regressor) → report.

Each step owns ``data/reenact/<step>/``. ``bridge`` and ``report`` are cached whole on (inputs,
config, code). The three training steps are resumable: their folder remembers the key it trains
for, the engine checkpoints into ``<step>/checkpoints/`` as it goes, a crashed run picks up from
the newest checkpoint, and only a changed key (new data, config or code) starts over. The final
weights are ``<step>/<model>.safetensors`` beside ``train.json`` (losses, wall time, backend).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.artifacts import (atomic_path, cache_key, cached_step, data_root, is_complete, mark_complete, read_json,
                                    step_dir, write_json)
from tasks.common.progress import Progress

from .config import ReenactConfig

FLOW = "reenact"
STEP_OPTS: dict[str, Any] = dict(cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, persist_result=False)
CODE = ["tasks/common/training.py", "tasks/reenact/config.py", "tasks/reenact/data.py", "tasks/reenact/bridge.py"]
KEY_FILE = ".train_key.json"


def dataset_root(cfg: ReenactConfig) -> Path:
    return Path(cfg.dataset) if cfg.dataset else data_root() / "animeceleb"


def check_inputs(cfg: ReenactConfig):
    """Fail before any work when the animeceleb outputs are missing or do not fit (names the field)."""
    from .data import DatasetPaths, check_dataset

    return check_dataset(DatasetPaths(dataset_root(cfg)))


def _threads(cfg: ReenactConfig) -> int:
    n = cfg.threads
    if not n:
        try:
            import ray

            n = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        except Exception:  # not inside a Ray task
            n = 1
    torch.set_num_threads(max(1, n))
    return max(1, n)


def _inputs(cfg: ReenactConfig) -> list[Path]:
    from .data import DatasetPaths

    p = DatasetPaths(dataset_root(cfg))
    return [p.manifest, p.morph_models]


def _shards_key(cfg: ReenactConfig) -> Path:
    from .data import DatasetPaths

    return DatasetPaths(dataset_root(cfg)).shards


# ------------------------------------------------------------------------------ helpers


def _claim(out: Path, key: str) -> None:
    """Keep checkpoints made for this key; clear a folder trained for another key."""
    marker = out / KEY_FILE
    if out.exists() and (not marker.is_file() or read_json(marker).get("key") != key):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json(marker, {"key": key})


def _train(name: str, out: Path, key: str, recipe, cfg: ReenactConfig, models: list[str]) -> Path:
    from tasks.common.training import load_weights, train
    from safetensors.torch import save_file

    if is_complete(out, key):
        return out
    _claim(out, key)
    bar = Progress(f"train {name}", recipe.steps)
    res = train(recipe, cfg.training, out / "checkpoints", progress=lambda s, total, logs: bar.update(max(s - bar.n, 0), **{
        k: v for k, v in list(logs.items())[:3]}))
    bar.close()
    for m in models:
        with atomic_path(out / f"{m}.safetensors") as tmp:
            save_file(load_weights(res.checkpoint, m), str(tmp))
    write_json(out / "train.json", {**res.to_json(), "config": cfg.model_dump(mode="json")})
    mark_complete(out, key, steps=recipe.steps)
    return out


def _load(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _data(cfg: ReenactConfig):
    from .data import DatasetPaths, heldout_poses

    paths = DatasetPaths(dataset_root(cfg))
    manifest = check_inputs(cfg)
    return paths, manifest, heldout_poses(manifest, cfg.heldout_expression_fraction, cfg.seed)


def _human_heads(paths, manifest, split: str):
    from tasks.animeceleb.morph_model import MorphModel

    ids = sorted(manifest[(manifest.domain == "human") & (manifest.split == split)].identity.unique())
    return [MorphModel.load(paths.morph_models / "human" / f"{i}.npz") for i in ids]


def _geometry(paths, manifest, bridge_dir: Path, split: str):
    from safetensors.torch import load_file

    from tasks.animeceleb.morph_model import MorphModel

    from .bridge import human_landmarks
    from .edtn import HumanGeometry

    B = load_file(str(Path(bridge_dir) / "bridge.safetensors"))["B"].numpy()
    lm = human_landmarks(MorphModel.load(paths.morph_models / "human.npz"))
    return HumanGeometry(_human_heads(paths, manifest, split), lm, B)


# ------------------------------------------------------------------------------ steps


@task(name="reenact.bridge", **STEP_OPTS)
def bridge(cfg: ReenactConfig) -> Path:
    """Fit B (anime morphs → human blendshapes) on the canonical heads' landmarks."""
    from safetensors.torch import save_file

    from tasks.animeceleb.morph_model import MorphModel

    from .bridge import bridge_from_models

    paths, _, _ = _data(cfg)
    out = step_dir(FLOW, "bridge")
    key = cache_key(step="bridge", config=cfg.bridge, inputs=[paths.morph_models / "anime.npz", paths.morph_models / "human.npz"],
                    code=CODE)
    with cached_step(out, key) as tmp:
        if tmp is not None:
            anime, human = MorphModel.load(paths.morph_models / "anime.npz"), MorphModel.load(paths.morph_models / "human.npz")
            B, info = bridge_from_models(anime, human, cfg.bridge.ridge)
            save_file({"B": torch.as_tensor(B)}, str(tmp / "bridge.safetensors"),
                      metadata={"rows": ",".join(anime.names), "cols": ",".join(human.names)})
            write_json(tmp / "bridge.json", info)
    return out


@task(name="reenact.edtn", **STEP_OPTS)
def edtn(cfg: ReenactConfig, bridge_dir: Path) -> Path:
    """Train EDTN on the training human identities' heads through B."""
    from .data import human_expressions
    from .edtn import EDTNRecipe

    _threads(cfg)
    paths, manifest, _ = _data(cfg)
    out = step_dir(FLOW, "edtn")
    key = cache_key(step="edtn", config={"edtn": cfg.edtn, "training": cfg.training, "seed": cfg.seed},
                    inputs=[*_inputs(cfg), bridge_dir], code=CODE + ["tasks/reenact/edtn.py"])
    if is_complete(out, key):
        return out
    e = cfg.edtn
    recipe = EDTNRecipe(_geometry(paths, manifest, bridge_dir, "train"), human_expressions(manifest, "train"),
                        steps=e.steps, batch=e.batch, lr=e.lr, max_active=e.max_active, hidden=e.hidden, seed=cfg.seed,
                        manifest_fraction=e.manifest_fraction)
    return _train("edtn", out, key, recipe, cfg, ["edtn"])


def _train_frames(cfg: ReenactConfig, paths, manifest, heldout: set[str]):
    from .data import AnimeFrames

    g = cfg.generator
    rows = manifest[(manifest.split == "train") & ~manifest.pose_id.isin(heldout)]
    return AnimeFrames.load(paths, rows, g.styles, g.image_size)


@task(name="reenact.generator", **STEP_OPTS)
def generator(cfg: ReenactConfig) -> Path:
    """Train the anime head generator (+ patch discriminator) on self-reenactment pairs."""
    from .data import PairSampler
    from .generator import GeneratorRecipe

    _threads(cfg)
    paths, manifest, heldout = _data(cfg)
    out = step_dir(FLOW, "generator")
    key = cache_key(step="generator", config={"g": cfg.generator, "training": cfg.training, "seed": cfg.seed,
                                              "heldout": cfg.heldout_expression_fraction},
                    inputs=[*_inputs(cfg), _shards_key(cfg)], code=CODE + ["tasks/reenact/generator.py"])
    if is_complete(out, key):
        return out
    g = cfg.generator
    recipe = GeneratorRecipe(PairSampler(_train_frames(cfg, paths, manifest, heldout)), steps=g.steps, batch=g.batch,
                             lr=g.lr, channels=g.channels, descriptor=g.descriptor, depth=g.depth, w_warp=g.w_warp,
                             w_final=g.w_final, w_adv=g.w_adv, edit_start=int(g.edit_start * g.steps),
                             adv_start=int(g.adv_start * g.steps), seed=cfg.seed)
    return _train("generator", out, key, recipe, cfg, ["generator"])


@task(name="reenact.regressor", **STEP_OPTS)
def regressor(cfg: ReenactConfig) -> Path:
    """Train the morph regressor (the expression-fidelity judge) on real training renders."""
    from .regressor import RegressorRecipe

    _threads(cfg)
    paths, manifest, heldout = _data(cfg)
    out = step_dir(FLOW, "regressor")
    key = cache_key(step="regressor", config={"r": cfg.regressor, "training": cfg.training, "seed": cfg.seed,
                                              "size": cfg.generator.image_size, "styles": cfg.generator.styles,
                                              "heldout": cfg.heldout_expression_fraction},
                    inputs=[*_inputs(cfg), _shards_key(cfg)], code=CODE + ["tasks/reenact/regressor.py"])
    if is_complete(out, key):
        return out
    r = cfg.regressor
    recipe = RegressorRecipe(_train_frames(cfg, paths, manifest, heldout), steps=r.steps, batch=r.batch, lr=r.lr,
                             channels=r.channels, seed=cfg.seed)
    return _train("regressor", out, key, recipe, cfg, ["regressor"])


@task(name="reenact.report", **STEP_OPTS)
def report(cfg: ReenactConfig, bridge_dir: Path, edtn_dir: Path, generator_dir: Path, regressor_dir: Path) -> Path:
    """Metrics (a)(b)(c) on held-out identities and expressions; strips, the cross-domain MP4, tables."""
    from safetensors.torch import load_file

    from .data import AnimeFrames, load_images
    from .edtn import EDTN, sample_human_expressions
    from .generator import AnimeGenerator
    from .metrics import cross_domain, edtn_rows, generator_rows
    from .regressor import MorphRegressor
    from .report import strip, tables, video

    _threads(cfg)
    paths, manifest, heldout = _data(cfg)
    out = step_dir(FLOW, "report")
    key = cache_key(step="report", config=cfg, inputs=[*_inputs(cfg), bridge_dir, edtn_dir, generator_dir, regressor_dir],
                    code=CODE + ["tasks/reenact/metrics.py", "tasks/reenact/report.py"])
    with cached_step(out, key) as tmp:
        if tmp is None:
            return out
        t0 = time.time()
        g = cfg.generator
        B = load_file(str(Path(bridge_dir) / "bridge.safetensors"))["B"]
        net = _load(EDTN(B.shape[1], B.shape[0], cfg.edtn.hidden), Path(edtn_dir) / "edtn.safetensors")
        gen = _load(AnimeGenerator(g.channels, g.descriptor, g.depth), Path(generator_dir) / "generator.safetensors")
        reg = _load(MorphRegressor(B.shape[0], cfg.regressor.channels, g.image_size), Path(regressor_dir) / "regressor.safetensors")

        # (a) held-out human identities' heads × held-out expressions
        test_geom = _geometry(paths, manifest, bridge_dir, "test")
        rendered = manifest[(manifest.domain == "human") & (manifest.split == "test")]
        sets = {"test_identities_rendered": torch.as_tensor(np.stack(rendered.weights.to_numpy()).astype(np.float32)),
                "fresh_random": sample_human_expressions(cfg.edtn.eval_expressions, B.shape[1], cfg.edtn.max_active,
                                                         torch.Generator().manual_seed(cfg.seed + 7_777))}
        ed = edtn_rows(test_geom, sets, net, B, cfg.edtn.mouth_boost)

        # (b) + (c): held-out identities, and training identities' held-out expressions
        anime = manifest[manifest.domain == "anime"]
        test_frames = AnimeFrames.load(paths, anime[anime.split == "test"], g.styles, g.image_size)
        ho = anime[(anime.split == "train") & ((anime.kind == "basis") | anime.pose_id.isin(heldout))]
        gen_rows, pics = generator_rows("heldout_identities", test_frames, gen, reg, cfg.eval_pairs, cfg.seed)
        if len(heldout):
            more, _ = generator_rows("heldout_expressions", AnimeFrames.load(paths, ho, g.styles, g.image_size), gen, reg,
                                     cfg.eval_pairs, cfg.seed)
            gen_rows += more
        strip({"source": pics["source"], "true": pics["target"], "generated": pics["generated"]},
              tmp / "self_reenactment.png", size=max(g.image_size, 96))

        # cross-domain: the test human identities' driving sequences → anime test identity
        hs = manifest[(manifest.domain == "human") & (manifest.split == "test") & (manifest.kind == "sequence")]
        hs = hs.sort_values(["identity", "sequence", "t"])
        if hs.empty:
            hs = rendered.head(8)
        human_imgs = load_images(paths.shards, hs, g.image_size).float() / 255
        src_row = test_frames.rows[test_frames.rows.kind == "basis"].index
        source = test_frames.float_images([int(src_row[0]) if len(src_row) else 0])[0]
        cd, frames = cross_domain(hs, human_imgs, source, gen, net, B, reg, cfg.edtn.mouth_boost)
        cd["source_identity"] = str(test_frames.rows.identity.iloc[int(src_row[0]) if len(src_row) else 0])
        strip({"human": frames["human"][:12], "EDTN": frames["edtn"][:12], "linear B^-1": frames["linear"][:12]},
              tmp / "cross_domain.png", size=max(g.image_size, 96))
        video([frames["human"], frames["edtn"], frames["linear"]], tmp / "cross_domain.mp4", cfg.video_fps)

        timing = {n: read_json(Path(d) / "train.json") for n, d in (("edtn", edtn_dir), ("generator", generator_dir),
                                                                     ("regressor", regressor_dir))}
        metrics = {
            "edtn": ed, "generator": gen_rows, "cross_domain": cd,
            "timing": {n: {k: t[k] for k in ("wall_seconds", "steps", "backend", "device", "precision", "start_step")}
                       for n, t in timing.items()},
            "bridge": read_json(Path(bridge_dir) / "bridge.json")["morphs"],
            "heldout_expression_poses": len(heldout),
            "eval_seconds": time.time() - t0,
        }
        write_json(tmp / "metrics_full.json", metrics)
        write_json(tmp / "metrics.json", _flat_metrics(metrics))
        (tmp / "table.md").write_text(tables(metrics) + "\n")
    return out


def _flat_metrics(m: dict) -> dict:
    """DVC metrics: a small nested dict of numbers (``dvc metrics show/diff``)."""
    out: dict[str, Any] = {"edtn": {}, "generator": {}}
    for r in m["edtn"]:
        out["edtn"].setdefault(r["expressions"], {})[r["method"]] = {
            k: round(r[k], 5) for k in ("vertex_mm", "landmark_mm", "eye_opening_mm", "lip_distance_mm")}
    for r in m["generator"]:
        out["generator"].setdefault(r["split"], {})[r["method"]] = {
            k: round(r[k], 5) for k in ("psnr_db", "ssim", "l1", "regressor_morph_mae", "regressor_mae_changed") if k in r}
    out["cross_domain"] = {k: v for k, v in m["cross_domain"].items() if isinstance(v, float)}
    out["train_seconds"] = {k: round(v["wall_seconds"], 1) for k, v in m["timing"].items()}
    return out
