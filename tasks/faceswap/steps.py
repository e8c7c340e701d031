"""The ``faceswap`` flow's Prefect steps: thin, typed, path-in / path-out.

``data/faceswap/faces/`` (renders on the Blender pool, resumable per head; then the packed
``train.npz`` / ``test.npz`` / ``pairs.npz`` and a contact sheet) → ``tools/`` (identity encoder +
attribute regressor, with their held-out checks) → ``train/<method>/`` (each swap method, engine
checkpoints in ``.checkpoints/<method>/`` while it runs) → ``eval/<method>/`` (swaps of the test
pairs and per-pair metrics) → ``report/``. Each step is skipped when its folder holds the same
(inputs, config, code) key.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks.common.artifacts import cache_key, cached_step, read_json, step_dir, write_json
from tasks.common.config import DataError
from tasks.common.steps import ResumableStep, set_threads, step, step_logger

from .config import FaceswapConfig

FLOW = "faceswap"


@step("faceswap.faces")
def faces(cfg: FaceswapConfig, workers: int = 1, threads: int = 1) -> Path:
    """Render every planned frame and ground-truth swap on the Blender pool; pack the splits."""
    from workers.blender_jobs import run_blender_jobs

    from .data import pack, plan, render_jobs

    out = step_dir(FLOW, "faces")
    key = cache_key(step="faces", config=cfg.data.model_dump())
    rs = ResumableStep(out, key)
    if rs.is_complete():
        return out
    rs.claim()
    p = plan(cfg.data)
    renders = out / "renders"
    jobs = render_jobs(p, cfg.data, renders)
    todo = {k: {**j, "threads": threads} for k, j in jobs.items() if not rs.done(k)}
    stats = run_blender_jobs("tasks.faceswap.blender_faces:render_face_job", todo, renders, workers=workers, threads=threads) if todo else {"workers_replaced": 0}
    for name in todo:
        job = jobs[name]
        sub = Path(job["out"]).name
        rs.record(name, [f"renders/{sub}/{f['name']}{sfx}" for f in job["frames"] for sfx in (".png", "_mask.png", "_lm.npy")])
    info = pack(p, cfg.data, renders, out)
    step_logger().info("faces: %s (Blender pool: %s replaced)", info, stats.get("workers_replaced", 0))
    rs.complete(**info)
    return out


@step("faceswap.tools")
def tools(cfg: FaceswapConfig, faces_dir: Path, *, use_gpu: bool = False, threads: int = 1) -> Path:
    """Train the identity encoder (ArcFace) and the attribute regressor; check both on test identities."""
    import torch

    from tasks.common.training import load_weights, train as run_engine

    from .dataset import load_faces
    from .tools import (ATTRIBUTES, AttributeRecipe, IdentityRecipe, attribute_r2, best_threshold,
                        cross_validated_accuracy, embed, embedding_center, load_tools, readable_expression_dims,
                        save_tools, verification_pairs)

    out = step_dir(FLOW, "tools")
    t = cfg.tools
    conf = {"tools": t.model_dump(), "resolution": cfg.budget.resolution, "seed": cfg.seed}
    key = cache_key(step="tools", config=conf, inputs=[faces_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            device = "cuda" if use_gpu else "cpu"
            train = load_faces(faces_dir, "train")
            test = load_faces(faces_dir, "test")
            kw = dict(steps=t.steps, batch=t.batch, resolution=cfg.budget.resolution, width=t.width, lr=t.lr, seed=cfg.seed)
            ident, attr = IdentityRecipe(train, **kw), AttributeRecipe(train, **kw)
            engine = cfg.training.model_copy(update={"backend": "torch"}).on(device)
            ckpt = step_dir(FLOW, ".checkpoints")
            r_id = run_engine(ident, engine, ResumableStep(ckpt / "identity", key).claim().out)
            r_at = run_engine(attr, engine, ResumableStep(ckpt / "attributes", key).claim().out)
            id_net = ident.build()["identity"]
            id_net.load_state_dict(load_weights(r_id.checkpoint, "identity"))
            at_net = attr.build()["attributes"]
            at_net.load_state_dict(load_weights(r_at.checkpoint, "attributes"))
            sizes = {a: int(np.prod(getattr(train, a).shape[1:])) for a in ATTRIBUTES}
            save_tools(tmp, id_net, at_net, resolution=cfg.budget.resolution, width=t.width, mean=attr.mean, std=attr.std,
                       sizes=sizes, threshold=0.0, extra={},
                       center=embedding_center(id_net, train, cfg.budget.resolution))
            tl = load_tools(tmp)
            # held-out identities, LFW's 10-fold protocol (a threshold fit on training identities
            # fits their memorised embeddings); the threshold kept is the best on all held-out pairs
            stills = test.subset(np.flatnonzero(test.sequence < 0))
            e_te = embed(tl, stills)
            i, j, same = verification_pairs(stills.identity, 500, cfg.seed + 1)
            sim = (e_te[i] * e_te[j]).sum(-1).numpy()
            acc, thr = cross_validated_accuracy(sim, same, seed=cfg.seed), best_threshold(sim, same)
            different_cos = float(sim[~same].mean())
            if different_cos > 0.95:  # every face on one direction even after centring: identity columns read ~1
                raise DataError(f"{tmp}: the identity encoder collapsed (mean cosine of different held-out identities "
                                f"{different_cos:.4f})")
            r2 = attribute_r2(tl, stills)
            dims, r2_dims = readable_expression_dims(tl, stills, t.min_expression_r2)
            if len(dims) == 0:  # the expression columns are then n/a, not scored by a reader that cannot read
                step_logger().warning("tools: the attribute regressor reads no expression blendshape with R² ≥ %s on "
                                      "held-out renders (best %.3f): expression columns are n/a", t.min_expression_r2,
                                      float(np.nanmax(r2_dims)))
            check = {"verification_accuracy": acc, "threshold": thr, "different_identity_cosine": different_cos,
                     "attribute_r2_test": r2,
                     "expression_dims": dims.tolist(), "expression_r2_per_dim": np.round(r2_dims, 3).tolist(),
                     "identity_train_seconds": r_id.wall_seconds, "attribute_train_seconds": r_at.wall_seconds,
                     "identity_history": r_id.history[-3:], "attribute_history": r_at.history[-3:]}
            meta = read_json(tmp / "tools.json")
            meta.update(threshold=thr, expression_dims=dims.tolist(), check=check)
            write_json(tmp / "tools.json", meta)
            write_json(tmp / "check.json", check)
            step_logger().info("tools: held-out verification %.3f (10-fold), attribute R² %s; expression: %d of %d "
                               "blendshapes scored (R² ≥ %s)", acc, {k: round(v, 3) for k, v in r2.items()},
                               len(dims), len(r2_dims), t.min_expression_r2)
            if acc < t.min_verification:
                raise DataError(f"{tmp}: identity encoder reaches {acc:.3f} held-out verification accuracy, below "
                                f"tools.min_verification={t.min_verification}")
            torch.set_num_threads(threads)
    return out


def method_run(cfg: FaceswapConfig, method: str, tools_dir: Path, key: str, use_gpu: bool):
    from .methods import MethodRun

    b = cfg.budget
    return MethodRun(steps=b.steps, batch=b.batch, resolution=b.resolution, width=b.width, lr=b.lr, seed=cfg.seed,
                     device="cuda" if use_gpu else "cpu", tools_dir=Path(tools_dir).resolve(),
                     engine_dir=ResumableStep(step_dir(FLOW, ".checkpoints") / method, key).claim().out,
                     training=cfg.training)


@step("faceswap.train", run_name="train[{method}]")
def train(cfg: FaceswapConfig, faces_dir: Path, tools_dir: Path, method: str, *, use_gpu: bool = False,
          threads: int = 1) -> Path:
    """Train one swap method with the shared budget (a training-free method just records itself)."""
    from . import methods as registry
    from .dataset import load_faces

    spec = registry.get(method)
    opts = cfg.method_options.get(method, {})
    out = step_dir(FLOW, "train") / method
    conf = {"method": method, "target": spec.target, "code": spec.code(), "options": spec.options_model(opts).model_dump(),
            "budget": cfg.budget.model_dump(), "seed": cfg.seed, "training": cfg.training.model_dump()}
    key = cache_key(step="train", config=conf, inputs=[faces_dir, tools_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            m = spec.build(opts)
            if getattr(m, "learned", True):
                m.train(method_run(cfg, method, tools_dir, key, use_gpu), load_faces(faces_dir, "train"), tmp)
            write_json(tmp / "spec.json", {"method": method, "target": spec.target, "options": conf["options"],
                                           "description": spec.description})
    return out


@step("faceswap.evaluate", run_name="evaluate[{method}]")
def evaluate(cfg: FaceswapConfig, faces_dir: Path, tools_dir: Path, train_dir: Path, method: str, *,
             use_gpu: bool = False, threads: int = 1) -> Path:
    """Swap every test pair with one method; per-pair metrics against the ground truth."""
    import torch

    from . import methods as registry
    from .dataset import load_faces, load_pairs
    from .evaluate import Judge
    from .tools import load_tools

    out = step_dir(FLOW, "eval") / method
    key = cache_key(step="evaluate", config={"evaluation": cfg.evaluation.model_dump(), "resolution": cfg.budget.resolution,
                                             "code": registry.get(method).code()},
                    inputs=[faces_dir, tools_dir, train_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            device = "cuda" if use_gpu else "cpu"
            test, pairs = load_faces(faces_dir, "test"), load_pairs(faces_dir)
            pairs.check(str(Path(faces_dir) / "pairs.npz"), test)
            m = registry.get(method).build(cfg.method_options.get(method, {}))
            r = cfg.budget.resolution
            swaps = []
            for i in range(0, len(pairs), 32):
                sl = slice(i, i + 32)
                src = test.batch(pairs.source[sl], r, device)
                tgt = test.batch(pairs.target[sl], r, device)
                with torch.no_grad():
                    y = m.swap(Path(train_dir), src, tgt, device)
                if tuple(y.shape) != (len(src), 3, r, r):
                    raise DataError(f"{method}: swap returned {tuple(y.shape)}, expected {(len(src), 3, r, r)}")
                swaps.append(y.float().cpu().clamp(0, 1))
            swaps = torch.cat(swaps)
            judge = Judge(load_tools(tools_dir), test, pairs, r, use_dlib=cfg.evaluation.dlib)
            scores = judge.score(swaps)
            np.save(tmp / "swaps.npy", (swaps.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
            np.savez(tmp / "per_pair.npz", **scores)
            write_json(tmp / "summary.json", {"method": method, **{k: float(np.nanmean(v)) if np.isfinite(v).any() else None
                                                                    for k, v in scores.items()}})
    return out


@step("faceswap.references")
def references(cfg: FaceswapConfig, faces_dir: Path, tools_dir: Path, threads: int = 1) -> Path:
    """The two reference rows: the ground truth scored as a swap (the metrics' floor/ceiling) and
    the unswapped target (what no identity transfer at all scores)."""
    import torch

    from .dataset import load_faces, load_pairs
    from .evaluate import Judge, resize
    from .tools import load_tools

    out = step_dir(FLOW, "eval") / "_references"
    key = cache_key(step="references", config={"evaluation": cfg.evaluation.model_dump(), "resolution": cfg.budget.resolution},
                    inputs=[faces_dir, tools_dir])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            set_threads(threads)
            test, pairs = load_faces(faces_dir, "test"), load_pairs(faces_dir)
            r = cfg.budget.resolution
            judge = Judge(load_tools(tools_dir), test, pairs, r, use_dlib=cfg.evaluation.dlib)
            for name, imgs in (("ground_truth", resize(pairs.gt, r)), ("target_copy", resize(test.images[pairs.target], r))):
                with torch.no_grad():
                    np.savez(tmp / f"{name}.npz", **judge.score(imgs))
    return out


@step("faceswap.report")
def report(cfg: FaceswapConfig, faces_dir: Path, tools_dir: Path, refs_dir: Path, eval_dirs: dict[str, Path]) -> Path:
    """The table (means with 95 % bootstrap intervals over test pairs), paired SAMAE-vs-baseline
    differences, the strips, headline metrics."""
    from .report import build_report

    out = step_dir(FLOW, "report")
    key = cache_key(step="report", config={"methods": cfg.methods, "evaluation": cfg.evaluation.model_dump()},
                    inputs=[faces_dir, tools_dir, refs_dir, *eval_dirs.values()])
    with cached_step(out, key) as tmp:
        if tmp is not None:
            build_report(cfg, Path(faces_dir), Path(tools_dir), Path(refs_dir), {k: Path(v) for k, v in eval_dirs.items()}, tmp)
    return out
