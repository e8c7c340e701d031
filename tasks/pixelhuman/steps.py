"""The ``pixelhuman`` flow's Prefect steps: thin, typed, path-in / path-out.

``data/pixelhuman/bodies/`` (anny identities posed in the driver, rendered on the Blender pool;
resumable identity by identity) → ``train/<method>/`` (the generalisable models, on the shared
engine with checkpoints in ``.checkpoints/``) → ``eval/<method>/`` (per-image metrics on the
unseen identities for every input-view count, the renders for the strips, the walk frames;
the per-subject baseline is fitted here, per identity and view count) → ``report/``. Each step
is skipped when its folder holds the same (inputs, config, code) key.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import PixelHumanConfig

FLOW = "pixelhuman"
GENERALISABLE = ("pixelhuman", "pixel_posed")


def device_for(use_gpu: bool) -> str:
    return "cuda" if use_gpu else "cpu"


@step("pixelhuman.bodies")
def bodies(cfg: PixelHumanConfig, workers: int = 1, threads: int = 1, num_gpus: float = 0) -> Path:
    """Pose every identity with anny (driver) and render its views with Cycles (Blender pool)."""
    from workers.blender_jobs import run_blender_jobs

    from .bodies import plan, split_record, write_identity
    from .body import bone_labels, dense_weights, triangles

    out = step_dir(FLOW, "bodies")
    key = cache_key(step="bodies", config={"data": cfg.data.model_dump()})
    rs = ResumableStep(out, key)
    if rs.is_complete():
        return out
    rs.claim()
    ids = plan(cfg)
    todo = [n for n in ids if not rs.done(n)]
    log = step_logger()
    if todo:
        if not (out / "weights.npy").is_file():
            np.save(out / "weights.npy", dense_weights())
            np.save(out / "faces.npy", triangles())
            write_json(out / "bones.json", bone_labels())
        jobs = {n: write_identity(out, n, ids[n], cfg) for n in todo}
        stats = run_blender_jobs("tasks.pixelhuman.blender_body:render_body", jobs, out, workers=workers, threads=threads, num_gpus=num_gpus)
        for n in todo:
            e = ids[n]
            files = ([f"{n}/{r['file']}" for r in jobs[n]["renders"]] + [f"{n}/frames/{p}.npz" for p in e["poses"]]
                     + [f"{n}/{f}" for f in ("rest.npy", "colors.npy", "cameras.json", "identity.json")])
            rs.record(n, files)
        log.info("bodies: %d identities rendered (%d workers replaced)", len(todo), stats.get("workers_replaced", 0))
    rec = split_record(ids)
    write_json(out / "split.json", rec)
    rs.complete(identities=len(ids), renders=sum(len(e["renders"]) for e in ids.values()))
    return out


@step("pixelhuman.train", run_name="train[{method}]")
def train(cfg: PixelHumanConfig, bodies_dir: Path, method: str, *, use_gpu: bool = False, threads: int = 1) -> Path:
    """Train a generalisable model (ours or the pose-unaware baseline) across the training identities."""
    from tasks.common.training import load_weights, train as run_engine
    from safetensors.torch import save_file

    from .fit import GeneralisableRecipe

    out = step_dir(FLOW, "train") / method
    conf = {"model": cfg.model.model_dump(), "train": cfg.train.model_dump(), "seed": cfg.seed, "method": method,
            "training": cfg.training.model_dump(), "device": device_for(use_gpu)}
    key = cache_key(step="train", config=conf, inputs=[bodies_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            split = read_json(Path(bodies_dir) / "split.json")
            recipe = GeneralisableRecipe(cfg, bodies_dir, method, split)
            ckpts = ResumableStep(step_dir(FLOW, ".checkpoints") / method, key).claim().out
            result = run_engine(recipe, cfg.training.on(device_for(use_gpu)), ckpts)
            save_file(load_weights(result.checkpoint, "field"), str(tmp / "field.safetensors"))
            write_json(tmp / "train.json", {"method": method, "train_seconds": result.wall_seconds,
                                            "steps": result.steps, "resumed_from": result.start_step,
                                            "device": result.device, "history": result.history,
                                            "rays_per_step": cfg.train.rays})
    return out


@step("pixelhuman.evaluate", run_name="evaluate[{method}]")
def evaluate(cfg: PixelHumanConfig, bodies_dir: Path, train_dir: Path | None, method: str, *, use_gpu: bool = False,
             threads: int = 1) -> Path:
    """Novel view and novel pose on every unseen identity, for every input-view count."""
    from .run_eval import evaluate_method

    out = step_dir(FLOW, "eval") / method
    conf = {"model": cfg.model.model_dump(), "subject": cfg.subject.model_dump(), "eval": cfg.eval.model_dump(),
            "train": cfg.train.model_dump(), "seed": cfg.seed, "method": method, "device": device_for(use_gpu)}
    key = cache_key(step="evaluate", config=conf, inputs=[bodies_dir] + ([train_dir] if train_dir else []))
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            evaluate_method(cfg, Path(bodies_dir), Path(train_dir) if train_dir else None, method, tmp,
                            device=device_for(use_gpu))
    return out


@step("pixelhuman.report")
def report(cfg: PixelHumanConfig, bodies_dir: Path, eval_dirs: dict[str, Path], train_dirs: dict[str, Path]) -> Path:
    """Table by view count with intervals, paired differences, strips PNG, turntable MP4, headline."""
    from .report import build_report

    out = step_dir(FLOW, "report")
    key = cache_key(step="report", config={"methods": cfg.methods, "eval": cfg.eval.model_dump()},
                    inputs=[*eval_dirs.values(), *train_dirs.values()])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            build_report(cfg, Path(bodies_dir), {m: Path(d) for m, d in eval_dirs.items()},
                         {m: Path(d) for m, d in train_dirs.items()}, tmp)
    return out
