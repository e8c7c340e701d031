"""The ``erank_gs`` flow's Prefect steps: thin, typed, path-in / path-out.

``data/erank_gs/scene/<name>/`` (a procedural scene rendered on the Blender pool, view jobs
resumable piece by piece) → ``train/<variant>_s<seed>/`` (the trained Gaussians as a 3DGS PLY;
engine checkpoints in ``.checkpoints/`` while it runs, so a killed run resumes mid-training) →
``eval/<variant>_s<seed>/`` (held-out metrics, erank values, a contact sheet, the turntable MP4
of the first seed) → ``report/``. Each step is skipped when its folder holds the same
(inputs, config, code) key. The maths lives in the domain modules.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import VARIANTS, ErankGSConfig
from .procedural import SCENES

FLOW = "erank_gs"


def run_name(variant: str, seed: int) -> str:
    return f"{variant}_s{seed}"


def _setup(cfg: ErankGSConfig, use_gpu: bool) -> tuple[str, int, str]:
    """(renderer, longest side, device): gsplat CUDA at full resolution on a GPU, torch on CPU."""
    if use_gpu:
        return "gsplat_cuda", cfg.gpu_resolution, "cuda"
    return "torch", cfg.cpu_resolution, "cpu"


@step("erank_gs.scene")
def scene(cfg: ErankGSConfig, workers: int = 1, threads: int = 1) -> Path:
    """The scene folder: a user's (as given) or a procedural one rendered by the Blender pool."""
    if cfg.scene not in SCENES:
        from .scene_io import load_split

        load_split(cfg.scene, "train", 16)  # fail now, naming the file, if it is malformed
        return Path(cfg.scene)
    from workers.blender_jobs import run_blender_jobs

    from .scenes import render_jobs, write_scene_files

    out = step_dir(FLOW, "scene") / cfg.scene
    key = cache_key(step="scene", config={"scene": cfg.scene, "render": cfg.scene_render.model_dump()})
    rs = ResumableStep(out, key)
    if rs.is_complete():
        return out
    rs.claim()
    jobs = render_jobs(cfg.scene, cfg.scene_render, out)
    todo = {k: j for k, j in jobs.items() if not rs.done(k)}
    stats = run_blender_jobs("tasks.erank_gs.blender_views:render_views", todo, out, workers=workers, threads=threads) if todo else {"jobs": {}}
    for name in todo:
        job = jobs[name]
        split = Path(job["out"]).name
        rs.record(name, [f"{split}/{v['name']}{sfx}" for v in job["views"] for sfx in (".png", "_depth.npy", "_normal.npy")])
    info = write_scene_files(cfg.scene, cfg.scene_render, out)
    step_logger().info("scene %s: %s (Blender pool: %s replaced)", cfg.scene, info["views"], stats.get("workers_replaced", 0))
    rs.complete(**info)
    return out


@step("erank_gs.train", run_name="train[{variant}-s{seed}]")
def train(cfg: ErankGSConfig, scene_dir: Path, variant: str, seed: int, *, use_gpu: bool = False,
          threads: int = 1) -> Path:
    """Train one variant for one seed with the shared engine; export the 3DGS PLY."""
    import torch

    from tasks.common.training import load_weights, train as run_engine

    from .erank import effective_rank
    from .gaussians import GaussianModel, save_ply
    from .recipe import GSRecipe

    renderer, resolution, device = _setup(cfg, use_gpu)
    name = run_name(variant, seed)
    out = step_dir(FLOW, "train") / name
    regularise = VARIANTS[variant][0]
    conf = {"train": cfg.train.model_dump(), "erank": cfg.erank.model_dump() if regularise else None,
            "variant": variant, "seed": seed, "renderer": renderer, "resolution": resolution,
            "training": cfg.training.model_dump()}
    key = cache_key(step="train", config=conf, inputs=[scene_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            recipe = GSRecipe(cfg, scene_dir, variant, seed, renderer=renderer, resolution=resolution)
            ckpts = ResumableStep(step_dir(FLOW, ".checkpoints") / name, key).claim().out
            result = run_engine(recipe, cfg.training.model_copy(update={"backend": "torch"}).on(device), ckpts)
            model = GaussianModel.random_init(2, torch.zeros(3), 1.0, torch.Generator().manual_seed(0))
            model.load_state_dict(load_weights(result.checkpoint, "gaussians"))
            save_ply(model, tmp / "point_cloud.ply")
            np.save(tmp / "erank.npy", effective_rank(model.scales.detach()).numpy().astype(np.float32))
            write_json(tmp / "train.json", {"variant": variant, "seed": seed, "renderer": renderer,
                                            "train_seconds": result.wall_seconds, "steps": result.steps,
                                            "resumed_from": result.start_step, "gaussians": len(model),
                                            "history": result.history, "densify_events": recipe.events})
    return out


@step("erank_gs.evaluate", run_name="evaluate[{variant}-s{seed}]")
def evaluate(cfg: ErankGSConfig, scene_dir: Path, train_dir: Path, variant: str, seed: int, *,
             use_gpu: bool = False, turntable: bool = False, threads: int = 1) -> Path:
    """Score the exported PLY on the held-out views; contact sheet; turntable MP4 when asked."""
    import torch

    from .erank import effective_rank
    from .evaluate import evaluate_model, load_mesh
    from .gaussians import load_ply
    from .recipe import BACKGROUND, scene_frame
    from .report import contact_sheet
    from tasks.common.video import write_mp4

    from .scene_io import load_split, mesh_path
    from .video import turntable_frames

    renderer, resolution, device = _setup(cfg, use_gpu)
    out = step_dir(FLOW, "eval") / run_name(variant, seed)
    key = cache_key(step="evaluate", config={"renderer": renderer, "resolution": resolution, "turntable": turntable,
                                             "frames": cfg.turntable_frames, "chamfer_seed": cfg.chamfer_seed},
                    inputs=[scene_dir, train_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            model = load_ply(Path(train_dir) / "point_cloud.ply").to(device)
            test = load_split(scene_dir, "test", resolution)
            bg = torch.tensor(BACKGROUND, device=device)
            metrics, renders = evaluate_model(model, test, load_mesh(mesh_path(scene_dir)), renderer=renderer,
                                              background=bg, chamfer_seed=cfg.chamfer_seed)
            metrics.update(variant=variant, seed=seed,
                           train_seconds=read_json(Path(train_dir) / "train.json")["train_seconds"])
            write_json(tmp / "metrics.json", metrics)
            np.save(tmp / "erank.npy", effective_rank(model.scales.detach()).cpu().numpy().astype(np.float32))
            contact_sheet(list(test.images), renders, tmp / "test_views.png")
            if turntable:
                train_split = load_split(scene_dir, "train", resolution)
                mid, _ = scene_frame(train_split.cameras)
                radius = float(torch.stack([c.center - mid for c in train_split.cameras]).norm(dim=-1).mean())
                frames = turntable_frames(model, test.cameras[0], radius, mid, cfg.turntable_frames, renderer, bg)
                write_mp4(frames, tmp / "turntable.mp4")
    return out


@step("erank_gs.report")
def report(cfg: ErankGSConfig, scene_dir: Path, eval_dirs: dict[str, Path], use_gpu: bool = False) -> Path:
    """Side-by-side table, paired differences, erank histograms, headline metrics."""
    from .report import build_report
    from .scene_io import load_split

    renderer, resolution, _ = _setup(cfg, use_gpu)
    out = step_dir(FLOW, "report")
    key = cache_key(step="report", config={"variants": cfg.variants, "seeds": cfg.seeds},
                    inputs=list(eval_dirs.values()))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            results = [read_json(Path(d) / "metrics.json") for d in eval_dirs.values()]
            eranks = {v: np.concatenate([np.load(Path(eval_dirs[run_name(v, s)]) / "erank.npy") for s in cfg.seeds])
                      for v in cfg.variants}
            test = load_split(scene_dir, "test", resolution)
            meta = {"scene": Path(str(cfg.scene)).name, "resolution": test.cameras[0].width,
                    "train_views": len(load_split(scene_dir, "train", 16)), "test_views": len(test),
                    "steps": cfg.train.steps, "renderer": renderer}
            build_report(results, list(cfg.variants), list(cfg.seeds), tmp, eranks, meta)
    return out
